"""The MobileNetV3 converter against the real frameworks: random-weight torchvision mobilenet_v3_large
and _small, timm mobilenetv3_large_100, Keras MobileNetV3Large (with top, in the published Keras 2
file layout) and MobileNetV3Small (no top, saved by Keras 3), converted and compared in eval mode in
float32; timm's _small_100 through its keys and shapes only (its blocks are Large's kinds).

Biases are random and BN statistics calibrated on a random batch, so every mapping is tested.
Inputs are 72x67: the stride-2 convs see even and odd sizes (rows 72, 36, 18, 9, 5; columns 67, 34,
17, 9, 5), so Keras' asymmetric "SAME" padding is exercised in both of its cases. Each network is
compiled once per test (jit), which costs far less than running it op by op.
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
from test_convert import calibrate_torch
from test_convert_vgg import assert_matches, meta_state_dict, torch_outputs, torchvision_file

from bcjax import config_checks, convert, normalization, pretrained
from bcjax.converters import mobilenet_v3 as mobilenet_converter
from bcjax.converters import resnet as resnet_converter
from bcjax.converters import vgg as vgg_converter
from bcjax.models import create_model, summary
from configs import default

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

README = pathlib.Path(__file__).parents[1] / "README.md"
IMAGES = np.random.default_rng(1).standard_normal((2, 72, 67, 3)).astype(np.float32)


def our_outputs(converted, images=IMAGES, **backbone_kwargs):
    """Eval-mode feature map, pooled features and (with a head in the file) logits of a model built
    as the metadata says (or with `backbone_kwargs`) and filled from `converted`."""
    meta = converted.metadata
    kwargs = meta["backbone_kwargs"] | backbone_kwargs
    model = nnx.eval_shape(
        lambda: create_model(
            meta["architecture"],
            meta["layout"],
            "linear",
            meta["imagenet_classes"] or 1,
            rngs=nnx.Rngs(0),
            backbone_kwargs=kwargs,
        )
    )
    with_head = converted.head is not None and kwargs["pre_logits"]
    pretrained.apply_converted(model, converted, load_head=with_head)
    return forward(model, images, with_head)


def forward(model, images, with_logits):
    """Feature map, pooled features (and logits) in eval mode and float32, in one jitted call over the
    weights (compiling the network once is much faster than running it op by op)."""
    model.eval()
    graphdef, weights, rest = nnx.split(model, nnx.Any(nnx.Param, nnx.BatchStat), ...)

    @jax.jit
    def outputs(weights, x):
        model = nnx.merge(graphdef, weights, rest)  # `rest`: the unused dropout RNG state, abstract
        fmap = model.feature_map(x)
        out = {"feature map": fmap, "features": model.backbone.pool(fmap)}
        return out | ({"logits": model.logits_from_feature_map(fmap)} if with_logits else {})

    with jax.default_matmul_precision("float32"):
        return jax.tree.map(np.asarray, outputs(weights, jnp.asarray(images)))


# ---------------------------------------------------------------------------------------
# torchvision and timm


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is the reference for .pth/.safetensors conversion")
    torch.set_num_threads(2)
    return torch


def randomized_torch(torch, model, seed=0):
    """Random biases where the layers have them (squeeze-excite, classifier), calibrated BN statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None:
            layer.bias.data = 0.1 * torch.randn(layer.bias.shape, generator=gen)
    return calibrate_torch(torch, model, seed, size=64)


@pytest.fixture(scope="module")
def large_pth(torch, tmp_path_factory):
    return torchvision_file(
        torch, tmp_path_factory.mktemp("mnv3_large"), "mobilenet_v3_large", randomized_torch, IMAGES
    )


@pytest.fixture(scope="module")
def small_tv(torch, tmp_path_factory):
    """The torchvision mobilenet_v3_small file, converted, and torch's outputs."""
    path, reference = torchvision_file(
        torch, tmp_path_factory.mktemp("mnv3_small"), "mobilenet_v3_small", randomized_torch, IMAGES
    )
    return convert.convert_file(path, "torchvision"), reference


def readme_section():
    return README.read_text().split("### MobileNetV3-Large and -Small")[1].split("\n### ")[0]


def readme_block(language):
    """The first `language` code block of README's MobileNetV3 section."""
    return re.search(rf"```{language}\n(.*?)```", readme_section(), re.S)[1]


def test_readme_mobilenet_commands_through_cli_and_load_pretrained(large_pth, tmp_path, monkeypatch, capsys):
    """README's convert command (our file for its --input) and config lines; the result loads and matches torch."""
    path, reference = large_pth
    monkeypatch.chdir(tmp_path)
    command = next(line for line in readme_block("bash").replace("\\\n", " ").splitlines() if "bcjax.convert" in line)
    argv = [f"--input={path}" if arg.startswith("--input=") else arg for arg in shlex.split(command)[3:]]
    assert convert.main(argv) == 0
    printed = capsys.readouterr().out
    assert "converted torchvision mobilenet_v3_large (layout torch)" in printed
    assert "1000 classes, in imagenet_head/" in printed
    config = default.get_config()
    exec(readme_block("python"), {"config": config})
    assert [p for p in config_checks.config_problems(config, 1) if p.startswith("config.model")] == []
    model = nnx.eval_shape(lambda: create_model("mobilenet_v3_large", "torch", "linear", 1000, rngs=nnx.Rngs(0)))
    meta = pretrained.load_pretrained(model, config.model.init_from, load_head=True)
    assert meta == {
        "format": pretrained.FORMAT,
        "architecture": "mobilenet_v3_large",
        "layout": "torch",
        "source": "torchvision",
        "bn_epsilon": 1e-3,
        "imagenet_classes": 1000,
        "preprocessing": normalization.PREPROCESSING["torch"],
        "backbone_kwargs": {"pre_logits": True},
        "optional_layers": ["pre_logits"],
        "input_file": path.name,
        "input_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    ours = forward(model, IMAGES, with_logits=True)
    assert_matches("torchvision mobilenet_v3_large (.pth, CLI + load_pretrained)", ours, reference)


def test_torchvision_mobilenet_v3_small(small_tv):
    converted, reference = small_tv
    assert (converted.metadata["architecture"], converted.metadata["bn_epsilon"]) == ("mobilenet_v3_small", 1e-3)
    assert_matches("torchvision mobilenet_v3_small (.pth)", our_outputs(converted), reference)


def test_pooled_model_takes_a_file_with_pre_logits(small_tv):
    """Recipe C's pooling from torchvision weights: the pre-logits layer is left out, the rest loads."""
    converted, _ = small_tv
    model = nnx.eval_shape(
        lambda: create_model("mobilenet_v3_small", "torch", rngs=nnx.Rngs(0), backbone_kwargs={"pre_logits": False})
    )
    pretrained.apply_converted(model, converted)
    assert model.backbone.pre_logits is None and model.backbone.num_features == 576
    np.testing.assert_array_equal(model.backbone.last_conv.kernel[...], converted.backbone["last_conv", "kernel"])


def test_timm_mobilenetv3_large_100_safetensors(torch, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is the reference for model.safetensors conversion")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = randomized_torch(torch, timm.create_model("mobilenetv3_large_100", pretrained=False), seed=1)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    converted = convert.convert_file(path, "timm")
    meta = converted.metadata
    assert (meta["architecture"], meta["layout"], meta["bn_epsilon"]) == ("mobilenet_v3_large", "timm", 1e-5)
    assert (meta["imagenet_classes"], meta["preprocessing"]) == (1000, normalization.PREPROCESSING["torch"])
    reference = torch_outputs(torch, model, model.forward_features, IMAGES)
    assert_matches("timm mobilenetv3_large_100 (.safetensors)", our_outputs(converted), reference)


# ---------------------------------------------------------------------------------------
# Keras 3 (keras.applications MobileNetV3Large, MobileNetV3Small)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("keras", reason="Keras 3 is the reference for the Keras .h5 conversion")


def randomized_keras(keras, model, images, seed=0):
    """Random biases, gammas and betas; BN statistics of `images` (momentum 0 for one training-mode call)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape).astype("float32"))
            layer.momentum = 0.0
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    model(images, training=True)
    return model


def keras_outputs(keras, model, images, top):
    """Feature map (the activation after conv_1_bn) and the output; with a top, its pre-logits and logits."""
    names = [layer.name for layer in model.layers]
    fmap_layer = model.layers[names.index("conv_1_bn") + 1]
    probes = [fmap_layer.output] + ([model.layers[names.index("conv_2") + 1].output] if top else [])
    fmap, *pre_logits, out = (
        keras.ops.convert_to_numpy(y) for y in keras.Model(model.input, [*probes, model.output])(images, training=False)
    )
    if top:
        return {"feature map": fmap, "features": pre_logits[0].reshape(len(images), -1), "logits": out}
    return {"feature map": fmap, "features": out}


# Keras 3's layer names -> the published (Keras 2) files' names.
_PUBLISHED_TOP = {"conv": "Conv", "conv_bn": "Conv/BatchNorm", "conv_1": "Conv_1", "conv_1_bn": "Conv_1/BatchNorm"}
_PUBLISHED_TOP |= {"conv_2": "Conv_2", "logits": "Logits"}


def published_name(name):
    """ "expanded_conv_3_squeeze_excite_conv_1" -> "expanded_conv_3/squeeze_excite/Conv_1" (tf.keras 2.x names)."""
    if name in _PUBLISHED_TOP:
        return _PUBLISHED_TOP[name]
    m = re.fullmatch(r"(expanded_conv(?:_\d+)?)_(expand|depthwise|project|squeeze_excite_conv(?:_1)?)(_bn)?", name)
    if not m:
        return name  # a layer without weights
    return f"{m[1]}/{m[2].replace('squeeze_excite_conv', 'squeeze_excite/Conv')}" + ("/BatchNorm" if m[3] else "")


def write_published_mobilenet_h5(keras, model, path):
    """The layout of the published `weights_mobilenet_v3_*.h5` (tf.keras 2 `save_weights`): Keras 2 layer
    names ("/" nests the groups, created in sorted order as tf.keras did), weight names like
    "expanded_conv/depthwise/depthwise_kernel:0"."""
    import h5py

    layers = {published_name(layer.name): layer for layer in model.layers}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.6.0"
        for name in sorted(layers):
            weights = layers[name].weights
            depthwise = isinstance(layers[name], keras.layers.DepthwiseConv2D)
            names = [f"{name}/{'depthwise_kernel' if depthwise else w.name}:0" for w in weights]
            group = f.create_group(name)
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, w in zip(names, weights):
                group.create_dataset(weight_name, data=keras.ops.convert_to_numpy(w).astype(np.float32))


def keras_images(seed):
    return np.random.default_rng(seed).uniform(0, 255, (2, *IMAGES.shape[1:])).astype(np.float32)


def test_keras_large_with_top_in_the_published_layout(keras, tmp_path):
    """Keras 2 names, Conv_2 and Logits as 1x1 convs, "tf" preprocessing for the in-model Rescaling."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Large(weights=None, input_shape=IMAGES.shape[1:], classifier_activation=None)
    randomized_keras(keras, model, keras_images(2))
    images = keras_images(3)
    reference = keras_outputs(keras, model, images, top=True)
    path = tmp_path / "weights_mobilenet_v3_large_224_1.0_float.h5"
    write_published_mobilenet_h5(keras, model, path)
    converted = convert.convert_file(path, "keras")
    meta = converted.metadata
    assert (meta["architecture"], meta["layout"], meta["imagenet_classes"], meta["backbone_kwargs"]) == (
        "mobilenet_v3_large",
        "keras",
        1000,
        {"pre_logits": True},
    )
    assert meta["preprocessing"] == normalization.PREPROCESSING["tf"]
    ours = our_outputs(converted, pretrained.preprocess(images, meta["preprocessing"]))
    assert_matches("Keras MobileNetV3Large (published .h5 layout, with top, 72x67)", ours, reference)


@pytest.fixture(scope="module")
def keras_small_notop(keras, tmp_path_factory):
    """Keras MobileNetV3Small without top, pooling="avg" (recipe C's form), saved by Keras 3 as a legacy .h5."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        weights=None, include_top=False, pooling="avg", input_shape=IMAGES.shape[1:]
    )
    randomized_keras(keras, model, keras_images(4))
    images = keras_images(5)
    path = tmp_path_factory.mktemp("mnv3_small_notop") / "mobilenet_v3_small_notop_full_model.h5"
    model.save(path)  # weights under model_weights/, Keras 3 names
    return path, images, keras_outputs(keras, model, images, top=False)


def test_keras_small_no_top_full_model_file(keras_small_notop):
    path, images, reference = keras_small_notop
    converted = convert.convert_file(path, "keras")
    meta = converted.metadata
    assert (meta["architecture"], meta["imagenet_classes"], meta["backbone_kwargs"]) == (
        "mobilenet_v3_small",
        None,
        {"pre_logits": False},
    )
    assert converted.head is None
    ours = our_outputs(converted, pretrained.preprocess(images, meta["preprocessing"]))
    assert_matches("Keras MobileNetV3Small without top (Keras 3 full-model .h5, 72x67)", ours, reference)


def test_model_with_pre_logits_refuses_weights_without_them(keras_small_notop):
    converted = convert.convert_file(keras_small_notop[0], "keras")
    with pytest.raises(pretrained.ConversionError, match=r"missing: pre_logits/kernel \(shape \(576, 1024\)\)"):
        our_outputs(converted, pre_logits=True)


# ---------------------------------------------------------------------------------------
# Which converter claims which file; bad input; the summary.


@pytest.mark.parametrize("arch", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_each_converter_claims_only_its_files(torch, arch):
    mobilenet, resnet, vgg = (meta_state_dict(torch, a) for a in (arch, "resnet50", "vgg16"))
    assert mobilenet_converter.identify(mobilenet, "torchvision")[0] == arch
    assert resnet_converter.identify(mobilenet, "torchvision")[0] is None
    assert vgg_converter.identify(mobilenet, "torchvision")[0] is None
    for other in (resnet, vgg):
        assert mobilenet_converter.identify(other, "torchvision") == (None, "0 inverted-residual blocks")


def test_timm_small_keys_and_shapes_map(torch):
    timm = pytest.importorskip("timm", reason="timm names the keys")
    with torch.device("meta"):
        state = timm.create_model("mobilenetv3_small_100").state_dict()
    converted = convert.convert_tensors({k: np.broadcast_to(np.float32(0), v.shape) for k, v in state.items()}, "timm")
    assert (converted.metadata["architecture"], converted.metadata["backbone_kwargs"]) == (
        "mobilenet_v3_small",
        {"pre_logits": True},
    )
    assert len(converted.backbone) + len(converted.head) == len([k for k in state if "num_batches" not in k])


def test_wrong_architecture_through_cli_writes_nothing(large_pth, tmp_path, capsys):
    code = convert.main(
        ["--source=torchvision", f"--input={large_pth[0]}", f"--output={tmp_path / 'out'}", "--arch=mobilenet_v3_small"]
    )
    assert code == 1
    assert (
        "holds mobilenet_v3_large weights (15 inverted-residual blocks), not mobilenet_v3_small; "
        "pass --arch=mobilenet_v3_large" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_every_missing_unexpected_and_misshapen_key_is_listed(torch):
    state = meta_state_dict(torch, "mobilenet_v3_large")
    del state["features.4.block.2.fc2.bias"], state["classifier.0.weight"]
    state["features.2.block.1.0.weight"] = np.zeros((64, 1, 5, 5), np.float32)
    state["conv_head.weight"] = np.zeros(3, np.float32)  # a timm key in a torchvision file
    with pytest.raises(pretrained.ConversionError) as error:
        convert.convert_tensors(state, "torchvision", "mobilenet_v3_large")
    message = str(error.value)
    for line in [
        "missing: features.4.block.2.fc2.bias (shape (72,))",
        "missing: classifier.0.weight (shape (1280, 960))",
        "unexpected: conv_head.weight (shape (3,))",
        "wrong shape: features.2.block.1.0.weight is (64, 1, 5, 5), expected (64, 1, 3, 3)",
        "4 problem(s)",
        "What to do: pass a torchvision MobileNetV3 state dict (.pth) for mobilenet_v3_large",
    ]:
        assert line in message


def test_readme_summary_command_gives_torchvisions_parameter_count(capsys):
    command = next(line for line in readme_section().splitlines() if line.startswith("python -m bcjax.models.summary"))
    assert summary.main(shlex.split(command)[3:]) == 0
    assert "total        5,483,032" in capsys.readouterr().out
