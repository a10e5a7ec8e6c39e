"""The VGG converter against the real frameworks: random-weight torchvision vgg16/vgg16_bn,
timm vgg16 and Keras VGG16 (with top) / VGG19 (no top) saved in the published file formats,
converted, and compared in eval mode in float32.

Biases are random and BN statistics calibrated on a random batch, so that every mapping is really
tested. The conv parts run at 64x64 (32x32 for Keras without top): the last map is 2x2, so torch's
adaptive pool to 7x7 repeats and overlaps cells and fc1's flatten order matters; Keras' Flatten
needs 224x224, once. Each reference model (138M parameters with its fc layers) is built once.
"""

import hashlib
import os
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_convert import calibrate_torch, write_published_h5

from bcjax import config_checks, convert, normalization, pretrained
from bcjax.converters import resnet as resnet_converter
from bcjax.converters import vgg as vgg_converter
from bcjax.models import create_model
from bcjax.models.vgg import adaptive_avg_pool
from configs import default

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

README = pathlib.Path(__file__).parents[1] / "README.md"
TOL = 1e-4  # max |difference| over the reference's largest |value|, for logits and feature maps
IMAGES = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)


def our_outputs(converted, images=IMAGES, **backbone_kwargs):
    """Eval-mode feature map, pooled features and (with a head in the file) logits of a model built
    as the metadata says (or with `backbone_kwargs`) and filled from `converted`."""
    meta = converted.metadata
    kwargs = meta["backbone_kwargs"] | backbone_kwargs
    classes = meta["imagenet_classes"] or 1
    model = nnx.eval_shape(
        lambda: create_model(
            meta["architecture"], meta["layout"], "linear", classes, rngs=nnx.Rngs(0), backbone_kwargs=kwargs
        )
    )
    with_head = converted.head is not None and kwargs["fc_layers"]
    pretrained.apply_converted(model, converted, load_head=with_head)
    model.eval()
    with jax.default_matmul_precision("float32"):
        fmap = model.feature_map(jnp.asarray(images))
        out = {"feature map": fmap, "features": model.backbone.pool(fmap)}
        if with_head:
            out["logits"] = model.logits_from_feature_map(fmap)
    return {k: np.asarray(v) for k, v in out.items()}


def assert_matches(case, ours, reference):
    """Each reference output within TOL of its largest |value|; prints the figures (pytest -s)."""
    print(f"\n{case}:")
    for name, ref in reference.items():
        scale, diff = np.abs(ref).max(), np.abs(ours[name] - ref).max()
        print(f"  {name}: max|diff| {diff:.1e} (max|value| {scale:.2f})")
        # The two images must give different outputs, or the network is dead and tests nothing.
        assert np.abs(ref[0] - ref[1]).max() > 0.01 * scale, f"{name}: both images give the same output"
        assert diff <= TOL * scale, (name, diff, scale)


# ---------------------------------------------------------------------------------------
# torchvision and timm


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is the reference for .pth/.safetensors conversion")
    torch.set_num_threads(2)
    return torch


def randomized_torch(torch, model, seed=0):
    """Random conv and fc biases (zeros at init; the fc ones small, not to drown the features),
    calibrated BN statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            std = 0.1 if isinstance(layer, torch.nn.Conv2d) else 0.01
            layer.bias.data = std * torch.randn(layer.bias.shape, generator=gen)
    return calibrate_torch(torch, model, seed, size=IMAGES.shape[1])


def torch_outputs(torch, model, forward_features, images=IMAGES):
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        return {"feature map": forward_features(x).numpy().transpose(0, 2, 3, 1), "logits": model(x).numpy()}


def torchvision_file(torch, directory, arch, randomize=None, images=IMAGES):
    """(path named as torchvision names its downloads, NAME-<sha256 prefix>.pth; outputs on `images`).

    `randomize(torch, model)` sets the random weights (default: this module's `randomized_torch`).
    """
    import torchvision

    torch.manual_seed(0)
    model = (randomize or randomized_torch)(torch, getattr(torchvision.models, arch)(weights=None))
    path = directory / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    named = path.rename(directory / f"{arch}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth")
    return named, torch_outputs(torch, model, model.features, images)


@pytest.fixture(scope="module")
def vgg16_pth(torch, tmp_path_factory):
    return torchvision_file(torch, tmp_path_factory.mktemp("vgg16"), "vgg16")


@pytest.fixture(scope="module")
def vgg16_bn(torch, tmp_path_factory):
    """The torchvision vgg16_bn file, converted, and torch's outputs."""
    path, reference = torchvision_file(torch, tmp_path_factory.mktemp("vgg16_bn"), "vgg16_bn")
    return convert.convert_file(path, "torchvision"), reference


def readme_vgg_block(language):
    """The first `language` code block of README's VGG section."""
    section = README.read_text().split("### VGG16 and VGG19")[1].split("\n### ")[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S)[1]


def test_readme_vgg_commands_through_cli_and_load_pretrained(vgg16_pth, tmp_path, monkeypatch, capsys):
    """README's convert command (our file for its --input) and config lines; the result loads and matches torch."""
    path, reference = vgg16_pth
    monkeypatch.chdir(tmp_path)
    command = next(
        line for line in readme_vgg_block("bash").replace("\\\n", " ").splitlines() if "bcjax.convert" in line
    )
    argv = [f"--input={path}" if arg.startswith("--input=") else arg for arg in shlex.split(command)[3:]]
    assert convert.main(argv) == 0
    printed = capsys.readouterr().out
    assert "converted torchvision vgg16 (layout torch)" in printed and "1000 classes, in imagenet_head/" in printed
    config = default.get_config()
    exec(readme_vgg_block("python"), {"config": config})
    assert [p for p in config_checks.config_problems(config, 1) if p.startswith("config.model")] == []
    out = config.model.init_from
    model = nnx.eval_shape(
        lambda: create_model("vgg16", "torch", "linear", 1000, rngs=nnx.Rngs(0), backbone_kwargs={"fc_layers": True})
    )
    meta = pretrained.load_pretrained(model, out, load_head=True)
    assert meta == {
        "format": pretrained.FORMAT,
        "architecture": "vgg16",
        "layout": "torch",
        "source": "torchvision",
        "bn_epsilon": None,
        "imagenet_classes": 1000,
        "preprocessing": normalization.PREPROCESSING["torch"],
        "backbone_kwargs": {"fc_layers": True},
        "optional_layers": ["fc1", "fc2"],
        "input_file": path.name,
        "input_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    model.eval()
    with jax.default_matmul_precision("float32"):
        ours = {"feature map": model.feature_map(jnp.asarray(IMAGES)), "logits": model(jnp.asarray(IMAGES))}
    assert_matches("torchvision vgg16 (.pth, CLI + load_pretrained)", jax.tree.map(np.asarray, ours), reference)


def test_torchvision_vgg16_bn(vgg16_bn):
    converted, reference = vgg16_bn
    assert (converted.metadata["architecture"], converted.metadata["bn_epsilon"]) == ("vgg16_bn", 1e-5)
    assert_matches("torchvision vgg16_bn (.pth)", our_outputs(converted), reference)


def test_global_average_pool_model_takes_the_convs_of_a_file_with_fc_layers(vgg16_bn):
    """Recipe C's pooling from torchvision weights: fc1/fc2 are left out, the convs load."""
    converted, reference = vgg16_bn
    ours = our_outputs(converted, fc_layers=False)
    assert ours["features"].shape == (2, 512) and "logits" not in ours
    fmap = reference["feature map"]
    assert_matches("vgg16_bn without fc layers", ours, {"feature map": fmap, "features": fmap.mean(axis=(1, 2))})


def test_timm_vgg16_safetensors(torch, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is the reference for model.safetensors conversion")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = randomized_torch(torch, timm.create_model("vgg16", pretrained=False), seed=1)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    converted = convert.convert_file(path, "timm")
    meta = converted.metadata
    assert (meta["architecture"], meta["layout"], meta["imagenet_classes"]) == ("vgg16", "torch", 1000)
    assert meta["preprocessing"] == normalization.PREPROCESSING["torch"]
    assert_matches(
        "timm vgg16 (.safetensors)", our_outputs(converted), torch_outputs(torch, model, model.forward_features)
    )


@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (3, 5), (7, 7), (10, 13), (14, 9), (16, 16)])
def test_adaptive_avg_pool_matches_torch(torch, height, width):
    x = np.random.default_rng(0).standard_normal((2, height, width, 3)).astype(np.float32)
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 7).numpy()
    np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), 7), theirs.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Keras 3 (keras.applications VGG16, VGG19)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("keras", reason="Keras 3 is the reference for the Keras .h5 conversion")


def randomized_keras(keras, model, seed=0):
    """He-normal kernels (Keras' Glorot init shrinks the signal layer by layer) and random biases."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
            layer.kernel.assign(rng.normal(0, np.sqrt(2 / fan_in), layer.kernel.shape).astype("float32"))
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    return model


def keras_outputs(keras, model, images, features_layer=None):
    """Feature map (block5_pool) and the output; with `features_layer` (a top), its output and the logits."""
    names = ["block5_pool", features_layer] if features_layer else ["block5_pool"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    fmap, *pooled, out = (keras.ops.convert_to_numpy(y) for y in probe(images, training=False))
    return (
        {"feature map": fmap, "features": pooled[0], "logits": out}
        if pooled
        else {"feature map": fmap, "features": out}
    )


def test_keras_vgg16_with_top(keras, tmp_path):
    """The published with-top layout at 224x224 (Keras' Flatten needs the 7x7 map): caffe preprocessing,
    fc1 rows in Keras' (H, W, C) order."""
    keras.utils.set_random_seed(0)
    model = randomized_keras(keras, keras.applications.VGG16(weights=None, classifier_activation=None))
    images = np.random.default_rng(3).standard_normal((2, 224, 224, 3)).astype(np.float32)
    reference = keras_outputs(keras, model, images, "fc2")
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_published_h5(keras, model, path)
    del model
    converted = convert.convert_file(path, "keras")
    meta = converted.metadata
    assert (meta["architecture"], meta["layout"], meta["imagenet_classes"]) == ("vgg16", "keras", 1000)
    assert meta["preprocessing"] == normalization.PREPROCESSING["caffe"]
    assert_matches("Keras VGG16 (published .h5 layout, 224x224)", our_outputs(converted, images), reference)


@pytest.fixture(scope="module")
def keras_vgg19_notop(keras, tmp_path_factory):
    """Keras VGG19 without top, pooling="avg" (recipe C's form), saved by Keras 3 as a legacy .h5."""
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG19(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    randomized_keras(keras, model)
    images = IMAGES[:, :32, :32]
    path = tmp_path_factory.mktemp("vgg19_notop") / "vgg19_notop_full_model.h5"
    model.save(path)  # weights under model_weights/
    return path, images, keras_outputs(keras, model, images)


def test_keras_vgg19_notop_full_model_file(keras_vgg19_notop):
    path, images, reference = keras_vgg19_notop
    converted = convert.convert_file(path, "keras")
    meta = converted.metadata
    assert (meta["architecture"], meta["imagenet_classes"], meta["backbone_kwargs"]) == (
        "vgg19",
        None,
        {"fc_layers": False},
    )
    assert converted.head is None
    assert_matches("Keras VGG19 without top (full-model .h5, 32x32)", our_outputs(converted, images), reference)


def test_model_with_fc_layers_refuses_weights_without_them(keras_vgg19_notop):
    converted = convert.convert_file(keras_vgg19_notop[0], "keras")
    with pytest.raises(pretrained.ConversionError, match=r"missing: fc1/kernel \(shape \(25088, 4096\)\)"):
        our_outputs(converted, fc_layers=True)


# ---------------------------------------------------------------------------------------
# Which converter claims which file; bad input.


def meta_state_dict(torch, arch):
    """A torchvision state dict's keys and shapes, without allocating its tensors."""
    import torchvision

    with torch.device("meta"):
        state = getattr(torchvision.models, arch)().state_dict()
    return {k: np.broadcast_to(np.float32(0), v.shape) for k, v in state.items()}


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "vgg16_bn", "vgg19_bn"])
def test_vgg_and_resnet_converters_claim_only_their_files(torch, arch):
    vgg, resnet = meta_state_dict(torch, arch), meta_state_dict(torch, "resnet50")
    assert vgg_converter.identify(vgg, "torchvision")[0] == arch
    assert resnet_converter.identify(vgg, "torchvision")[0] is None
    assert vgg_converter.identify(resnet, "torchvision") == (None, "convs per stage none")
    assert resnet_converter.identify(resnet, "torchvision")[0] == "resnet50"


def test_wrong_architecture_is_one_clear_error(torch):
    with pytest.raises(
        pretrained.ConversionError,
        match=r"holds vgg19 weights \(convs per stage 2-2-4-4-4\), not vgg16; pass --arch=vgg19",
    ):
        convert.convert_tensors(meta_state_dict(torch, "vgg19"), "torchvision", "vgg16")


def test_wrong_architecture_through_cli_writes_nothing(vgg16_pth, tmp_path, capsys):
    code = convert.main(
        ["--source=torchvision", f"--input={vgg16_pth[0]}", f"--output={tmp_path / 'out'}", "--arch=vgg16_bn"]
    )
    assert code == 1
    assert "holds vgg16 weights (convs per stage 2-2-3-3-3), not vgg16_bn; pass --arch=vgg16" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_missing_unexpected_and_misshapen_key_is_listed(torch):
    state = meta_state_dict(torch, "vgg16_bn")
    del state["features.41.running_var"], state["classifier.3.bias"]
    state["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    state["pre_logits.fc1.weight"] = np.zeros(3, np.float32)  # a timm key in a torchvision file
    with pytest.raises(pretrained.ConversionError) as error:
        convert.convert_tensors(state, "torchvision", "vgg16_bn")
    message = str(error.value)
    for line in [
        "missing: features.41.running_var (shape (512,))",
        "missing: classifier.3.bias (shape (4096,))",
        "unexpected: pre_logits.fc1.weight (shape (3,))",
        "wrong shape: features.0.weight is (64, 3, 5, 5), expected (64, 3, 3, 3)",
        "4 problem(s)",
        "What to do: pass a torchvision VGG state dict (.pth) for vgg16_bn",
    ]:
        assert line in message
