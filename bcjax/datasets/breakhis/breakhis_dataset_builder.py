"""TFDS builder for BreakHis (Spanhol et al. 2016): breast-tumour microscope images.

The archive is a manual download. The builder reads the user's `BreaKHis_v1.tar.gz`
(extracted safely) or its extracted `BreaKHis_v1/` folder, keeps exactly the
`SOB_*.png` files in sorted order, validates every one of them, and refuses to
finish a dataset that has bad files or (for the published archive) wrong counts.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from .breakhis_common import (
    ARCHIVE_NAME,
    CLASSES,
    MAGNIFICATIONS,
    PUBLISHED_IMAGES,
    PUBLISHED_PATIENTS,
    TOP_DIR,
    TUMOR_TYPE_CODES,
    TUMOR_TYPE_NAMES,
    TUMOR_TYPES_BY_CODE,
    is_source_image,
    parse_filename,
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
BreakHis cannot be downloaded automatically (the authors ask for registration).
1. Get `{ARCHIVE_NAME}` from the "Breast Cancer Histopathological Database
   (BreakHis)" page of the VRI databases at the Federal University of Parana
   (search for "BreakHis VRI UFPR"); about 4 GB.
2. Put the archive, or its extracted `{TOP_DIR}/` folder, in one folder: the
   manual dir, `~/tensorflow_datasets/downloads/manual/` by default, or pass your
   own, e.g. `python -m bcjax.datasets.prepare --manual_dir=DIR` or
   `download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR))`.
No checksum is published upstream: record `sha256sum {ARCHIVE_NAME}` of your copy.
"""

# The dataset's description (DatasetInfo.description). Passed to DatasetInfo directly: TFDS's
# `dataset_info_from_configs` would replace it with README.md, which is a user guide.
_DESCRIPTION = """\
The Breast Cancer Histopathological Image Classification dataset (BreakHis):
7,909 RGB microscope images (700x460, a few 700x456) of 82 patients, benign or
malignant, in 8 tumour types, at 40X, 100X, 200X and 400X. One `train` split holds
every image; split by patient (`patient_id`) or, safer, by `accession`
(`<YY>-<digits>`, shared by suffix siblings and by the slide 14-13412 that appears
as both a ductal and a lobular carcinoma patient) to avoid leakage.
"""


class BreakHisBuildError(RuntimeError):
    """The source data cannot make a correct dataset; the message lists every cause."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One `SOB_*.png` of the archive, with the metadata its path encodes."""

    path: epath.Path
    filename: str  # path inside the archive, starting with `BreaKHis_v1/`
    tumor_code: str
    magnification: str
    patient_id: str
    accession: str

    @property
    def tumor_type(self) -> str:
        return TUMOR_TYPES_BY_CODE[self.tumor_code].folder

    @property
    def label(self) -> str:
        return TUMOR_TYPES_BY_CODE[self.tumor_code].class_name


def find_images(top: epath.Path) -> tuple[list[SourceImage], list[str]]:
    """Lists the SOB images below `top` (the `BreaKHis_v1` folder), sorted, and the bad names."""
    images, errors = [], []
    relpaths = sorted(str(path.relative_to(top.parent)) for path in _walk_files(top) if is_source_image(path.name))
    for filename in relpaths:
        fields, error = parse_filename(filename)
        if error:
            errors.append(f"{filename}: {error}")
        else:
            images.append(SourceImage(path=top.parent / filename, filename=filename, **fields))
    return images, errors


def _walk_files(folder: epath.Path) -> Iterator[epath.Path]:
    """Every file below `folder`; through epath, so the source may live on any filesystem."""
    for path in folder.iterdir():
        if path.is_dir():
            yield from _walk_files(path)
        else:
            yield path


def read_png(data: bytes) -> tuple[bytes, tuple[int, int, int]]:
    """Fully decodes `data` (so truncation is caught); returns RGB PNG bytes and shape."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise ValueError(f"not a PNG but {image.format}")
        image.load()
        if image.mode != "RGB":
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            data = buffer.getvalue()
        return data, (image.height, image.width, 3)


def safe_extract(archive: epath.Path, target: epath.Path) -> None:
    """Extracts the SOB images of `archive` below `target`; refuses members that escape it.

    Every unsafe member is listed before anything is written, and extraction goes
    to a temporary folder renamed at the end, so a failure leaves nothing half-done.
    """
    target = epath.Path(target)
    if (target / TOP_DIR).exists():
        return
    partial = target.parent / (target.name + ".incomplete")
    if partial.exists():
        partial.rmtree()
    try:
        with archive.open("rb") as stream, tarfile.open(fileobj=stream, mode="r:*") as tar:
            members = tar.getmembers()
            unsafe = [m.name for m in members if not _is_safe_member(m)]
            if unsafe:
                raise BreakHisBuildError(
                    f"{archive} has {len(unsafe)} member(s) that would escape the extraction "
                    "folder (absolute paths, '..', links or devices); nothing was extracted:\n  " + "\n  ".join(unsafe)
                )
            wanted = [m for m in members if m.isfile() and is_source_image(m.name.rsplit("/", 1)[-1])]
            for member in tfds.core.utils.tqdm(wanted, desc="Extracting BreakHis", unit=" files"):
                tar.extract(member, partial, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        if partial.exists():
            partial.rmtree()
        raise BreakHisBuildError(
            f"Cannot read {archive} ({error}). The archive is truncated or corrupt: a partial "
            "download is the usual cause; download it again."
        ) from error
    target.mkdir(parents=True, exist_ok=True)
    (partial / TOP_DIR).rename(target / TOP_DIR)
    partial.rmtree()


def _is_safe_member(member: tarfile.TarInfo) -> bool:
    parts = member.name.replace("\\", "/").split("/")
    if member.name.startswith("/") or ".." in parts:
        return False
    return member.isfile() or member.isdir()


@dataclasses.dataclass
class BuildSummary:
    """Counts gathered while building, printed and saved as `build_summary.json`."""

    images: int = 0
    by_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_type: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_magnification: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_type_magnification: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    patients_by_type: dict[str, set] = dataclasses.field(default_factory=lambda: collections.defaultdict(set))
    accessions: set = dataclasses.field(default_factory=set)
    shapes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    files_by_sha256: dict[str, list] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

    def add(self, image: SourceImage, shape: tuple[int, int, int], digest: str) -> None:
        self.images += 1
        self.by_class[image.label] += 1
        self.by_type[image.tumor_code] += 1
        self.by_magnification[image.magnification] += 1
        self.by_type_magnification[image.tumor_code, image.magnification] += 1
        self.patients_by_type[image.tumor_code].add(image.patient_id)
        self.accessions.add(image.accession)
        self.shapes["x".join(map(str, shape[1::-1]))] += 1
        self.files_by_sha256[digest].append(image.filename)

    def duplicate_groups(self) -> list[list[str]]:
        return [files for files in self.files_by_sha256.values() if len(files) > 1]

    def differences_from_published(self) -> list[str]:
        """Every count that differs from the published table, as readable lines."""
        lines = []
        for code, expected in PUBLISHED_IMAGES.items():
            for mag, want in zip(MAGNIFICATIONS, expected):
                got = self.by_type_magnification[code, mag]
                if got != want:
                    lines.append(f"{code} {mag}: {got} images, published {want}")
            got_patients = len(self.patients_by_type[code])
            if got_patients != PUBLISHED_PATIENTS[code]:
                lines.append(f"{code}: {got_patients} patients, published {PUBLISHED_PATIENTS[code]}")
        return lines

    def to_json(self) -> dict:
        duplicates = self.duplicate_groups()
        return {
            "images": self.images,
            "by_class": dict(self.by_class),
            "by_tumor_type": dict(self.by_type),
            "by_magnification": dict(self.by_magnification),
            "patients": sum(len(p) for p in self.patients_by_type.values()),
            "patients_by_tumor_type": {k: len(v) for k, v in self.patients_by_type.items()},
            "accession_groups": len(self.accessions),
            "image_sizes": dict(self.shapes),
            "byte_identical_groups": len(duplicates),
            "byte_identical_images": sum(len(g) for g in duplicates),
            "byte_identical_examples": duplicates[:5],
        }

    def report(self) -> str:
        s = self.to_json()
        fmt = lambda counts, order: ", ".join(f"{k} {counts.get(k, 0)}" for k in order)  # noqa: E731
        return "\n".join(
            [
                f"BreakHis: {s['images']} images, {s['patients']} patient folders, "
                f"{s['accession_groups']} accession groups",
                f"  class:         {fmt(s['by_class'], CLASSES)}",
                f"  tumour type:   {fmt(s['by_tumor_type'], TUMOR_TYPE_CODES)}",
                f"  magnification: {fmt(s['by_magnification'], MAGNIFICATIONS)}",
                f"  image sizes:   {', '.join(f'{k} {v}' for k, v in sorted(s['image_sizes'].items()))}",
                f"  byte-identical duplicates: {s['byte_identical_groups']} groups, "
                f"{s['byte_identical_images']} images",
            ]
        )


@dataclasses.dataclass
class BreakHisConfig(tfds.core.BuilderConfig):
    """`check_counts`: fail unless the counts equal the published archive's."""

    check_counts: bool = True


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for BreakHis; written as array_record for random access."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        BreakHisConfig(
            name="archive",
            description="The published BreaKHis_v1 archive; counts verified against the paper's table.",
        ),
        BreakHisConfig(
            name="custom",
            description="Any BreakHis-shaped tree (a subset, synthetic data); counts reported, not checked.",
            check_counts=False,
        ),
    ]

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            citation=self.get_metadata().citation,  # CITATIONS.bib
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                    "tumor_type": tfds.features.ClassLabel(names=TUMOR_TYPE_NAMES),
                    "magnification": tfds.features.ClassLabel(names=MAGNIFICATIONS),
                    "patient_id": tfds.features.Text(),
                    "accession": tfds.features.Text(),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        top = self._locate_source(dl_manager)
        return {"train": self._generate_examples(top)}

    def _locate_source(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        """The extracted `BreaKHis_v1/` folder, extracting the archive first if needed."""
        try:
            manual_dir = epath.Path(dl_manager.manual_dir)
        except AssertionError as error:
            raise BreakHisBuildError(f"No BreakHis data found: {error}") from None
        if (manual_dir / TOP_DIR).is_dir():
            return manual_dir / TOP_DIR
        archive = manual_dir / ARCHIVE_NAME
        if not archive.is_file():
            found = sorted(p.name for p in manual_dir.iterdir())[:20]
            raise BreakHisBuildError(
                f"Neither {TOP_DIR}/ nor {ARCHIVE_NAME} is in the manual dir {manual_dir} "
                f"(it holds: {', '.join(found) or 'nothing'}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        print(f"BreakHis archive {archive}: sha256 {_sha256_file(archive)}")
        target = epath.Path(dl_manager.download_dir) / "extracted" / "breakhis"
        safe_extract(archive, target)
        return target / TOP_DIR

    def _generate_examples(self, top: epath.Path) -> Iterator[tuple[str, dict]]:
        images, errors = find_images(top)
        if not images and not errors:
            raise BreakHisBuildError(f"No SOB_*.png image below {top}: is this the BreakHis archive?")
        summary = BuildSummary()
        for image in tfds.core.utils.tqdm(images, desc="Reading BreakHis PNGs", unit=" images"):
            raw = image.path.read_bytes()
            try:
                data, shape = read_png(raw)
            except (OSError, ValueError, SyntaxError) as error:
                errors.append(f"{image.filename}: unreadable PNG ({error})")
                continue
            summary.add(image, shape, hashlib.sha256(raw).hexdigest())
            if not errors:  # once the build is doomed, keep checking but stop writing
                yield image.filename, _example(image, data)
        self._finish(summary, errors)

    def _finish(self, summary: BuildSummary, errors: Sequence[str]) -> None:
        """Fails with every problem listed, or prints and saves the summary."""
        if errors:
            raise BreakHisBuildError(_error_list(f"{len(errors)} bad file(s); no dataset was written", errors))
        if self.builder_config.check_counts:
            differences = summary.differences_from_published()
            if differences:
                raise BreakHisBuildError(
                    _error_list(
                        "counts differ from the published BreaKHis_v1 archive (a partial download or "
                        "extraction is the usual cause; to build a subset or synthetic tree on purpose, "
                        "use the 'breakhis/custom' config)",
                        differences,
                    )
                )
        print(summary.report())
        self.data_path.mkdir(parents=True, exist_ok=True)
        (self.data_path / "build_summary.json").write_text(json.dumps(summary.to_json(), indent=2))


def _example(image: SourceImage, png: bytes) -> dict:
    return {
        "image": png,
        "label": image.label,
        "tumor_type": image.tumor_type,
        "magnification": image.magnification,
        "patient_id": image.patient_id,
        "accession": image.accession,
        "filename": image.filename,
    }


def _error_list(headline: str, lines: Iterable[str]) -> str:
    return f"BreakHis build failed: {headline}:\n  " + "\n  ".join(lines)


def _sha256_file(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
