"""Published weights by name: the table against the frameworks' own sources, and download, check, cache,
convert and reuse against a local HTTP server on 127.0.0.1 (no test reaches the internet).

The server serves a random-weight torchvision ResNet-18 `.pth` named, as torchvision names its files,
with its sha256 prefix; `torchvision:resnet18` is pointed at it (its table entry takes that hash) and
the server stands in as $BCJAX_WEIGHTS_MIRROR.
"""

import ast
import dataclasses
import hashlib
import http.server
import importlib.util
import io
import re
import shlex
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tiny_config
import trainer_runs as tr
from etils import epath
from flax import nnx

from bcjax import config_checks, convert, http_download, published_weights, weight_hub
from bcjax.models import ARCHITECTURES
from bcjax.pretrained import read_converted
from configs import default

REPO = Path(__file__).resolve().parents[1]
SPEC = "torchvision:resnet18"


# ----------------------------------------------------------------------------- the table


def _module_constants(path: Path) -> dict:
    """The module-level literal assignments of a Python file, read without importing it."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def _entries(source):
    return [entry for entry in published_weights.PUBLISHED.values() if entry.source == source]


def test_torchvision_entries_are_torchvisions_urls():
    import torchvision

    for entry in _entries("torchvision"):
        model, _, tag = entry.name.partition(".")
        weights = torchvision.models.get_model_weights(model)
        assert entry.url == (weights[tag] if tag else weights.DEFAULT).url, entry.spec
        assert (entry.hash_algorithm, entry.file_name) == ("sha256", f"{model}-{entry.hash_prefix}.pth")
    assert len(_entries("torchvision")) == 15


def test_keras_entries_are_keras_no_top_files_and_hashes():
    spec = importlib.util.find_spec("keras")
    if spec is None:
        pytest.skip("Keras is not installed")
    applications = Path(spec.submodule_search_locations[0]) / "src" / "applications"
    resnet = _module_constants(applications / "resnet.py")
    mobilenet = _module_constants(applications / "mobilenet_v3.py")
    for entry in _entries("keras"):
        assert entry.hash_algorithm == "md5"
        if entry.name.startswith("resnet"):
            expected = f"{resnet['BASE_WEIGHTS_PATH']}{entry.name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
            md5 = resnet["WEIGHTS_HASHES"][entry.name][1]
        elif entry.name.startswith("vgg"):
            module = applications / f"{entry.name}.py"
            expected = _module_constants(module)["WEIGHTS_PATH_NO_TOP"]
            md5 = re.findall(r'file_hash="([0-9a-f]{32})"', module.read_text())[1]  # include_top, then not
        else:
            model_name = f"{entry.name.removeprefix('mobilenet_v3_')}_224_1.0_float"
            expected = f"{mobilenet['BASE_WEIGHT_PATH']}weights_mobilenet_v3_{model_name}_no_top_v2.h5"
            md5 = mobilenet["WEIGHTS_HASHES"][model_name][1]
        assert (entry.url, entry.hash_prefix) == (expected, md5), entry.spec
    assert len(_entries("keras")) == 10


def test_timm_entries_are_the_default_tags_on_the_hub():
    timm = pytest.importorskip("timm")
    for entry in _entries("timm"):
        hub_id = timm.models.get_pretrained_cfg(entry.name).hf_hub_id
        assert entry.url == f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors", entry.spec
    assert len(_entries("timm")) == 7


def test_a_mirror_serves_the_urls_last_part_or_for_timm_the_hub_id(monkeypatch):
    entries = published_weights.PUBLISHED
    assert weight_hub.download_url(entries["keras:resnet50"]) == entries["keras:resnet50"].url
    monkeypatch.setenv(weight_hub.MIRROR_ENV, "http://mirror.local/weights/")
    assert (
        weight_hub.download_url(entries["torchvision:resnet50"]) == "http://mirror.local/weights/resnet50-11ad3fa6.pth"
    )
    assert (
        weight_hub.download_url(entries["timm:resnet50"]) == "http://mirror.local/weights/resnet50.a1_in1k.safetensors"
    )


def test_each_entry_names_an_architecture_and_layout_bcjax_builds():
    for entry in published_weights.PUBLISHED.values():
        assert entry.arch in ARCHITECTURES, entry.spec
        assert entry.layout in ARCHITECTURES[entry.arch].layouts, entry.spec


# ----------------------------------------------------------------------------- a local server


@dataclasses.dataclass
class Served:
    """What the handler serves and how: files by name, what breaks, and the requests it got."""

    files: dict = dataclasses.field(default_factory=dict)
    redirects: dict = dataclasses.field(default_factory=dict)  # path -> (file name, X-Linked-Etag)
    truncate: int = 0  # the next this many responses stop halfway
    ignore_range: bool = False
    requests: list = dataclasses.field(default_factory=list)  # (path, Range header or None)


class Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args):
        pass

    def do_GET(self):
        served = self.served
        served.requests.append((self.path, self.headers.get("Range")))
        if self.path in served.redirects:
            name, etag = served.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", f"/{name}")
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = served.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if (wanted := self.headers.get("Range")) and not served.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if served.truncate:
            served.truncate -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture(scope="module")
def server():
    """A server on a free 127.0.0.1 port; tests reset what it serves through `served`."""
    handler = type("ServedHandler", (Handler,), {"served": Served()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served(server):
    httpd, handler = server
    handler.served = Served()
    handler.served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    return handler.served


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A random-weight torchvision ResNet-18 state dict, named NAME-<sha256 prefix>.pth; (name, bytes)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), buffer)
    data = buffer.getvalue()
    return f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


@pytest.fixture
def hub(served, resnet18_file, tmp_path, monkeypatch):
    """`torchvision:resnet18` -> the served file (mirror: the local server), in an empty cache."""
    name, data = resnet18_file
    served.files[name] = data
    entry = dataclasses.replace(
        published_weights.PUBLISHED[SPEC],
        url=f"https://download.pytorch.org/models/{name}",
        file_name=name,
        hash_prefix=name.removesuffix(".pth").rsplit("-", 1)[1],
    )
    monkeypatch.setitem(published_weights.PUBLISHED, SPEC, entry)
    monkeypatch.setenv(weight_hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(weight_hub.MIRROR_ENV, served.url)
    return entry


def _readme_weight_hub_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    lines = [
        line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("python -m bcjax.weight_hub")
    ]
    assert lines, "README shows no python -m bcjax.weight_hub command"
    return lines


def _gets(served, name):
    return [r for r in served.requests if r[0] == f"/{name}"]


# ----------------------------------------------------------------------------- download and cache


def test_first_use_downloads_and_converts_once_under_a_lock_then_reuses(hub, served, resnet18_file, capsys):
    """Two processes (here threads, each with its own flock) resolve at once: one download, one
    conversion, the same folder; later, resolve and the README's `python -m bcjax.weight_hub` lines
    make no request."""
    barrier, results = threading.Barrier(2), [None, None]

    def resolve(i):
        barrier.wait()
        results[i] = weight_hub.resolve(SPEC, out=io.StringIO())

    threads = [threading.Thread(target=resolve, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] == weight_hub.converted_dir(hub)
    assert results[0].name == f"torchvision-resnet18-{hub.hash_prefix}"
    assert len(_gets(served, hub.file_name)) == 1
    metadata = read_converted(results[0]).metadata
    assert (metadata["architecture"], metadata["layout"]) == ("resnet18", "v1.5")
    assert metadata["input_sha256"] == hashlib.sha256(resnet18_file[1]).hexdigest()
    downloads = weight_hub.cache_dir() / "downloads"
    assert [p.name for p in downloads.iterdir()] == [hub.file_name]

    served.requests.clear()
    assert weight_hub.resolve(SPEC) == results[0]
    for line in _readme_weight_hub_lines():  # as written; `fetch` finds the folder made above
        assert weight_hub.main(shlex.split(line)[3:]) == 0, line
    assert served.requests == []
    printed = capsys.readouterr().out
    assert f"{SPEC}: {results[0]}  (--config.model.init_from={SPEC})" in printed
    assert "keras:resnet50v2" in printed and "md5 fac2f116257151a9d068a22e544a4917" in printed


def test_hash_mismatch_deletes_the_file_and_says_so(hub, served, monkeypatch):
    monkeypatch.setitem(published_weights.PUBLISHED, SPEC, dataclasses.replace(hub, hash_prefix="00000000"))
    with pytest.raises(weight_hub.WeightDownloadError, match="the published one 00000000; deleted it"):
        weight_hub.resolve(SPEC)
    assert list((weight_hub.cache_dir() / "downloads").iterdir()) == []
    assert not (weight_hub.cache_dir() / "converted" / "torchvision-resnet18-00000000").exists()


def test_an_interrupted_transfer_resumes_with_a_range_request(hub, served, resnet18_file, tmp_path):
    served.truncate = 1
    out = io.StringIO()
    destination = tmp_path / hub.file_name
    http_download.download(
        f"{served.url}/{hub.file_name}", destination, algorithm="sha256", expected=hub.hash_prefix, out=out
    )
    assert destination.read_bytes() == resnet18_file[1]
    half = len(resnet18_file[1]) // 2
    assert _gets(served, hub.file_name) == [(f"/{hub.file_name}", None), (f"/{hub.file_name}", f"bytes={half}-")]
    assert "the transfer stopped at" in out.getvalue() and "resuming (2/3)" in out.getvalue()
    assert re.search(r"resnet18-\w+\.pth: [\d.]+ of [\d.]+ MB \(100%\), [\d.]+ MB/s", out.getvalue())


def test_a_transfer_that_keeps_breaking_leaves_only_the_partial_file_and_the_next_run_resumes_it(
    hub, served, resnet18_file, tmp_path
):
    served.truncate = 2
    destination = tmp_path / hub.file_name
    url = f"{served.url}/{hub.file_name}"
    with pytest.raises(http_download.DownloadError, match="after 2 attempts; .* is kept, run again to resume"):
        http_download.download(
            url, destination, algorithm="sha256", expected=hub.hash_prefix, attempts=2, out=io.StringIO()
        )
    assert not destination.exists()
    partial = tmp_path / f"{hub.file_name}.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(resnet18_file[1])

    served.requests.clear()
    http_download.download(url, destination, algorithm="sha256", expected=hub.hash_prefix, out=io.StringIO())
    assert served.requests == [(f"/{hub.file_name}", f"bytes={kept}-")]
    assert destination.read_bytes() == resnet18_file[1] and not partial.exists()


def test_a_server_without_range_support_restarts_from_the_first_byte(hub, served, resnet18_file, tmp_path):
    served.ignore_range = True
    destination = tmp_path / hub.file_name
    (tmp_path / f"{hub.file_name}.partial").write_bytes(b"stale bytes of an earlier try")
    http_download.download(
        f"{served.url}/{hub.file_name}", destination, algorithm="sha256", expected=hub.hash_prefix, out=io.StringIO()
    )
    assert destination.read_bytes() == resnet18_file[1]


@pytest.mark.parametrize("right", [True, False], ids=["matching", "mismatching"])
def test_without_a_published_hash_the_hubs_linked_etag_is_checked(served, tmp_path, right):
    """timm: the Hub's redirect states the file's sha256 in X-Linked-Etag; the CDN's answer does not."""
    data = np.random.default_rng(0).bytes(3000)
    sha = hashlib.sha256(data if right else b"another file").hexdigest()
    served.files["cdn-file"] = data
    served.redirects["/timm/m/resolve/main/model.safetensors"] = ("cdn-file", sha)
    destination = tmp_path / "m.safetensors"
    url = f"{served.url}/timm/m/resolve/main/model.safetensors"
    if right:
        http_download.download(url, destination, algorithm=None, expected=None, out=io.StringIO())
        assert destination.read_bytes() == data
    else:
        with pytest.raises(http_download.DownloadError, match=f"the published one {sha}; deleted it"):
            http_download.download(url, destination, algorithm=None, expected=None, out=io.StringIO())
        assert list(tmp_path.iterdir()) == []


def test_offline_one_message_with_the_url_and_the_convert_command_and_both_ways_work(
    hub, resnet18_file, tmp_path, monkeypatch
):
    monkeypatch.setenv(weight_hub.MIRROR_ENV, f"http://127.0.0.1:{tr.free_port()}")  # nothing listens there
    with pytest.raises(weight_hub.WeightDownloadError) as error:
        weight_hub.resolve(SPEC)
    message = str(error.value)
    in_cache = weight_hub.cache_dir() / "downloads" / hub.file_name
    assert f"cannot download {SPEC}" in message and "Connection refused" in message
    assert f"\n  {hub.url} (sha256 starting {hub.hash_prefix})\n" in message
    assert f"copy it to {in_cache} " in message
    assert not in_cache.exists()

    # By hand, way 1: the message's convert command, run where the fetched file lies.
    command = next(line.strip() for line in message.splitlines() if "python -m bcjax.convert" in line)
    folder = re.search(r"--config\.model\.init_from=(\S+)", message)[1].rstrip(".")
    monkeypatch.chdir(tmp_path)
    (tmp_path / hub.file_name).write_bytes(resnet18_file[1])
    assert convert.main(shlex.split(command)[3:]) == 0
    assert read_converted(tmp_path / folder).metadata["architecture"] == "resnet18"

    # Way 2: the file copied into the cache is checked and converted, still offline.
    in_cache.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / hub.file_name, in_cache)
    assert read_converted(weight_hub.resolve(SPEC)).metadata["input_file"] == hub.file_name


def test_a_server_without_the_file_gives_the_same_instructions(hub, served):
    served.files.clear()
    with pytest.raises(weight_hub.WeightDownloadError, match="404 Not Found") as error:
        weight_hub.resolve(SPEC)
    assert f"\n  {hub.url} (sha256 starting {hub.hash_prefix})\n" in str(error.value)
    assert "python -m bcjax.convert --source=torchvision" in str(error.value)


def test_a_damaged_file_put_in_the_cache_by_hand_is_refused(hub, resnet18_file):
    in_cache = weight_hub.cache_dir() / "downloads" / hub.file_name
    in_cache.parent.mkdir(parents=True)
    in_cache.write_bytes(resnet18_file[1][:1000])
    with pytest.raises(weight_hub.WeightDownloadError, match="delete the file and run again"):
        weight_hub.resolve(SPEC)


def test_an_unknown_name_lists_the_sources_names(hub):
    with pytest.raises(weight_hub.WeightDownloadError, match="no published weights 'torchvision:resnet51'.*resnet18"):
        weight_hub.resolve("torchvision:resnet51")


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras_mobilenet_v3_large_no_top_file_resolves_to_recipe_cs_backbone(served, tmp_path, monkeypatch):
    """`keras:mobilenet_v3_large` (recipe C): a random-weight no-top file in the published layout, served
    under its published name with its md5, converts to the keras layout without the pre-logits layer."""
    keras = pytest.importorskip("keras", reason="Keras 3 writes the served file")
    from test_convert_mobilenet_v3 import write_published_mobilenet_h5

    from bcjax.models import create_model
    from bcjax.pretrained import load_pretrained

    spec = "keras:mobilenet_v3_large"
    path = tmp_path / published_weights.PUBLISHED[spec].file_name
    write_published_mobilenet_h5(keras, keras.applications.MobileNetV3Large(weights=None, include_top=False), path)
    served.files[path.name] = path.read_bytes()
    md5 = hashlib.md5(served.files[path.name]).hexdigest()
    monkeypatch.setitem(
        published_weights.PUBLISHED, spec, dataclasses.replace(published_weights.PUBLISHED[spec], hash_prefix=md5)
    )
    monkeypatch.setenv(weight_hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(weight_hub.MIRROR_ENV, served.url)
    assert _problems(arch="mobilenet_v3_large", layout="keras", init_from=spec) == []
    folder = weight_hub.resolve(spec, out=io.StringIO())
    model = nnx.eval_shape(
        lambda: create_model("mobilenet_v3_large", "keras", rngs=nnx.Rngs(0), backbone_kwargs={"pre_logits": False})
    )
    metadata = load_pretrained(model, folder)
    assert (metadata["architecture"], metadata["layout"], metadata["imagenet_classes"]) == (
        "mobilenet_v3_large",
        "keras",
        None,
    )
    assert metadata["backbone_kwargs"] == {"pre_logits": False} and metadata["preprocessing"]["mode"] == "tf"
    assert model.backbone.num_features == 960


# ----------------------------------------------------------------------------- config checks


def _problems(**model) -> list[str]:
    config = default.get_config()
    config.model.update(model)
    return [p for p in config_checks.config_problems(config, 8) if p.startswith("config.model.")]


def test_config_check_accepts_a_published_name_that_fits_without_network(monkeypatch):
    monkeypatch.setenv(weight_hub.MIRROR_ENV, "http://127.0.0.1:9")  # would fail, were it used
    assert _problems(arch="resnet50", layout="v1.5", init_from="torchvision:resnet50") == []
    assert _problems(arch="resnet50", layout="v2", init_from="keras:resnet50v2") == []


@pytest.mark.parametrize(
    "model, message",
    [
        (
            dict(arch="resnet18", layout="v1.5", init_from="torchvision:resnet50"),
            "converts to resnet50 in layout v1.5: pass --config.model.arch=resnet50 --config.model.layout=v1.5",
        ),
        (
            dict(arch="resnet50", layout="v1.5", init_from="keras:resnet50"),
            "--config.model.arch=resnet50 --config.model.layout=v1",
        ),
        (dict(init_from="timm:resnet5"), "no published weights 'timm:resnet5'; timm has resnet50, vgg16"),
        (dict(init_from="/no/weights"), "no such folder; make one with python -m bcjax.convert, or name"),
    ],
)
def test_config_check_names_the_fix(model, message):
    problems = _problems(**model)
    assert len(problems) == 1 and message in problems[0], problems


def test_config_check_refuses_weights_for_an_architecture_bcjax_lacks(monkeypatch):
    entry = dataclasses.replace(published_weights.PUBLISHED[SPEC], arch="nosuchnet")
    monkeypatch.setitem(published_weights.PUBLISHED, SPEC, entry)
    assert "converts to 'nosuchnet', an architecture this bcjax does not build" in _problems(init_from=SPEC)[0]


# ----------------------------------------------------------------------------- the trainer


@pytest.mark.slow
def test_trainer_run_with_init_from_a_published_name(hub, served, prepared_data_dir, tmp_path):
    """`--config.model.init_from=torchvision:resnet18`: downloaded, converted and loaded; with the backbone
    frozen for the whole run, the saved backbone (parameters and BN statistics) is the published one bit for bit."""
    from bcjax import train

    config = tiny_config.get_config(str(prepared_data_dir))
    config.model.init_from = SPEC
    config.total_steps = config.optimizer.freeze_backbone_steps = 2
    config.evaluation.bootstrap_samples = 0
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(_gets(served, hub.file_name)) == 1
    converted = read_converted(weight_hub.converted_dir(hub)).backbone
    saved = tr.leaves_by_path(tr.saved_state(epath.Path(tmp_path / "run"), config.total_steps))
    backbone = {}  # ('stages', '0', '1', 'convs', '2', 'kernel') -> array, as read_converted keys them
    for key, leaf in saved.items():
        parts = tuple(a or b for a, b in re.findall(r"\[(?:'([^']*)'|(\d+))\]", key))
        if parts[:2] in (("params", "backbone"), ("rest", "backbone")):
            backbone[parts[2:-1]] = leaf
    assert backbone.keys() == converted.keys()
    for path, value in converted.items():
        np.testing.assert_array_equal(backbone[path], value, err_msg=str(path))
