"""ERNet (recipe D): the ResNet's function at step 0 from converted ResNet weights, live ER layers,
the same function as the PyTorch reference (scripts/benchmarking/torch_ernet.py), its parameter
count, and recipe D from ImageNet weights by name as the README writes it."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_config
from flax import nnx
from test_convert import abstract_model, assert_matches, calibrate_torch, torchvision_file

from bcjax import components, config_checks, convert, pretrained, published_weights, weight_hub
from bcjax.converters import resnet as resnet_converter
from bcjax.models import create_model, ernet, resnet, summary
from configs import recipe_d

REPO = Path(__file__).parents[1]
sys.path.append(str(REPO / "scripts"))  # the scripts import their package as `benchmarking`
IMAGES = np.random.default_rng(3).standard_normal((2, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is the reference ERNet and writes the .pth")
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="module")
def resnet18_pth(torch, tmp_path_factory):
    """A random-weight torchvision resnet18 .pth (BN statistics calibrated)."""
    return torchvision_file(torch, tmp_path_factory.mktemp("resnet18"), "resnet18", IMAGES)[0]


@pytest.fixture(scope="module")
def resnet18_dir(resnet18_pth):
    return pretrained.save_converted(
        convert.convert_file(resnet18_pth, "torchvision"), resnet18_pth.parent / "converted"
    )


def _abstract(arch: str, **options):
    """A 1000-class Classifier without initial values (loading fills it)."""
    return nnx.eval_shape(lambda: create_model(arch, None, "linear", 1000, rngs=nnx.Rngs(0), backbone_kwargs=options))


def _config(arch: str, init_from: str, **backbone_kwargs):
    config = tiny_config.get_config("/nowhere")
    config.model.arch, config.model.init_from = arch, init_from
    config.model.backbone_kwargs.update(backbone_kwargs)
    return config


@pytest.mark.parametrize("newest_map", ernet.NEWEST_MAPS)
def test_init_from_a_converted_resnet_computes_the_resnet_at_step_0(resnet18_dir, newest_map):
    """`model.init_from` fills the ResNet part; the ER layers keep their init, so ernet18 gives
    resnet18's logits (same head) in eval mode: bit for bit with "identity", to rounding with "normalized"."""
    resnet, _ = components.build_model(_config("resnet18", str(resnet18_dir)))
    model, meta = components.build_model(_config("ernet18", str(resnet18_dir), newest_map=newest_map))
    assert meta["architecture"] == "resnet18"
    nnx.update(model.head, nnx.state(resnet.head))
    resnet.eval(), model.eval()
    x = jnp.asarray(IMAGES[:, :32, :32])
    expected, logits = np.asarray(resnet(x)), np.asarray(model(x))
    scale = np.abs(expected).max()
    assert scale > 0.1
    print(f"\n{newest_map}: max|logit diff| {np.abs(logits - expected).max():.1e} (max|logit| {scale:.2f})")
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6 * scale)


def test_weights_of_another_depth_are_refused_naming_the_fit(resnet18_dir):
    with pytest.raises(pretrained.ConversionError, match=r"initialised from resnet50.*create_model\('ernet18', 'v1.5'"):
        pretrained.load_pretrained(abstract_model("ernet50"), resnet18_dir)


def test_convert_arch_of_an_ernet_means_its_resnet(resnet18_pth):
    """`python -m bcjax.convert --arch=ernet18` converts the ResNet-18 an ernet18 loads; another depth is refused."""
    assert convert.convert_file(resnet18_pth, "torchvision", "ernet18").metadata["architecture"] == "resnet18"
    with pytest.raises(pretrained.ConversionError, match="holds resnet18 weights .*, not resnet50"):
        convert.convert_file(resnet18_pth, "torchvision", "ernet50")


def test_config_check_takes_the_resnet_of_the_same_depth_by_name(monkeypatch):
    monkeypatch.setenv(weight_hub.MIRROR_ENV, "http://127.0.0.1:9")  # would fail, were it used
    for depth in recipe_d.DEPTHS:
        config = recipe_d.get_config(f"depth={depth}")
        config.model.init_from = f"torchvision:resnet{depth}"
        assert config_checks.config_problems(config, 8) == [], depth
    config = recipe_d.get_config()
    config.model.init_from = "torchvision:resnet18"
    problems = config_checks.config_problems(config, 8)
    assert len(problems) == 1, problems
    assert "converts to resnet18 in layout v1.5: pass --config.model.arch=ernet18" in problems[0]
    assert "or keep ernet50 with --config.model.init_from=torchvision:resnet50 or" in problems[0]


def test_config_check_names_the_er_options_values():
    config = recipe_d.get_config()
    config.model.backbone_kwargs.newest_map = "normalised"
    assert config_checks.config_problems(config, 8) == [
        "config.model.backbone_kwargs.newest_map='normalised': must be one of 'identity', 'normalized'"
    ]


def test_er_parameters_are_trained():
    """At step 0 the older maps' weights w get gradients (their BN's do not: w = 0); after one Adam
    step every ER parameter gets one."""
    model = ernet.ERNet("ernet18", rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return grads

    def er_grads(grads):
        return {path: np.abs(g).max() for path, g in nnx.to_flat_state(grads["enhanced"])}

    first, second = er_grads(step(model, optimizer)), er_grads(step(model, optimizer))
    assert len(first) == 3 * 4  # 4 stages of 2 blocks: one ER layer (w, BN scale, bias) in each second block
    for path, value in first.items():
        assert (value > 0) == (path[-1] == "weight"), (path, value)
    assert all(value > 0 for value in second.values()), second


@pytest.mark.parametrize(
    "arch, options", [("ernet50", {}), ("ernet34", {"newest_map": "normalized", "er_input": "pre"})]
)
def test_same_function_as_the_pytorch_ernet(torch, arch, options):
    """Random ER weights and BN statistics in torch; the ResNet part through the ResNet converter, the
    ER layers copied by name: eval-mode logits agree."""
    from benchmarking.torch_ernet import ERNet as TorchERNet

    torch.manual_seed(0)
    reference = TorchERNet(arch, **options)
    gen = torch.Generator().manual_seed(1)
    for name, value in reference.enhanced.named_parameters():
        if name.endswith(".weight") and ".bn." not in name:
            value.data = torch.rand(value.shape, generator=gen) * 0.4 + 0.1
    calibrate_torch(torch, reference, size=IMAGES.shape[1])
    with torch.no_grad():
        expected = reference(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2))).numpy()
    tensors = {k: v.numpy() for k, v in reference.state_dict().items()}
    resnet_part = {k: v for k, v in tensors.items() if not k.startswith("enhanced.")}
    model = _abstract(arch, **options)
    converted = resnet_converter.convert(resnet_part, "torchvision", ernet.ARCHITECTURES[arch], "torch ERNet")
    pretrained.apply_converted(model, converted, load_head=True)
    _copy_er_layers(model.backbone, tensors)
    model.eval()
    with jax.default_matmul_precision("float32"):
        logits = np.asarray(model(jnp.asarray(IMAGES)))
    assert_matches(f"{arch} {options} vs torch_ernet", (logits, {}), (expected, {}))


_TORCH_LEAVES = {"weight": ("weight",), "bn.weight": ("bn", "scale"), "bn.bias": ("bn", "bias")}
_TORCH_LEAVES |= {"bn.running_mean": ("bn", "mean"), "bn.running_var": ("bn", "var")}


def _copy_er_layers(backbone: ernet.ERNet, tensors) -> None:
    variables = dict(nnx.to_flat_state(nnx.state(backbone.enhanced, nnx.Any(nnx.Param, nnx.BatchStat))))
    copied = 0
    for key, value in tensors.items():
        if m := re.fullmatch(r"enhanced\.(\d+)\.(\d+)\.(\d+)\.(.+)", key):
            if m[4] != "bn.num_batches_tracked":
                variables[(int(m[1]), int(m[2]), int(m[3]), *_TORCH_LEAVES[m[4]])].set_value(jnp.asarray(value))
                copied += 1
    assert copied == len(variables) > 0


@pytest.mark.parametrize(
    "arch, newest_map, resnet_parameters",
    [("ernet18", "identity", 11_689_512), ("ernet18", "normalized", 11_689_512), ("ernet50", "normalized", 25_557_032)],
)
def test_extra_parameters_are_three_per_channel_of_each_er_layer(arch, newest_map, resnet_parameters):
    """3C (w, BN scale, bias) per (block l, map i): i < l by default, i <= l with "normalized"; the rest is
    torchvision's ResNet (README's summary line checks ernet50's default)."""
    kind, depths = resnet.ARCHITECTURES[ernet.ARCHITECTURES[arch]]
    widths = [w * (1 if kind == "basic" else 4) for w in resnet.STAGE_WIDTHS]
    pairs = (lambda n: n * (n + 1) // 2) if newest_map == "normalized" else (lambda n: n * (n - 1) // 2)
    counts = summary.parameter_counts(_abstract(arch, newest_map=newest_map))
    assert counts["enhanced"] == sum(3 * c * pairs(n) for c, n in zip(widths, depths))
    assert sum(counts.values()) - counts["enhanced"] == resnet_parameters


def _readme_commands(program: str) -> list[list[str]]:
    section = (REPO / "README.md").read_text().split("### ERNet")[1].split("\n### ")[0]
    block = section.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.startswith(f"python -m {program}")]


def test_readme_summary_command(capsys):
    (command,) = _readme_commands("bcjax.models.summary")
    assert summary.main(command[3:]) == 0
    out = capsys.readouterr().out
    assert "enhanced        76,032" in out and "total       25,633,064" in out


def test_readme_recipe_d_commands_pass_the_config_check():
    """Each README training line's config and flags (the ERNet options included) check clean."""
    commands = _readme_commands("bcjax.main")
    assert len(commands) >= 2
    for command in commands:
        flags = dict(arg.removeprefix("--").split("=", 1) for arg in command[3:])
        config = recipe_d.get_config(flags.pop("config").partition(":")[2] or None)
        for name, value in flags.items():
            if name.startswith("config."):
                *groups, leaf = name.split(".")[1:]
                holder = config
                for group in groups:
                    holder = holder[group]
                holder[leaf] = value
        assert config_checks.config_problems(config, 8) == [], command


@pytest.mark.slow
def test_readme_recipe_d_ernet18_line_trains_from_the_named_weights(resnet18_dir, prepared_data_dir, tmp_path):
    """The README's ERNet-18 line as written (in a fresh process, from a folder with `configs/`), on the
    tests' dataset at 32x32 for 2 steps of one fold: `torchvision:resnet18` comes from the weights cache,
    where a conversion of our file stands in for the published one."""
    (command,) = [c for c in _readme_commands("bcjax.main") if "--config.model.init_from=torchvision:resnet18" in c]
    cache = tmp_path / "cache"
    entry = published_weights.PUBLISHED["torchvision:resnet18"]
    target = cache / "converted" / f"{entry.source}-{entry.name}-{entry.version}"
    shutil.copytree(resnet18_dir, target)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    overrides = [
        "--config.data.dataset=breakhis/custom",
        f"--config.data.data_dir={prepared_data_dir}",
        "--config.data.height=32",
        "--config.data.width=32",
        "--config.data.all_folds=False",
        "--config.total_steps=2",
        "--config.steps_per_epoch=2",
        "--config.batch_size=8",
        "--config.eval_batch_size=16",
        "--config.evaluation.bootstrap_samples=20",
    ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", weight_hub.CACHE_ENV: str(cache), weight_hub.MIRROR_ENV: "http://127.0.0.1:9"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, *command[1:], *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workdir = tmp_path / next(arg for arg in command if arg.startswith("--workdir=")).removeprefix("--workdir=")
    assert (workdir / "eval" / "test" / "report.json").is_file()
