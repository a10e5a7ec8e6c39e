"""The converters against the real frameworks: random-weight torchvision, timm and Keras
ResNets saved in the published file formats, converted, and compared in eval mode.

Weights are random but realistic: BN statistics are calibrated on a random batch (so
they are far from 0/1 and the BN mapping is really tested), gammas/betas and Keras conv
biases are random. Logits must match to 1e-4; stage outputs to 2e-4 of their largest
magnitude (float32 rounding differences grow with depth, to 7.5e-5 of it at ResNet-50's stage 4).

ResNet-34/101/152 (torchvision) and ResNet101/152(V2) (Keras) are compared in float64 on both
sides, from the same float32 weights: in float32 the rounding differences of 100-150 layers reach
3e-4 of the logits (measured), enough to hide a small mapping error such as a wrong BN epsilon;
in float64 a correct conversion matches to ~1e-12 of the largest value.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bcjax import convert, normalization, pretrained
from bcjax.models import create_model, resnet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

LOGIT_ATOL = 1e-4
STAGE_TOL = 2e-4  # times the stage's largest |value|
# Random NHWC input shared by every framework.
IMAGES = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)
# ResNet-101/152 (and -34) at 64x64 (2x2 at stage 4): compile and run time grow with depth, not
# with size; the converter maps names and shapes, which no input size changes.
SMALL_IMAGES = np.random.default_rng(2).standard_normal((2, 64, 64, 3))
FLOAT64_TOL = 1e-9  # times the largest |value| of the logits or of a stage output


def jax_outputs(model, images=IMAGES):
    """Eval-mode logits and stage outputs of a converted Classifier."""
    model.eval()
    with jax.default_matmul_precision("float32"):
        features, stages = model.backbone(jnp.asarray(images), return_stages=True)
        logits = model.head(features)
    return np.asarray(logits), {k: np.asarray(v) for k, v in stages.items()}


def assert_matches(case, ours, reference):
    """Checks logits and stages; prints the max |difference| for the report (pytest -s)."""
    (logits, stages), (ref_logits, ref_stages) = ours, reference
    diff = np.abs(logits - ref_logits).max()
    print(f"\n{case}: max|logit| {np.abs(ref_logits).max():.2f}, max|logit diff| {diff:.2e}")
    assert 0.5 < np.abs(ref_logits).max() < 100, "logits of a degenerate size test nothing"
    assert diff <= LOGIT_ATOL
    for name, ref in ref_stages.items():
        scale = np.abs(ref).max()
        print(f"  {name}: max|diff| {np.abs(stages[name] - ref).max():.2e} (max|value| {scale:.1f})")
        np.testing.assert_allclose(stages[name], ref, rtol=0, atol=STAGE_TOL * scale, err_msg=name)


def abstract_model(arch, layout="v1.5", num_classes=1000):
    """A Classifier without initial values: random init costs seconds of XLA compiles on
    a small CPU, and loading the backbone and ImageNet head fills every variable anyway."""
    return nnx.eval_shape(lambda: create_model(arch, layout, "linear", num_classes, rngs=nnx.Rngs(0)))


def converted_model(converted, arch, layout):
    model = abstract_model(arch, layout)
    pretrained.apply_converted(model, converted, load_head=True)
    return model


def float64_outputs(converted, arch, layout, images=SMALL_IMAGES):
    """Eval-mode logits and stage outputs in float64 of the converted (float32) weights."""
    with jax.enable_x64(True):
        model = nnx.eval_shape(
            lambda: create_model(
                arch, layout, "linear", 1000, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
            )
        )
        pretrained.apply_converted(model, converted, load_head=True)
        model.eval()
        features, stages = model.backbone(jnp.asarray(images, jnp.float64), return_stages=True)
        return np.asarray(model.head(features)), {k: np.asarray(v) for k, v in stages.items()}


def assert_matches_float64(case, ours, reference):
    """Logits and every stage within FLOAT64_TOL of their largest |value|; prints the figures (pytest -s)."""
    (logits, stages), (ref_logits, ref_stages) = ours, reference
    assert logits.dtype == ref_logits.dtype == np.float64
    assert 0.5 < np.abs(ref_logits).max() < 100, "logits of a degenerate size test nothing"
    print(f"\n{case}, float64:")
    for name, ours_, ref in [("logits", logits, ref_logits), *((k, stages[k], v) for k, v in ref_stages.items())]:
        scale, diff = np.abs(ref).max(), np.abs(ours_ - ref).max()
        print(f"  {name}: max|diff| {diff:.1e} (max|value| {scale:.1f})")
        assert diff <= FLOAT64_TOL * scale, (name, diff, scale)


# ---------------------------------------------------------------------------------------
# torchvision and timm


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is the reference for .pth/.safetensors conversion")
    torch.set_num_threads(2)
    return torch


def calibrate_torch(torch, model, seed=0, size=224):
    """Random gammas/betas, BN running stats set to a random batch's statistics."""
    gen = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average: after one batch, its statistics
            bn.reset_running_stats()
            bn.weight.data = torch.rand(bn.weight.shape, generator=gen) + 0.5
            bn.bias.data = 0.2 * torch.randn(bn.bias.shape, generator=gen)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()


def torch_outputs(torch, model, images=IMAGES):
    stages = {}
    for ours, theirs in [
        ("stem", "maxpool"),
        ("stage1", "layer1"),
        ("stage2", "layer2"),
        ("stage3", "layer3"),
        ("stage4", "layer4"),
    ]:
        getattr(model, theirs).register_forward_hook(
            lambda m, i, out, ours=ours: stages.__setitem__(ours, out.numpy().transpose(0, 2, 3, 1))
        )
    with torch.no_grad():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    return logits, stages


def torchvision_file(torch, directory, arch, images=IMAGES):
    import torchvision

    model = calibrate_torch(torch, getattr(torchvision.models, arch)(weights=None), size=images.shape[1])
    path = directory / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return path, torch_outputs(torch, model, images)


@pytest.fixture(scope="module")
def resnet18_pth(torch, tmp_path_factory):
    return torchvision_file(torch, tmp_path_factory.mktemp("torchvision"), "resnet18")


def test_torchvision_resnet18_through_cli_and_load_pretrained(resnet18_pth, tmp_path, capsys):
    path, reference = resnet18_pth
    out = tmp_path / "r18"
    assert convert.main(["--source=torchvision", f"--input={path}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["backbone", "imagenet_head", "metadata.json"]

    model = abstract_model("resnet18")
    meta = pretrained.load_pretrained(model, out, load_head=True)
    assert meta == {
        "format": pretrained.FORMAT,
        "architecture": "resnet18",
        "layout": "v1.5",
        "source": "torchvision",
        "bn_epsilon": 1e-5,
        "imagenet_classes": 1000,
        "preprocessing": normalization.PREPROCESSING["torch"],
        "input_file": "resnet18.pth",
        "input_sha256": sha,
    }
    assert_matches("torchvision resnet18 (.pth, CLI + load_pretrained)", jax_outputs(model), reference)


def test_torchvision_resnet50(torch, tmp_path):
    path, reference = torchvision_file(torch, tmp_path, "resnet50")
    converted = convert.convert_file(path, "torchvision")
    assert converted.metadata["architecture"] == "resnet50"
    assert_matches(
        "torchvision resnet50 (.pth)", jax_outputs(converted_model(converted, "resnet50", "v1.5")), reference
    )


@pytest.mark.parametrize("arch", ["resnet34", "resnet101", "resnet152"])
def test_torchvision_other_depths(torch, tmp_path, arch):
    """The other torchvision depths (float32 .pth), the depth read from the file (no --arch)."""
    import torchvision

    model = calibrate_torch(torch, getattr(torchvision.models, arch)(weights=None), size=SMALL_IMAGES.shape[1])
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    converted = convert.convert_file(path, "torchvision")
    assert (converted.metadata["architecture"], converted.metadata["layout"]) == (arch, "v1.5")
    assert_matches_float64(
        f"torchvision {arch} (.pth, 64x64)",
        float64_outputs(converted, arch, "v1.5"),
        torch_outputs(torch, model.double(), SMALL_IMAGES),
    )


def test_timm_resnet50_safetensors(torch, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is the reference for model.safetensors conversion")
    from safetensors.torch import save_file

    model = calibrate_torch(torch, timm.create_model("resnet50", pretrained=False), seed=1)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    converted = convert.convert_file(path, "timm")
    assert converted.metadata["preprocessing"] == normalization.PREPROCESSING["torch"]
    assert_matches(
        "timm resnet50 (.safetensors)",
        jax_outputs(converted_model(converted, "resnet50", "v1.5")),
        torch_outputs(torch, model),
    )


# ---------------------------------------------------------------------------------------
# Keras 3 (the ResNet50 / ResNet50V2 of keras.applications)

KERAS_STAGES = {
    "stem": "pool1_pool",
    "stage1": "conv2_block3_out",
    "stage2": "conv3_block4_out",
    "stage3": "conv4_block6_out",
    "stage4": "conv5_block3_out",
}


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("keras", reason="Keras 3 is the reference for the Keras .h5 conversion")


def calibrate_keras(keras, model, seed=0, size=224):
    """Random conv biases (so bias folding is tested), gammas, betas; BN moving stats set
    to the statistics their inputs have on a random batch in training mode."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape).astype("float32"))
    for bn in bns:
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.normal(0, 0.2, bn.beta.shape).astype("float32"))
    probe = keras.Model(model.input, [bn.input for bn in bns])
    inputs = probe(rng.standard_normal((4, size, size, 3)).astype("float32"), training=True)
    for bn, x in zip(bns, inputs):
        x = keras.ops.convert_to_numpy(x)
        bn.moving_mean.assign(x.mean((0, 1, 2)))
        bn.moving_variance.assign(x.var((0, 1, 2)))
    return model


def write_published_h5(keras, model, path):
    """The layout of the published keras-applications files (Keras 2 `save_weights`):
    `layer_names` on the root, a group per layer with `weight_names` like
    "conv1_conv/kernel:0", each array at group[weight_name]."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights):
                group.create_dataset(name, data=keras.ops.convert_to_numpy(w).astype(np.float32))


def keras_outputs(keras, model, images=IMAGES, stages=KERAS_STAGES):
    probe = keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in stages.values()])
    logits, *outputs = [keras.ops.convert_to_numpy(y) for y in probe(images, training=False)]
    return logits, dict(zip(stages, outputs))


def keras_stages(arch):
    """Keras' names of the stem's and each stage's output for `arch`, e.g. conv4_block23_out."""
    _, depths = resnet.ARCHITECTURES[arch]
    return {"stem": "pool1_pool"} | {f"stage{i + 1}": f"conv{i + 2}_block{n}_out" for i, n in enumerate(depths)}


class KerasCase(NamedTuple):
    build: Any  # keras.applications.ResNet50 or ResNet50V2
    layout: str
    preprocessing: str
    model: Any  # calibrated, with top, logits out
    top: Path  # the published with-top layout, written by write_published_h5
    notop: Path  # the no-top twin, saved by Keras 3 as a full-model legacy .h5


@pytest.fixture(
    scope="module", params=[("ResNet50", "v1", "caffe"), ("ResNet50V2", "v2", "tf")], ids=["ResNet50", "ResNet50V2"]
)
def keras_case(request, keras, tmp_path_factory):
    name, layout, preprocessing = request.param
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, name)
    model = calibrate_keras(keras, build(weights=None, classifier_activation=None))
    directory = tmp_path_factory.mktemp(name)
    top = directory / f"{name.lower()}_weights_tf_dim_ordering_tf_kernels.h5"
    write_published_h5(keras, model, top)
    notop_model = build(weights=None, include_top=False)
    notop_model.set_weights(model.get_weights()[:-2])  # all but predictions/kernel, bias
    notop = directory / f"{name.lower()}_notop_full_model.h5"
    notop_model.save(notop)  # weights under model_weights/, names without ":0"
    return KerasCase(build, layout, preprocessing, model, top, notop)


def test_keras_reads_our_published_layout_file(keras, keras_case):
    fresh = keras_case.build(weights=None, classifier_activation=None)
    fresh.load_weights(keras_case.top)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fresh(IMAGES)), keras.ops.convert_to_numpy(keras_case.model(IMAGES))
    )


def test_keras_with_top(keras, keras_case):
    converted = convert.convert_file(keras_case.top, "keras")
    meta = converted.metadata
    assert (meta["layout"], meta["bn_epsilon"], meta["imagenet_classes"]) == (keras_case.layout, 1.001e-5, 1000)
    assert meta["preprocessing"] == normalization.PREPROCESSING[keras_case.preprocessing]
    model = converted_model(converted, "resnet50", keras_case.layout)
    assert_matches(
        f"Keras {keras_case.model.name} (published .h5 layout)",
        jax_outputs(model),
        keras_outputs(keras, keras_case.model),
    )


def test_keras_notop_full_model_file(keras_case):
    with_top = convert.convert_file(keras_case.top, "keras")
    without = convert.convert_file(keras_case.notop, "keras", "resnet50")
    assert without.head is None and without.metadata["imagenet_classes"] is None
    assert without.metadata["layout"] == keras_case.layout
    assert without.backbone.keys() == with_top.backbone.keys()
    for path, value in with_top.backbone.items():
        np.testing.assert_array_equal(without.backbone[path], value, err_msg=str(path))


def test_keras3_weights_h5_is_refused_clearly(keras_case, tmp_path):
    path = tmp_path / "model.weights.h5"
    keras_case.model.save_weights(path)
    with pytest.raises(pretrained.ConversionError, match="not a legacy Keras HDF5 weights file"):
        convert.convert_file(path, "keras")


@pytest.mark.parametrize(
    "name, arch, layout, preprocessing",
    [
        ("ResNet101", "resnet101", "v1", "caffe"),
        ("ResNet152", "resnet152", "v1", "caffe"),
        ("ResNet101V2", "resnet101", "v2", "tf"),
        ("ResNet152V2", "resnet152", "v2", "tf"),
    ],
)
def test_keras_other_depths(keras, tmp_path, name, arch, layout, preprocessing):
    """The README's other Keras files (ResNet101/152 and their V2), in the published layout (float32),
    the depth and layout read from the file; Keras computes in float64 from the same weights."""
    size = SMALL_IMAGES.shape[1]
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()  # the policy is cached on first use
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None, input_shape=(size, size, 3))
        calibrate_keras(keras, model, size=size)
        # Float32 weights (what the file holds); conv biases and BN means on a 2^-12 grid, so that the
        # converter's bias folding (mean - bias, in float32) is exact, as a float64 comparison needs.
        on_grid = [w.path.endswith(("_conv/bias", "/moving_mean")) for w in model.weights]
        model.set_weights(
            [
                np.round(w * 4096) / 4096 if grid else w.astype(np.float32).astype(np.float64)
                for w, grid in zip(model.get_weights(), on_grid)
            ]
        )
        path = tmp_path / f"{name.lower()}_weights_tf_dim_ordering_tf_kernels.h5"
        write_published_h5(keras, model, path)
        reference = keras_outputs(keras, model, SMALL_IMAGES, keras_stages(arch))
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    converted = convert.convert_file(path, "keras")
    meta = converted.metadata
    assert (meta["architecture"], meta["layout"], meta["imagenet_classes"]) == (arch, layout, 1000)
    assert meta["preprocessing"] == normalization.PREPROCESSING[preprocessing]
    assert_matches_float64(
        f"Keras {name} (published .h5 layout, 64x64)", float64_outputs(converted, arch, layout), reference
    )


@pytest.mark.parametrize("mode", ["torch", "caffe", "tf"])
def test_preprocess_matches_keras_preprocess_input(keras, mode):
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = keras.applications.imagenet_utils.preprocess_input(images.astype("float32"), mode=mode)
    ours = pretrained.preprocess(images, normalization.PREPROCESSING[mode])
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Bad input: one clear error listing everything, nothing written.


def run_cli(tmp_path, *args):
    """Runs the converter CLI in a subprocess; returns (exit code, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "bcjax.convert", *args], capture_output=True, text=True, cwd=tmp_path
    )
    return result.returncode, result.stderr


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "bcjax.convert", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--source" in result.stdout and "--arch" in result.stdout


def test_wrong_architecture_is_one_clear_error_and_writes_nothing(resnet18_pth, tmp_path):
    path, _ = resnet18_pth
    code, stderr = run_cli(tmp_path, "--source=torchvision", f"--input={path}", "--output=out", "--arch=resnet50")
    assert code == 1
    assert "holds resnet18 weights" in stderr and "--arch=resnet18" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(torch, resnet18_pth, tmp_path, suffix):
    path, _ = resnet18_pth
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        whole.write_bytes(path.read_bytes())
    else:
        from safetensors.torch import save_file

        save_file(torch.load(path, weights_only=True), whole)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(pretrained.ConversionError, match="truncated, corrupt"):
        convert.convert_file(truncated, "torchvision" if suffix == ".pth" else "timm")


def test_truncated_keras_file(keras_case, tmp_path):
    top = keras_case.top
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(top.read_bytes()[: top.stat().st_size // 2])
    with pytest.raises(pretrained.ConversionError, match="truncated, corrupt"):
        convert.convert_file(truncated, "keras")


def test_every_missing_unexpected_and_misshapen_key_is_listed(torch, resnet18_pth, tmp_path):
    state = torch.load(resnet18_pth[0], weights_only=True)
    del state["layer1.0.bn1.running_var"], state["layer4.1.conv2.weight"]
    state["layer1.0.extra.weight"] = torch.zeros(3)
    state["projection.bias"] = torch.zeros(5)
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    code, stderr = run_cli(tmp_path, "--source=torchvision", f"--input={path}", "--output=out")
    assert code == 1 and "Traceback" not in stderr
    for line in [
        "missing: layer1.0.bn1.running_var (shape (64,))",
        "missing: layer4.1.conv2.weight (shape (512, 512, 3, 3))",
        "unexpected: layer1.0.extra.weight (shape (3,))",
        "unexpected: projection.bias (shape (5,))",
        "wrong shape: layer2.0.downsample.0.weight is (128, 64, 3, 3), expected (128, 64, 1, 1)",
    ]:
        assert line in stderr
    assert "5 problem(s)" in stderr and "What to do" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pth"]


def test_hash_in_torch_hub_file_name_is_checked(resnet18_pth, tmp_path):
    renamed = tmp_path / "resnet18-0123abcd.pth"  # torchvision names: sha256 prefix
    renamed.write_bytes(resnet18_pth[0].read_bytes())
    with pytest.raises(pretrained.ConversionError, match="does not start with 0123abcd"):
        convert.convert_file(renamed, "torchvision")


def test_existing_output_is_not_touched(resnet18_pth, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(pretrained.ConversionError, match="exists"):
        pretrained.save_converted(convert.convert_file(resnet18_pth[0], "torchvision"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture(scope="module")
def resnet18_dir(resnet18_pth, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "r18"
    return pretrained.save_converted(convert.convert_file(resnet18_pth[0], "torchvision"), out)


def test_load_pretrained_refuses_another_architecture(resnet18_dir):
    with pytest.raises(pretrained.ConversionError, match=r"create_model\('resnet18', 'v1.5'"):
        pretrained.load_pretrained(abstract_model("resnet50"), resnet18_dir)


def test_load_pretrained_head_only_when_asked_and_shapes_match(resnet18_dir):
    model = abstract_model("resnet18", num_classes=2)
    pretrained.load_pretrained(model, resnet18_dir)
    assert isinstance(model.backbone.stem_conv.kernel.get_value(), jax.Array)
    assert isinstance(model.head.dense.kernel.get_value(), jax.ShapeDtypeStruct)  # left alone
    wrong_head = r"wrong shape: dense/kernel is \(512, 1000\), expected \(512, 2\)"
    with pytest.raises(pretrained.ConversionError, match=wrong_head):
        pretrained.load_pretrained(model, resnet18_dir, load_head=True)


@pytest.mark.parametrize("mode", ["torch", "caffe", "tf"])
def test_trainer_normalisation_matches_the_weights_preprocessing(mode):
    """`data.normalization='auto'` picks a named normaliser; it must equal the file's own preprocessing."""
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    named = normalization.make_normalizer(normalization.normalization_for_preprocessing(mode))(images)
    np.testing.assert_allclose(
        named, pretrained.preprocess(images, normalization.PREPROCESSING[mode]), rtol=1e-5, atol=1e-4
    )
