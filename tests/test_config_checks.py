"""Config checks: a bad config field or flag ends in one message naming it, before any work starts."""

import os
import subprocess
import sys

import ml_collections
import pytest
import tiny_config

from bcjax import config_checks, main, train
from configs import binary, default, demo, multiclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8  # conftest's forced CPU devices, and the subprocesses'


def _config(**changes) -> ml_collections.ConfigDict:
    """configs/default.py with `changes` ('optimizer__name' for optimizer.name) applied."""
    config = default.get_config()
    for key, value in changes.items():
        *groups, name = key.split("__")
        holder = config
        for group in groups:
            holder = holder[group]
        holder[name] = value
    return config


def _problems(config, devices=DEVICES) -> list[str]:
    return config_checks.config_problems(config, devices)


@pytest.mark.parametrize(
    "name, config",
    [
        ("default", default.get_config()),
        ("binary", binary.get_config()),
        ("binary:patient", binary.get_config("patient")),
        ("multiclass", multiclass.get_config()),
        ("multiclass:balanced", multiclass.get_config("balanced")),
        ("multiclass:patient", multiclass.get_config("patient")),
        ("multiclass:balanced,patient", multiclass.get_config("balanced,patient")),
        ("demo", demo.get_config()),
        ("tiny", tiny_config.get_config("/nowhere")),
    ],
)
def test_recipe_configs_pass(name, config):
    assert _problems(config) == []
    assert _problems(config, devices=1) == []


# (field changes, the field the message must name, a phrase of what is allowed)
BAD_FIELDS = [
    (dict(batch_size=-4), "batch_size=-4", "positive multiple of 8"),
    (dict(batch_size=12), "batch_size=12", "positive multiple of 8"),
    (dict(eval_batch_size=0), "eval_batch_size=0", "positive multiple of 8"),
    (dict(seed=-1), "seed=-1", "integer >= 0"),
    (dict(num_epochs=-1), "num_epochs=-1", "integer >= 0"),
    (dict(steps_per_epoch=-1), "steps_per_epoch=-1", "None or an integer >= 0"),
    (dict(total_steps=-2), "total_steps=-2", "None or an integer >= 0"),
    (dict(log_every_steps=-1), "log_every_steps=-1", "integer >= 0"),
    (dict(eval_every_steps=-1), "eval_every_steps=-1", "integer >= 0"),
    (dict(checkpoint_every_steps=-5), "checkpoint_every_steps=-5", "integer >= 0"),
    (dict(keep_checkpoints=0), "keep_checkpoints=0", "integer >= 1"),
    (dict(best_metric="validation/loss"), "best_metric='validation/loss'", "'validation/accuracy'"),
    (dict(data__dataset="mnist"), "data.dataset='mnist'", "'breakhis/archive'"),
    (dict(data__data_dir=""), "data.data_dir=''", "a folder"),
    (dict(data__split="kfold"), "data.split='kfold'", "'patient_kfold'"),
    (dict(data__split_kwargs=ml_collections.ConfigDict({"k": 1})), "data.split_kwargs.k=1", "integer >= 2"),
    (dict(data__split_kwargs=ml_collections.ConfigDict({"fold": 5})), "data.split_kwargs.fold=5", "0..4"),
    (dict(data__split_kwargs=ml_collections.ConfigDict({"val_fraction": 1.0})), "val_fraction=1.0", "[0, 1)"),
    (dict(data__split_kwargs=ml_collections.ConfigDict({"kk": 5})), "data.split_kwargs.kk", "k, fold, val_fraction"),
    (
        dict(data__split="image_random", data__split_kwargs=ml_collections.ConfigDict({"test_fraction": 0.0})),
        "data.split_kwargs.test_fraction=0.0",
        "(0, 1)",
    ),
    (
        dict(data__split="patient_holdout", data__split_kwargs=ml_collections.ConfigDict({"seed": -3})),
        "data.split_kwargs.seed=-3",
        "integer >= 0",
    ),
    (
        dict(data__split_kwargs=ml_collections.ConfigDict({"magnification": "40X"})),
        "data.split_kwargs.magnification",
        "config.data.magnification",
    ),
    (
        dict(data__split="official_folds", data__split_kwargs=ml_collections.ConfigDict({"fold": 1})),
        "data.split_kwargs",
        "folds_csv",
    ),
    (
        dict(
            data__split="official_folds",
            data__split_kwargs=ml_collections.ConfigDict({"fold": 1, "folds_csv": "/no/Folds.csv"}),
        ),
        "data.split_kwargs.folds_csv='/no/Folds.csv'",
        "no such file",
    ),
    (
        dict(data__all_folds=True, data__split="patient_holdout", data__split_kwargs=ml_collections.ConfigDict()),
        "data.all_folds=True",
        "'patient_kfold'",
    ),
    (dict(data__magnification="50X"), "data.magnification='50X'", "'40X'"),
    (
        dict(data__split="recipe_a", data__split_kwargs=ml_collections.ConfigDict(), data__magnification="40X"),
        "data.magnification='40X'",
        "recipe_a",
    ),
    (
        dict(data__split="recipe_a", data__split_kwargs=ml_collections.ConfigDict({"k": 5})),
        "data.split_kwargs.k=5",
        "'recipe_a' takes only val_fraction, seed",
    ),
    (dict(data__height=0), "data.height=0", "integer >= 1"),
    (dict(data__width=-1), "data.width=-1", "integer >= 1"),
    (dict(data__target="type"), "data.target='type'", "'tumor_type'"),
    (dict(data__normalization="imagnet"), "data.normalization='imagnet'", "'imagenet'"),
    (dict(data__stain_normalization="reinhard"), "data.stain_normalization='reinhard'", "'macenko'"),
    (dict(data__decode_threads=0), "data.decode_threads=0", "integer >= 1"),
    (dict(data__device_resident="yes"), "data.device_resident='yes'", "'auto', True or False"),
    (dict(data__device_resident=1), "data.device_resident=1", "'auto', True or False"),
    (dict(data__augment__crop_scale=(0.5,)), "data.augment.crop_scale=(0.5,)", "0 < low <= high <= 1"),
    (dict(data__augment__crop_scale=(1.0, 0.5)), "data.augment.crop_scale=(1.0, 0.5)", "0 < low <= high <= 1"),
    (dict(data__augment__crop_ratio=(0.0, 1.0)), "data.augment.crop_ratio=(0.0, 1.0)", "0 < low <= high"),
    (dict(data__augment__brightness=-0.1), "data.augment.brightness=-0.1", "number >= 0"),
    (dict(data__augment__contrast=-1.0), "data.augment.contrast=-1.0", "number >= 0"),
    (dict(data__augment__hed_sigma=-0.5), "data.augment.hed_sigma=-0.5", "number >= 0"),
    (dict(data__augment__rotation=270.0), "data.augment.rotation=270.0", "[0, 180]"),
    (dict(data__augment__rotation=-72.0), "data.augment.rotation=-72.0", "[0, 180]"),
    (dict(data__augment__zoom=1.0), "data.augment.zoom=1.0", "[0, 1)"),
    (dict(data__augment__translation=1.5), "data.augment.translation=1.5", "[0, 1]"),
    (dict(data__augment__fill_mode="wrap"), "data.augment.fill_mode='wrap'", "'reflect', 'nearest', 'constant'"),
    (dict(data__synthetic__enabled=True, data__synthetic__patients=0), "data.synthetic.patients=0", "'full'"),
    (dict(data__synthetic__enabled=True, data__synthetic__image_width=0), "synthetic.image_width=0", ">= 1"),
    (dict(model__arch="resnet51"), "model.arch='resnet51'", "'resnet50'"),
    (dict(model__layout="v3"), "model.layout='v3'", "'v1.5'"),
    (dict(model__head="mlp2"), "model.head='mlp2'", "'mlp'"),
    (
        dict(model__head="mlp", model__head_kwargs=ml_collections.ConfigDict({"hiden": (8,)})),
        "model.head_kwargs.hiden",
        "hidden",
    ),
    (
        dict(model__head="linear", model__head_kwargs=ml_collections.ConfigDict({"hidden": (8,)})),
        "model.head_kwargs.hidden",
        "takes none",
    ),
    (
        dict(model__head="mlp", model__head_kwargs=ml_collections.ConfigDict({"activation": "swish"})),
        "model.head_kwargs.activation='swish'",
        "'relu'",
    ),
    (
        dict(model__head="mlp", model__head_kwargs=ml_collections.ConfigDict({"dropout": (0.3, 1.2)})),
        "model.head_kwargs.dropout=(0.3, 1.2)",
        "one such rate per hidden layer",
    ),
    (
        dict(model__head="recipe_c_vgg16", model__head_kwargs=ml_collections.ConfigDict({"hidden": (8,)})),
        "model.head_kwargs.hidden",
        "takes none",
    ),
    (dict(model__dtype="int8"), "model.dtype='int8'", "'auto'"),
    (dict(model__init_from="/no/weights"), "model.init_from='/no/weights'", "python -m bcjax.convert"),
    (dict(loss__name="ce"), "loss.name='ce'", "'softmax_ce'"),
    (dict(loss__name="sigmoid_bce", data__target="tumor_type"), "loss.name='sigmoid_bce'", "two classes"),
    (dict(loss__label_smoothing=1.0), "loss.label_smoothing=1.0", "[0, 1)"),
    (dict(loss__class_weights=(1.0,)), "loss.class_weights=(1.0,)", "2 numbers"),
    (dict(optimizer__name="adamx"), "optimizer.name='adamx'", "'rmsprop'"),
    (dict(optimizer__learning_rate=0.0), "optimizer.learning_rate=0.0", "number > 0"),
    (dict(optimizer__schedule="linear"), "optimizer.schedule='linear'", "'warmup_cosine'"),
    (dict(optimizer__warmup_steps=10), "optimizer.warmup_steps=10", "warmup_"),
    (dict(optimizer__schedule="step"), "optimizer.decay_steps=0", "'step'"),
    (dict(optimizer__end_learning_rate_factor=2.0), "end_learning_rate_factor=2.0", "[0, 1]"),
    (dict(optimizer__decay_rate=0.0), "optimizer.decay_rate=0.0", "number > 0"),
    (dict(optimizer__weight_decay=-1e-4), "optimizer.weight_decay=-0.0001", "number >= 0"),
    (dict(optimizer__weight_decay_mask="none"), "optimizer.weight_decay_mask='none'", "'kernels'"),
    (dict(optimizer__grad_clip_norm=-1.0), "optimizer.grad_clip_norm=-1.0", "number >= 0"),
    (dict(optimizer__b1=1.0), "optimizer.b1=1.0", "[0, 1)"),
    (dict(optimizer__b2=-0.1), "optimizer.b2=-0.1", "[0, 1)"),
    (dict(optimizer__eps=-1e-7), "optimizer.eps=-1e-07", "number >= 0"),
    (dict(optimizer__decay=1.0), "optimizer.decay=1.0", "[0, 1)"),
    (dict(optimizer__momentum=-0.5), "optimizer.momentum=-0.5", "[0, 1)"),
    (dict(optimizer__freeze_backbone_steps=-2), "optimizer.freeze_backbone_steps=-2", "or -1 for the whole run"),
    (dict(optimizer__backbone_lr_multiplier=-1.0), "backbone_lr_multiplier=-1.0", "number >= 0"),
    (dict(optimizer__head_lr_multiplier=-2.0), "head_lr_multiplier=-2.0", "number >= 0"),
    (dict(optimizer__kwargs=ml_collections.ConfigDict({"foo": 1})), "optimizer.kwargs.foo", "optax.adam"),
    (dict(evaluation__splits=("tset",)), "evaluation.splits=('tset',)", "'validation', 'test'"),
    (dict(evaluation__bootstrap_samples=-1), "evaluation.bootstrap_samples=-1", "integer >= 0"),
    (  # a Python config may replace a group with fields of other types
        dict(evaluation=ml_collections.ConfigDict({"splits": ("test",), "bootstrap_samples": 10, "use_best": 0})),
        "evaluation.use_best=0",
        "True or False",
    ),
]


@pytest.mark.parametrize("changes, named, allowed", BAD_FIELDS, ids=[named for _, named, _ in BAD_FIELDS])
def test_each_bad_field_is_named_with_what_is_allowed(changes, named, allowed):
    problems = _problems(_config(**changes))
    assert len(problems) == 1, problems
    assert problems[0].startswith("config.") and named in problems[0] and allowed in problems[0], problems[0]


def test_any_optax_optimizer_taking_a_learning_rate_passes():
    assert _problems(_config(optimizer__name="lamb", optimizer__kwargs=ml_collections.ConfigDict({"b1": 0.8}))) == []
    assert "optimizer.name='softmax_cross_entropy'" in _problems(_config(optimizer__name="softmax_cross_entropy"))[0]


def test_every_failure_in_one_message():
    config = _config(batch_size=-4, loss__name="ce", data__magnification="50X")
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.check_config(config, DEVICES)
    lines = str(error.value).splitlines()
    assert lines[0] == "3 config fields cannot run:"
    assert [line.split("=")[0].strip() for line in lines[1:]] == [
        "config.batch_size",
        "config.data.magnification",
        "config.loss.name",
    ]
    with pytest.raises(config_checks.ConfigError, match=r"^config.batch_size=-4: must be a positive multiple of 8"):
        config_checks.check_config(_config(batch_size=-4), DEVICES)
    assert config_checks.ConfigError in main.user_errors()


def test_training_checks_the_config_before_writing_anything(tmp_path):
    config = tiny_config.get_config(str(tmp_path / "nothing"))
    config.batch_size = 3
    with pytest.raises(config_checks.ConfigError, match=r"config.batch_size=3: must be a positive multiple of 8"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the command line


def _main(workdir, *flags):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "bcjax.main", f"--workdir={workdir}", *flags]
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return process.returncode, process.stdout + process.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--config=configs/demo.py", "--config.optimizer.nmae=adam"],
            "error: --config.optimizer.nmae=adam: config.optimizer has no field 'nmae'; did you mean 'name'?",
        ),
        (
            ["--config=configs/demo.py", "--config.batch_size=abc"],
            "error: --config.batch_size=abc: config.batch_size takes an int "
            "(invalid literal for int() with base 10: 'abc')",
        ),
        (
            ["--config=configs/binary.py:pateint"],
            "error: --config=configs/binary.py:pateint: unknown config option 'pateint' in 'pateint'; "
            "options: patient (default False)",
        ),
        (
            ["--config=configs/demo.py", "--config.batch_size=-4"],
            "error: config.batch_size=-4: must be a positive multiple of 8, the number of devices",
        ),
    ],
    ids=["misspelt_field", "bad_type", "bad_variant", "bad_value"],
)
def test_command_line_errors_end_in_one_message(tmp_path, flags, message):
    code, output = _main(tmp_path / "run", *flags)
    assert code != 0
    assert "Traceback" not in output, output
    assert output.strip().splitlines() == [message], output
    assert not (tmp_path / "run").exists()  # nothing was built or written
