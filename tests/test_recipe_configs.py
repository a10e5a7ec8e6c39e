"""Every recipe config and variant passes the config check, and each distinct model, loss and split of
them trains a few steps and evaluates on synthetic data through `train_and_evaluate`.

The runs shrink only what a CPU test cannot afford (image size, steps, batch, folds) and load no
ImageNet weights (nothing can be downloaded here); architecture, layout, head, loss, optimizer,
split protocol, normalisation, stain normalisation and augmentation stay the recipe's.
"""

import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags
from trainer_runs import REPO, records, report

from bcjax import train
from bcjax.config_checks import check_config

# Every variant a config docstring or the README shows.
VARIANTS = [
    "binary",
    "binary:patient",
    "multiclass",
    "multiclass:balanced",
    "multiclass:patient",
    "multiclass:arch=vgg19",
    "multiclass:task=label",
    "multiclass:arch=vgg19,task=label,patient",
    "recipe_c:model=vgg16",
    "recipe_c:model=mobilenet_v3",
    "recipe_c:model=resnet50v2",
    "recipe_c:model=vgg16,patient",
    "recipe_d",
    "recipe_d:depth=18",
    "recipe_d:depth=34",
    "recipe_d:depth=101",
    "recipe_d:patient",
]
# One run per config file, together covering every family, head, loss, split protocol and input
# treatment the recipes add (configs/binary.py and configs/multiclass.py as published train in
# tests/test_train.py::test_recipe_configs_run_and_report_their_leakage; ResNet-50 v2 in other tests).
TRAINED = [
    "multiclass:arch=vgg19,task=label",  # VGG19 with the ImageNet fc layers, z-score, softmax, image_random
    "recipe_c:model=mobilenet_v3",  # frozen base, recipe C head, BCE, Adam, rotation + brightness
    "recipe_d:depth=18",  # ERNet, Macenko, zoom + translation + crops, image_kfold
]


def recipe(spec: str):
    name, _, arg = spec.partition(":")
    return importlib.import_module(f"configs.{name}").get_config(arg or None)


@pytest.mark.parametrize("spec", VARIANTS)
def test_every_variant_passes_the_config_check(spec):
    check_config(recipe(spec), num_devices=8)


def readme_recipe_commands() -> list[str]:
    """The commands of README's "The four papers' recipes" block."""
    section = pathlib.Path(REPO, "README.md").read_text().split("### The four papers' recipes", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def parse_main_flags(command: str):
    """The config `python -m bcjax.main` builds from `command`'s flags (bcjax.main's own flag types)."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "bcjax.main"], command
    argv = ["bcjax.main", *argv[3:]]
    values = flags.FlagValues()
    # ml_collections finds the --config.* overrides in sys.argv, or in `sys_argv` when given.
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    return values.config


@pytest.mark.parametrize("command", readme_recipe_commands())
def test_readme_recipe_commands_pass_the_config_check(command, monkeypatch):
    monkeypatch.chdir(REPO)
    check_config(parse_main_flags(command), num_devices=8)


def test_readme_recipe_block_has_every_config():
    configs = {re.search(r"--config=configs/(\w+)\.py", c).group(1) for c in readme_recipe_commands()}
    assert configs == {"binary", "multiclass", "recipe_c", "recipe_d"}


@pytest.mark.slow
@pytest.mark.parametrize("spec", TRAINED)
def test_recipe_trains_and_evaluates_on_synthetic_data(spec, prepared_data_dir, tmp_path):
    # A process per run, as a user's: in-process, every model's compiled programs would stay in memory.
    # One device: VGG19's fc layers (123M parameters with Adam's moments) replicated on 8 would need 16 GB.
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    command = [sys.executable, __file__, spec, str(prepared_data_dir), str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [record["step"] for record in records(tmp_path) if "train/loss" in record] == [1, 2]
    assert 0 <= report(tmp_path)["overall"]["accuracy"] <= 1


def train_shrunk(spec: str, data_dir: str, workdir: str) -> None:
    """Recipe `spec` for two steps at 32x32 on the prepared synthetic data, without ImageNet weights."""
    config = recipe(spec)
    data = config.data
    data.data_dir, data.dataset = data_dir, "breakhis/custom"
    data.height = data.width = 32
    data.all_folds = False
    config.model.init_from = None
    config.batch_size, config.eval_batch_size = 8, 16
    config.total_steps, config.steps_per_epoch, config.log_every_steps = 2, 1, 1
    config.evaluation.bootstrap_samples = 10
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    train_shrunk(*sys.argv[1:])
