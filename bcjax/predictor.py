"""A trained workdir applied to new images: `Predictor.from_workdir(RUN)` once, then arrays or files.

An image goes through the run's own preprocessing (`bcjax.preprocessing`: its resize, stain
normalisation and normaliser) and the trainer's jitted evaluation step, on batches sharded over
every local device; files are decoded by a pool of host threads while the devices work. Test-time
augmentation averages the probabilities of flipped (and rotated) copies; Grad-CAM maps come from
`bcjax.explain` in one jitted call per batch.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bcjax import checkpoint, explain, parallel, preprocessing
from bcjax.components import build_model, build_steps
from bcjax.datasets.breakhis import TARGET_CLASSES
from bcjax.datasets.splits import SIDES
from bcjax.image_files import ImageFileError, read_rgb
from bcjax.lead_process import json_safe
from bcjax.pretrained import ConversionError, check_fit
from bcjax.steps import State
from bcjax.workdir_guard import CHECKPOINTS_DIR, SPLIT_FILE

# Views averaged by each test-time augmentation: none; the identity and the 3 flips (horizontal,
# vertical, both = a half turn); d4: those and their transposes (the quarter turns), the 8 symmetries of a square.
TTA = {"none": 1, "flips": 4, "d4": 8}
CHECKPOINTS = ("best", "latest")  # or a step number


class PredictorError(RuntimeError):
    """The workdir cannot predict (no checkpoint, a checkpoint of another config, ...); the message says what to do."""


@dataclasses.dataclass
class FileResult:
    """One input path: `status` is 'ok' or the reason it failed."""

    path: str
    status: str
    probabilities: np.ndarray | None = None  # [classes]
    heatmap: np.ndarray | None = None  # [height, width] in [0, 1], at the model's input size
    explained_class: int | None = None
    image: np.ndarray | None = None  # the file's RGB pixels, kept when explaining (for the overlay)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def tta_views(pixels: np.ndarray, tta: str) -> np.ndarray:
    """(N, H, W, 3) -> (N, V, H, W, 3): the views `TTA[tta]` averages, the image itself first."""
    views = [pixels]
    if tta in ("flips", "d4"):
        views += [pixels[:, :, ::-1], pixels[:, ::-1], pixels[:, ::-1, ::-1]]
    if tta == "d4":
        transposed = pixels.transpose(0, 2, 1, 3)
        views += [transposed, transposed[:, :, ::-1], transposed[:, ::-1], transposed[:, ::-1, ::-1]]
    return np.stack(views, 1)


class Predictor:
    """The model of one workdir at one checkpoint, its preprocessing and its compiled evaluation step."""

    def __init__(self, workdir: str | os.PathLike, checkpoint_name: str = "best"):
        self.workdir = epath.Path(workdir)
        self.config = _read_config(self.workdir)
        self.preprocessing = preprocessing.read(self.workdir)
        self.class_names: tuple[str, ...] = TARGET_CLASSES[self.config.data.target]
        self.mesh = parallel.make_mesh()
        model = build_model(self.config)[0]
        self.steps, state = build_steps(
            self.config, self.mesh, normalizer=self.preprocessing.normalizer, total_steps=1, model=model
        )
        self.step, self.state = _restore(self.workdir, self.config, checkpoint_name, state)
        self._grad_cams: dict[str | None, object] = {}

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, checkpoint_name: str = "best") -> Predictor:
        """`checkpoint_name`: 'best' (the best by the run's best_metric; the latest when it kept none),
        'latest', or a step number."""
        return cls(workdir, checkpoint_name)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.height, self.preprocessing.width

    # ------------------------------------------------------------------ arrays

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB of any size at least the model's input -> the run's preprocessed pixels."""
        height, width = self.input_size
        if rgb.shape[0] < height or rgb.shape[1] < width:
            raise ImageFileError(
                f"image {rgb.shape[1]}x{rgb.shape[0]} is smaller than the model input {width}x{height} (width x height)"
            )
        return self.preprocessing.pixels(rgb)

    def probabilities(self, images: Sequence[np.ndarray], tta: str = "none") -> np.ndarray:
        """[N, classes] of uint8 RGB images (any size at least the model's input)."""
        pixels = np.stack([self.prepare(np.asarray(image)) for image in images])
        return np.concatenate([self._probabilities(chunk, tta) for chunk in self._split(pixels, tta)])

    def explain(self, images: Sequence[np.ndarray], classes: Sequence[int] | None = None, layer: str | None = None):
        """Grad-CAM maps [N, height, width] (the model's input size) for `classes` (default: the predicted ones)."""
        pixels = np.stack([self.prepare(np.asarray(image)) for image in images])
        targets = None if classes is None else np.asarray(classes, np.int32)
        maps = []
        for start in range(0, len(pixels), self._images_per_batch("none")):
            chunk = pixels[start : start + self._images_per_batch("none")]
            chunk_targets = None if targets is None else targets[start : start + len(chunk)]
            maps.append(self._heatmaps(chunk, chunk_targets, layer))
        return np.concatenate(maps)

    # ------------------------------------------------------------------ files

    def predict_files(
        self,
        paths: Sequence[str],
        *,
        tta: str = "none",
        explain_class: int | None = None,
        explain: bool = False,
        layer: str | None = None,
        threads: int | None = None,
    ) -> Iterator[FileResult]:
        """One FileResult per path, in order; files are read and prepared by `threads` host threads,
        a batch ahead of the devices. A file that cannot be read is a result with its reason."""
        self.check_tta(tta)
        size = self._images_per_batch(tta)
        with ThreadPoolExecutor(max_workers=threads or min(32, (os.cpu_count() or 1) + 4)) as pool:
            for chunk in _read_ahead(pool, paths, size, lambda path: self._read(path, keep=explain)):
                reads = [(path, future.result) for path, future in chunk]
                yield from self._predict_chunk(reads, tta, explain, explain_class, layer)

    def split_images(self, side: str) -> tuple[list[str], np.ndarray]:
        """The names and preprocessed pixels of the run's own `side` ('train', 'validation' or 'test'), for
        `predict_pixels`: read from the image cache the run filled (decoded once, preprocessed as in
        training; what it lacks is decoded), named by their paths in the archive, in the order of the
        run's eval/<side>/predictions.csv, after checking that the split is still the one the run
        trained on (its split.json)."""
        from bcjax import input_pipeline, train  # the data stack (TFDS, grain) only for this mode

        if side not in SIDES:
            raise ValueError(f"unknown split side {side!r}; choose one of {', '.join(SIDES)}")
        recorded = json.loads((self.workdir / SPLIT_FILE).read_text())["sides"][side]
        split, cache = input_pipeline.load_side(train.input_config(self.config, self.workdir, None), side)
        if json_safe(split.to_json_dict()["sides"][side]) != recorded:
            raise PredictorError(
                f"the {side} split of {self.config.data.dataset} in {self.config.data.data_dir} is not the one "
                f"{self.workdir} trained on (its {SPLIT_FILE}): the dataset changed since; predict its files instead"
            )
        rows = getattr(split, side)
        return [str(name) for name in split.table.filename[rows]], cache.images[np.searchsorted(cache.rows, rows)]

    def predict_pixels(
        self,
        names: Sequence[str],
        pixels: np.ndarray,
        *,
        tta: str = "none",
        explain_class: int | None = None,
        explain: bool = False,
        layer: str | None = None,
    ) -> Iterator[FileResult]:
        """One FileResult per already preprocessed image (`prepare`'s output, e.g. `split_images`'), named `names`."""
        self.check_tta(tta)
        size = self._images_per_batch(tta)
        for start in range(0, len(names), size):
            chunk = range(start, min(start + size, len(names)))
            reads = [(names[i], lambda p=pixels[i]: (p, p if explain else None)) for i in chunk]
            yield from self._predict_chunk(reads, tta, explain, explain_class, layer)

    def _read(self, path: str, keep: bool) -> tuple[np.ndarray, np.ndarray | None]:
        rgb = read_rgb(path)
        return self.prepare(rgb), (rgb if keep else None)

    def _predict_chunk(self, chunk, tta, explain, explain_class, layer) -> list[FileResult]:
        """`chunk`: (name, read) pairs, `read()` giving (pixels, RGB or None) or raising ImageFileError."""
        results, read = [], []
        for path, read_one in chunk:
            try:
                pixels, rgb = read_one()
            except ImageFileError as error:
                results.append(FileResult(path, str(error)))
                continue
            results.append(FileResult(path, "ok", image=rgb))
            read.append(pixels)
        done = [r for r in results if r.ok]
        if not done:
            return results
        pixels = np.stack(read)
        probabilities = self._probabilities(pixels, tta)
        for result, p in zip(done, probabilities):
            result.probabilities = p
        if explain:
            targets = np.full(len(done), explain_class) if explain_class is not None else probabilities.argmax(1)
            for result, heatmap, target in zip(done, self._heatmaps(pixels, targets, layer), targets):
                result.heatmap, result.explained_class = heatmap, int(target)
        return results

    # ------------------------------------------------------------------ batches on the devices

    def check_tta(self, tta: str) -> None:
        """A ValueError saying what to use when `tta` is unknown, or d4 on a non-square input."""
        if tta not in TTA:
            raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA)}")
        height, width = self.input_size
        if tta == "d4" and height != width:
            raise ValueError(
                f"--tta=d4 turns images by quarter turns, which needs a square model input; this run's is "
                f"{width}x{height}: use --tta=flips"
            )

    def _images_per_batch(self, tta: str) -> int:
        return max(1, self.config.eval_batch_size // TTA[tta])

    def _split(self, pixels: np.ndarray, tta: str) -> list[np.ndarray]:
        self.check_tta(tta)
        size = self._images_per_batch(tta)
        return [pixels[start : start + size] for start in range(0, len(pixels), size)]

    def _global_batch(self, images: np.ndarray) -> dict[str, jax.Array]:
        """`images` padded to a fixed multiple of the device count (one compiled shape), as the eval step takes them."""
        devices = self.mesh.devices.size
        rows = -(-self._images_per_batch("none") // devices) * devices
        rows = max(rows, -(-len(images) // devices) * devices)
        padded = np.zeros((rows, *images.shape[1:]), np.uint8)
        padded[: len(images)] = images
        batch = {
            "image": padded,
            self.config.data.target: np.zeros(rows, np.int32),
            "index": np.arange(rows, dtype=np.int32),
            "mask": np.arange(rows) < len(images),
        }
        return parallel.to_global(batch, self.mesh)

    def _probabilities(self, pixels: np.ndarray, tta: str) -> np.ndarray:
        """The eval step's probabilities of one chunk, averaged over its TTA views: [N, classes]."""
        views = tta_views(pixels, tta)
        flat = views.reshape(-1, *pixels.shape[1:])
        out = self.steps.evaluate(self.state, self._global_batch(flat))
        probabilities = parallel.fetch(out["probabilities"])[: len(flat)]
        return probabilities.reshape(len(pixels), TTA[tta], -1).mean(1)

    def _heatmaps(self, pixels: np.ndarray, targets: np.ndarray | None, layer: str | None) -> np.ndarray:
        if layer not in self._grad_cams:
            self._grad_cams[layer] = explain.batch_grad_cam(
                self.steps.task.graphdef, self.preprocessing.normalizer, layer
            )
        batch = self._global_batch(pixels)
        if targets is None:
            targets = self._probabilities(pixels, "none").argmax(1)
        padded = np.zeros(batch["image"].shape[0], np.int32)
        padded[: len(targets)] = targets
        target_array = parallel.to_global({"target": padded}, self.mesh)["target"]
        states = (self.state["params"], self.state["rest"])
        maps = self._grad_cams[layer](states, batch["image"], target_array)
        return np.asarray(jax.device_get(maps))[: len(pixels)]


def _read_ahead(pool: ThreadPoolExecutor, paths: Sequence[str], size: int, read) -> Iterator[list[tuple[str, Future]]]:
    """Chunks of `size` (path, future) pairs, the next chunk already submitted while one is consumed."""
    pending: collections.deque = collections.deque()
    for start in range(0, len(paths), size):
        pending.append([(path, pool.submit(read, path)) for path in paths[start : start + size]])
        if len(pending) > 1:
            yield pending.popleft()
    yield from pending


# ----------------------------------------------------------------------------- the workdir


def _read_config(workdir: epath.Path) -> ml_collections.ConfigDict:
    """The run's config.json, without its pretrained-weights source (the checkpoint holds every weight)."""
    path = workdir / "config.json"
    if not path.exists():
        raise PredictorError(
            f"{workdir} holds no bcjax run (no config.json): pass the --workdir of a training run "
            "(python -m bcjax.main --config=... --workdir=DIR)"
        )
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    config.model.init_from = None
    return config


def _restore(workdir: epath.Path, config: ml_collections.ConfigDict, name: str, state: State) -> tuple[int, State]:
    """(step, state) of the checkpoint `name` ('best', 'latest' or a step number)."""
    directory = workdir / CHECKPOINTS_DIR
    if not directory.exists() or not any(p.name.isdigit() for p in directory.iterdir()):
        raise PredictorError(
            f"{workdir} holds no checkpoint yet: train it first (or let its training finish) with "
            f"python -m bcjax.main --config=... --workdir={workdir}"
        )
    checkpoints = checkpoint.Checkpoints(directory, keep=config.keep_checkpoints, best_metric=config.best_metric)
    try:
        step = _checkpoint_step(checkpoints, name, directory)
        try:
            check_fit(
                _weights(state),
                _weights(_saved_tree(directory, step)),
                _mismatch(workdir, config, step),
                _MISMATCH_ADVICE,
            )
        except ConversionError as error:
            raise PredictorError(str(error)) from error
        return step, checkpoints.restore(step, state)
    finally:
        checkpoints.close()


def _saved_tree(directory: epath.Path, step: int):
    """The shapes and structure of the train state saved at `step` (orbax metadata: nothing is read)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.metadata(directory / str(step) / "state").item_metadata.tree


def _weights(tree) -> dict[str, tuple[int, ...]]:
    """'params/backbone/...' -> shape of every parameter and statistic of a state or of its checkpoint's metadata
    (the optimizer's state follows from them)."""

    def name(entry) -> str:
        return str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry))))

    leaves = jax.tree_util.tree_flatten_with_path({"params": tree["params"], "rest": tree["rest"]})[0]
    return {"/".join(name(e) for e in path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


def _checkpoint_step(checkpoints: checkpoint.Checkpoints, name: str, directory: epath.Path) -> int:
    saved = sorted(checkpoints.manager.all_steps())
    if name == "best":
        return checkpoints.best_step() or checkpoints.latest_step()
    if name == "latest":
        return checkpoints.latest_step()
    if name.isdigit() and int(name) in saved:
        return int(name)
    raise PredictorError(
        f"--checkpoint={name}: choose best, latest or a saved step of {directory} ({', '.join(map(str, saved))})"
    )


_MISMATCH_ADVICE = (
    "the checkpoints and config.json must come from one run: predict with the workdir that trained them, "
    "or train this config again in a new --workdir"
)


def _mismatch(workdir: epath.Path, config: ml_collections.ConfigDict, step: int) -> str:
    model = config.model
    return (
        f"checkpoint {step} in {workdir / CHECKPOINTS_DIR} does not fit the model that {workdir}/config.json "
        f"describes ({model.arch}, layout {model.layout}, head {model.head}, target {config.data.target})"
    )
