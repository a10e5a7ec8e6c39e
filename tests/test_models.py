"""The model family: sizes, layouts, heads, dtypes, train/eval, summary CLI, purity.
Parity with torchvision/timm/Keras outputs is in test_convert.py."""

import ast
import pathlib
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bcjax.models import MLPHead, create_model, summary

# Trainable parameters as torchvision and Keras report them (Keras' ResNet50 has 26,560
# more: the conv biases, which our v1 folds into the BN means).
PARAMETERS = {
    ("resnet18", "v1.5"): 11_689_512,
    ("resnet34", "v1.5"): 21_797_672,
    ("resnet50", "v1.5"): 25_557_032,
    ("resnet50", "v1"): 25_557_032,
    ("resnet101", "v1.5"): 44_549_160,
    ("resnet152", "v1.5"): 60_192_808,
    ("resnet50", "v2"): 25_568_360,  # keras.applications.ResNet50V2 trainable weights
}


def abstract(arch, layout, head="linear", num_classes=1000, **kwargs):
    return nnx.eval_shape(lambda: create_model(arch, layout, head, num_classes, rngs=nnx.Rngs(0), **kwargs))


@pytest.mark.parametrize("arch,layout", PARAMETERS)
def test_parameter_counts(arch, layout):
    assert sum(summary.parameter_counts(abstract(arch, layout)).values()) == PARAMETERS[arch, layout]


# torchvision's counts: convs, the ImageNet fc layers and the 1000-class classifier.
VGG_PARAMETERS = {"vgg16": 138_357_544, "vgg19": 143_667_240, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248}


@pytest.mark.parametrize("arch", VGG_PARAMETERS)
def test_vgg_parameter_counts(arch):
    model = abstract(arch, None, backbone_kwargs={"fc_layers": True})
    assert sum(summary.parameter_counts(model).values()) == VGG_PARAMETERS[arch]


def test_vgg_without_fc_layers_has_the_keras_notop_parameters():
    counts = summary.parameter_counts(abstract("vgg16", "keras"))
    assert sum(counts.values()) - counts["head"] == 14_714_688  # keras.applications.VGG16(include_top=False)


@pytest.mark.parametrize("fc_layers, features", [(False, 512), (True, 4096)])
def test_vgg_feature_map_is_the_last_max_pool(fc_layers, features):
    """H/32 x W/32 (floored at each pool) at any input size; the fc layers' adaptive pool takes any map."""
    model = abstract("vgg16_bn", "torch", num_classes=3, backbone_kwargs={"fc_layers": fc_layers})
    fmap, pooled, logits = nnx.eval_shape(
        lambda m, x: (m.feature_map(x), m.backbone.pool(m.feature_map(x)), m(x)), model, jnp.zeros((1, 70, 46, 3))
    )
    assert (fmap.shape, pooled.shape, logits.shape) == ((1, 2, 1, 512), (1, features), (1, 3))


def test_readme_vgg_summary_command(capsys):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python -m bcjax.models.summary vgg16"))
    assert summary.main(shlex.split(command)[3:]) == 0
    out = capsys.readouterr().out
    assert "fc1        102,764,544" in out and "total      138,357,544" in out


@pytest.mark.parametrize(
    "layout,stage_sizes", [("v1.5", (8, 8, 4, 2, 1)), ("v1", (8, 8, 4, 2, 1)), ("v2", (8, 4, 2, 1, 1))]
)
def test_stage_shapes(layout, stage_sizes):
    """v2 strides at the end of stages 1-3, the others at the start of stages 2-4."""
    model = abstract("resnet50", layout)
    features, stages = nnx.eval_shape(lambda m: m.backbone(jnp.zeros((2, 32, 32, 3)), return_stages=True), model)
    stages = [stages[name] for name in ("stem", "stage1", "stage2", "stage3", "stage4")]
    assert features.shape == (2, 2048)
    assert [s.shape[1] for s in stages] == list(stage_sizes)
    assert [s.shape[-1] for s in stages] == [64, 256, 512, 1024, 2048]


@pytest.mark.parametrize("layout", ["v1.5", "v2"])
def test_odd_input_size(layout):
    model = abstract("resnet18", layout, num_classes=3)
    assert nnx.eval_shape(lambda m: m(jnp.zeros((1, 45, 37, 3))), model).shape == (1, 3)


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
    model = abstract("resnet18", "v1.5", "recipe_a", 1, dtype=jnp.bfloat16)
    stages, logits = nnx.eval_shape(
        lambda m, x: (m.backbone(x, return_stages=True)[1], m(x)), model, jnp.ones((2, 32, 32, 3))
    )
    assert stages["stage4"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    variables = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    assert {v.dtype for _, v in variables} == {jnp.dtype(jnp.float32)}


def test_train_updates_batch_stats_and_eval_does_not():
    model = create_model("resnet18", "v1.5", "linear", 1, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda m, x: m(x))  # one compile per mode, cheaper than op by op
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3)) + 3.0
    forward(model, x)
    mean = np.asarray(model.backbone.stem_bn.mean[...])
    assert np.abs(mean).max() > 0  # momentum 0.9: moved by 10% of the batch mean
    model.eval()
    forward(model, x)
    np.testing.assert_array_equal(model.backbone.stem_bn.mean[...], mean)


def test_recipe_a_head_order_and_dropout_modes():
    model = create_model("resnet18", "v1.5", "recipe_a", 1, rngs=nnx.Rngs(params=0, dropout=1))
    head = model.head
    assert [d.kernel.shape for d in head.hidden] == [(512, 1024)]
    assert [d.rate for d in head.dropouts] == [0.4] and head.input_dropout.rate == 0
    assert head.dropout_first and head.out.kernel.shape == (1024, 1)
    features = jnp.ones((4, 512))
    assert not np.allclose(head(features), head(features))  # training: fresh dropout masks
    model.eval()
    np.testing.assert_array_equal(head(features), head(features))


@pytest.mark.parametrize(
    "head, layers",
    [  # recipe C's stacks as MODELS.md section 2 gives them: (dropout before, Dense width), then Dense 1
        ("recipe_c_vgg16", [(0.4, 384), (0.3, 64), (0.2, 1)]),
        ("recipe_c_mobilenetv3", [(0.4, 256), (0.3, 32), (0.2, 1)]),
        ("recipe_c_resnet50v2", [(0.4, 256), (0.0, 32), (0.0, 32), (0.2, 1)]),
    ],
)
def test_recipe_c_heads_are_the_published_stacks(head, layers):
    model = abstract("resnet18", "v1.5", head, 1)
    h = model.head
    assert not h.dropout_first and h.activation == "relu"
    rates = [h.input_dropout.rate] + [d.rate for d in h.dropouts]
    widths = [d.kernel.shape[1] for d in h.hidden] + [h.out.kernel.shape[1]]
    assert list(zip(rates, widths)) == layers


def test_input_dropout_drops_the_pooled_features():
    def head(input_dropout):
        h = MLPHead(4, 1, hidden=(4,), input_dropout=input_dropout, rngs=nnx.Rngs(0))
        h.hidden[0].kernel[...] = jnp.eye(4)
        return h

    features = jnp.ones((2, 4))
    dropping = head(0.5)
    assert not np.allclose(dropping(features), dropping(features))
    kept = head(0.0)
    np.testing.assert_array_equal(kept(features), kept(features))
    with pytest.raises(ValueError, match="2 rates for 1 hidden layers"):
        MLPHead(4, 1, hidden=(4,), dropout=(0.1, 0.2), rngs=nnx.Rngs(0))


def test_mlp_head_is_configurable():
    model = abstract("resnet18", "v1.5", "mlp", 8, hidden=(256, 128), dropout=0.2, activation="gelu")
    assert [d.kernel.shape for d in model.head.hidden] == [(512, 256), (256, 128)]
    assert model.head.out.kernel.shape == (128, 8)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(arch="resnet20"), "unknown arch"),
        (dict(layout="v3"), "unknown layout"),
        (dict(head="svm"), "unknown head"),
        (dict(head="mlp", activation="swish2"), "unknown activation"),
        (dict(arch="vgg16_bn", layout="keras"), "Keras publishes no batch-norm VGG"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(**{"arch": "resnet18", "rngs": nnx.Rngs(0), **kwargs})


def test_summary_cli(capsys):
    assert summary.main(["resnet50"]) == 0
    out = capsys.readouterr().out
    assert "23,508,032" in out and "25,557,032" in out
    flops = float(out.split("padding excluded): ")[1].split(" GFLOPs")[0])
    assert 7.9 < flops < 8.2  # 4.09 GMACs dense, minus the products with padding zeros


def test_summary_help():
    result = subprocess.run([sys.executable, "-m", "bcjax.models.summary", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--layout" in result.stdout


def test_models_import_nothing_else_from_bcjax():
    """models/ stays pure: no data, training or I/O modules."""
    for path in pathlib.Path(summary.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            for name in names:
                assert not name.startswith("bcjax") or name.startswith("bcjax.models"), (path.name, name)


@pytest.mark.parametrize("size, stride", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_cpu_pointwise_conv_matches_the_convolution(size, stride):
    """1x1 convs are matrix products on CPUs (resnet.conv_general_dilated): same outputs and gradients."""
    from bcjax.models import resnet

    kernel = jax.random.normal(jax.random.key(0), (size, size, 8, 16))
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 8))
    pad = ((size // 2, size // 2),) * 2
    dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, (stride, stride), pad, dimension_numbers=dims)))

    jaxpr = str(jax.make_jaxpr(lambda x, k: loss(resnet.conv_general_dilated, x, k))(x, kernel))
    assert ("dot_general" in jaxpr) == (size == 1) and ("conv_general_dilated" in jaxpr) == (size != 1)
    mine = jax.value_and_grad(lambda x, k: loss(resnet.conv_general_dilated, x, k), argnums=(0, 1))(x, kernel)
    lax = jax.value_and_grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k), argnums=(0, 1))(x, kernel)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(lax)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "size, stride, padding", [(3, 1, "explicit"), (3, 2, "SAME"), (5, 2, "explicit"), (5, 1, "SAME")]
)
def test_cpu_depthwise_conv_matches_the_convolution(size, stride, padding):
    """Depthwise convs are sums of shifted products on CPUs (resnet.conv_general_dilated), with
    torchvision's symmetric and Keras' asymmetric ('SAME' at stride 2) padding: same outputs and gradients."""
    from bcjax.models import resnet

    kernel = jax.random.normal(jax.random.key(0), (size, size, 1, 8))
    x = jax.random.normal(jax.random.key(1), (2, 10, 9, 8))
    pad = ((size // 2, size // 2),) * 2 if padding == "explicit" else padding
    dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv, x, kernel):
        y = conv(x, kernel, (stride, stride), pad, dimension_numbers=dims, feature_group_count=8)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

    jaxpr = str(jax.make_jaxpr(lambda x, k: loss(resnet.conv_general_dilated, x, k))(x, kernel))
    assert "conv_general_dilated" not in jaxpr
    mine = jax.value_and_grad(lambda x, k: loss(resnet.conv_general_dilated, x, k), argnums=(0, 1))(x, kernel)
    lax = jax.value_and_grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k), argnums=(0, 1))(x, kernel)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(lax)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
