"""What a user can get wrong in a config or on the command line, said in one message before any work.

- `check_config(config, num_devices)` checks every field of configs/default.py before a run
  builds or writes anything, and raises one `ConfigError` listing every bad field with what it
  allows. The names it accepts come from the modules that own them (the losses from
  bcjax.losses, the split protocols from bcjax.datasets.splits, ...), so a name added there is
  accepted here without a change.
- `flag_error_message(error, argv)` turns what absl and ml_collections raise while parsing the
  flags (a misspelt config field, a value of the wrong type, a config variant its file refuses)
  into one line naming the flag, for `python -m bcjax.main` to print instead of a traceback.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from bcjax import augment, evaluation, input_pipeline, losses, normalization, optimizers, published_weights
from bcjax.datasets import splits
from bcjax.datasets.breakhis import MAGNIFICATIONS, TARGET_CLASSES, Builder
from bcjax.models import ARCHITECTURES, HEADS
from bcjax.models.heads import ACTIVATIONS

# Sides a final evaluation can report on: evaluation_files reports the leakage of validation and test.
EVALUATED_SIDES = tuple(side for side in splits.SIDES if side != "train")
# What train.choose_device_path accepts for config.data.device_resident.
DEVICE_RESIDENT = ("auto", True, False)
# Arguments every split protocol gets from elsewhere than config.data.split_kwargs.
_SPLIT_ARGUMENTS_SET_ELSEWHERE = {"table": "the dataset", "magnification": "config.data.magnification"}
# Arguments bcjax.models.create_model gives every head itself.
_HEAD_ARGUMENTS_SET_ELSEWHERE = ("in_features", "num_classes", "dtype", "param_dtype", "rngs")
# Arguments bcjax.models.registry.build_backbone gives every backbone itself.
_BACKBONE_ARGUMENTS_SET_ELSEWHERE = ("arch", "layout", "dtype", "param_dtype", "rngs")

_MISSING = object()
_MAPPINGS = (Mapping, ml_collections.ConfigDict)  # a ConfigDict is no Mapping


class ConfigError(ValueError):
    """Fields of a config that cannot run; the message names each one with what it allows."""


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises one ConfigError listing every field of `config` that cannot run on `num_devices` devices.

    `num_devices` is the size of the run's mesh (every device of every process), which global
    batches are split over.
    """
    problems = config_problems(config, num_devices)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config fields cannot run:\n  " + "\n  ".join(problems))


def config_problems(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """One line per bad field, 'config.<field>=<value>: <what it allows>', in the order of the field names."""
    check = _Checker(config)
    _check_run(check, num_devices)
    _check_data(check)
    _check_model(check)
    _check_loss(check)
    _check_optimizer(check)
    _check_evaluation(check)
    return sorted(check.problems)


# ----------------------------------------------------------------------------- the rules


def _check_run(check: _Checker, num_devices: int) -> None:
    check.rule("seed", _is_int(0), "must be an integer >= 0")
    check.rule("restart", _is_bool, _BOOL)
    devices = (
        f"must be a positive multiple of {num_devices}, the number of devices"
        if num_devices > 1
        else "must be an integer >= 1"
    )
    for name in ("batch_size", "eval_batch_size"):
        check.rule(name, lambda v: _is_int(1)(v) and v % num_devices == 0, devices)
    check.rule("num_epochs", _is_int(0), "must be an integer >= 0")
    for name in ("steps_per_epoch", "total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        check.rule(name, _optional(_is_int(0)), "must be None or an integer >= 0 (0 or None: from the epoch length)")
    check.rule("keep_checkpoints", _is_int(1), "must be an integer >= 1")
    metrics = tuple(f"validation/{name}" for name in evaluation.LOGGED_METRICS)
    check.rule("best_metric", _one_of(metrics), f"must be one of {_names(metrics)} (higher is better)")
    check.rule("shard_params", _is_bool, _BOOL)


def _check_data(check: _Checker) -> None:
    data = check.value("data")
    synthetic = check.value("data.synthetic.enabled")
    check.rule("data.synthetic.enabled", _is_bool, _BOOL)
    if synthetic is True:
        check.rule(
            "data.synthetic.patients", lambda v: v == "full" or _is_int(1)(v), "must be 'full' or an integer >= 1"
        )
        for name in ("images_per_magnification", "image_width", "image_height"):
            check.rule(f"data.synthetic.{name}", _is_int(1), "must be an integer >= 1")
        check.rule("data.synthetic.seed", _is_int(0), "must be an integer >= 0")
    else:  # the synthetic demo sets its own source
        datasets = tuple(f"{Builder.name}/{c.name}" for c in Builder.BUILDER_CONFIGS)
        check.rule("data.dataset", _one_of(datasets), f"must be one of {_names(datasets)}")
        check.rule("data.data_dir", _is_text, "must be a folder (holding the prepared TFDS dataset)")
        check.rule("data.manual_dir", _optional(_is_text), "must be None or the folder with BreaKHis_v1.tar.gz")
    split = check.value("data.split")
    check.rule("data.split", _one_of(splits.PROTOCOLS), f"must be one of {_names(splits.PROTOCOLS)}")
    if split in splits.PROTOCOLS:
        _check_split_kwargs(check, split)
    check.rule("data.all_folds", _is_bool, _BOOL)
    if check.value("data.all_folds") is True and split not in splits.KFOLD_PROTOCOLS:
        check.add("data.all_folds", f"needs config.data.split in {splits.KFOLD_PROTOCOLS}, not {split!r}")
    magnifications = ("", *MAGNIFICATIONS)
    if check.rule("data.magnification", _one_of(magnifications), f"must be one of {_names(magnifications)}"):
        if split == "recipe_a" and check.value("data.magnification"):
            check.add(
                "data.magnification",
                "must be '' with config.data.split='recipe_a', which splits by magnification itself",
            )
    for name in ("height", "width"):
        check.rule(f"data.{name}", _is_int(1), "must be an integer >= 1")
    check.rule("data.target", _one_of(TARGET_CLASSES), f"must be one of {_names(TARGET_CLASSES)}")
    normalizations = ("auto", *normalization.NORMALIZATIONS)
    check.rule("data.normalization", _one_of(normalizations), f"must be one of {_names(normalizations)}")
    stains = input_pipeline.STAIN_NORMALIZATIONS
    check.rule("data.stain_normalization", _one_of(stains), f"must be one of {_names(stains)}")
    check.rule("data.balance", _is_bool, _BOOL)
    check.rule("data.decode_threads", _is_int(1), "must be an integer >= 1")
    check.rule("data.decode_workers", _is_int(0), "must be an integer >= 0 (0: one per host core)")
    cache_dirs = "must be a folder, '' (beside the dataset) or 'none'"
    check.rule("data.image_cache_dir", lambda v: isinstance(v, str), cache_dirs)
    check.rule(
        "data.device_resident",
        lambda v: any(type(v) is type(c) and v == c for c in DEVICE_RESIDENT),  # not 1 for True
        "must be 'auto', True or False",
    )
    if data is not _MISSING:
        _check_augment(check)


def _check_split_kwargs(check: _Checker, split: str) -> None:
    kwargs = check.value("data.split_kwargs")
    if not isinstance(kwargs, _MAPPINGS):
        check.add("data.split_kwargs", f"must be the arguments of the split protocol {split!r}")
        return
    signature = inspect.signature(splits.PROTOCOLS[split])
    arguments = [name for name in signature.parameters if name not in _SPLIT_ARGUMENTS_SET_ELSEWHERE]
    for name in kwargs:
        if name in _SPLIT_ARGUMENTS_SET_ELSEWHERE:
            check.add(f"data.split_kwargs.{name}", f"is set by {_SPLIT_ARGUMENTS_SET_ELSEWHERE[name]}, not here")
        elif name not in arguments:
            check.add(
                f"data.split_kwargs.{name}",
                f"{split!r} takes only {', '.join(arguments)} "
                "(replace them all: --config.data.split_kwargs=\"{'name': value, ...}\")",
            )
    required = [
        name
        for name in arguments
        if signature.parameters[name].default is inspect.Parameter.empty and name not in kwargs
    ]
    if required:
        check.add("data.split_kwargs", f"{split!r} needs {', '.join(required)}")
    rules = {
        "k": (_is_int(2), "must be an integer >= 2"),
        "val_fraction": (_fraction(0, 1, low_open=False), "must be in [0, 1)"),
        "test_fraction": (_fraction(0, 1, low_open=True), "must be in (0, 1)"),
        "seed": (_is_int(0), "must be an integer >= 0"),
        "stratify": (_is_bool, _BOOL),
        "folds_csv": (lambda v: _is_text(v) and os.path.isfile(v), "no such file (BreakHis' Folds.csv)"),
    }
    for name, (rule, allowed) in rules.items():
        if name in kwargs and name in arguments:
            check.rule(f"data.split_kwargs.{name}", rule, allowed)
    if "fold" in kwargs:
        if split == "patient_kfold":
            k = kwargs.get("k", signature.parameters["k"].default)
            if _is_int(2)(k):
                check.rule("data.split_kwargs.fold", lambda v: _is_int(0)(v) and v < k, f"must be in 0..{k - 1}")
        elif "fold" in arguments:
            check.rule("data.split_kwargs.fold", _is_int(0), "must be an integer >= 0 (as numbered in folds_csv)")


def _check_augment(check: _Checker) -> None:
    for name in ("flip_horizontal", "flip_vertical", "rotate90"):
        check.rule(f"data.augment.{name}", _is_bool, _BOOL)
    check.rule(
        "data.augment.crop_scale",
        _ordered(lambda low, high: 0 < low <= high <= 1),
        "must be (low, high) with 0 < low <= high <= 1: the range of the area kept",
    )
    check.rule(
        "data.augment.crop_ratio",
        _ordered(lambda low, high: 0 < low <= high),
        "must be (low, high) with 0 < low <= high: the range of the aspect-ratio change",
    )
    for name in ("brightness", "contrast", "hed_sigma"):
        check.rule(f"data.augment.{name}", _number(0), "must be a number >= 0")
    check.rule(
        "data.augment.rotation",
        _fraction(0, 180, low_open=False, high_open=False),
        "must be in [0, 180]: the largest angle in degrees either way (recipe C: 72)",
    )
    check.rule(
        "data.augment.zoom",
        _fraction(0, 1, low_open=False),
        "must be in [0, 1): the sampling grid's scale is drawn from [1 - zoom, 1 + zoom]",
    )
    check.rule(
        "data.augment.translation",
        _fraction(0, 1, low_open=False, high_open=False),
        "must be in [0, 1]: the largest shift, as a fraction of the height and of the width",
    )
    check.rule("data.augment.fill_mode", _one_of(augment.FILL_MODES), f"must be one of {_names(augment.FILL_MODES)}")


def _check_model(check: _Checker) -> None:
    if check.rule("model.arch", _one_of(ARCHITECTURES), f"must be one of {_names(ARCHITECTURES)}"):
        arch = check.value("model.arch")
        family = ARCHITECTURES[arch]
        check.rule("model.layout", _one_of(family.layouts), f"must be one of {_names(family.layouts)} for {arch}")
        _check_keyword_arguments(
            check, "model.backbone_kwargs", family.build, f"{arch}", exclude=_BACKBONE_ARGUMENTS_SET_ELSEWHERE
        )
        kwargs = check.value("model.backbone_kwargs")
        for name, choices in family.option_choices.items():
            if isinstance(kwargs, _MAPPINGS) and name in kwargs:
                check.rule(f"model.backbone_kwargs.{name}", _one_of(choices), f"must be one of {_names(choices)}")
    head = check.value("model.head")
    if check.rule("model.head", _one_of(HEADS), f"must be one of {_names(HEADS)}"):
        _check_keyword_arguments(
            check, "model.head_kwargs", HEADS[head], f"head {head!r}", exclude=_HEAD_ARGUMENTS_SET_ELSEWHERE
        )
        kwargs = check.value("model.head_kwargs")
        if isinstance(kwargs, _MAPPINGS) and "activation" in kwargs:
            check.rule("model.head_kwargs.activation", _one_of(ACTIVATIONS), f"must be one of {_names(ACTIVATIONS)}")
        rate = _fraction(0, 1, low_open=False)
        if isinstance(kwargs, _MAPPINGS) and "dropout" in kwargs:
            check.rule(
                "model.head_kwargs.dropout",
                lambda v: rate(v) or (_is_sequence(v) and all(map(rate, v))),
                "must be a rate in [0, 1), or one such rate per hidden layer",
            )
        if isinstance(kwargs, _MAPPINGS) and "input_dropout" in kwargs:
            check.rule("model.head_kwargs.input_dropout", rate, "must be in [0, 1)")
    if published_weights.is_published_name(check.value("model.init_from")):
        _check_published_weights(check)
    else:
        check.rule(
            "model.init_from",
            _optional(lambda v: _is_text(v) and os.path.isdir(os.path.expanduser(v))),
            "no such folder; make one with python -m bcjax.convert, or name published weights "
            "(e.g. 'torchvision:resnet50'; python -m bcjax.weight_hub list)",
        )
    check.rule("model.dtype", lambda v: v == "auto" or _is_float_dtype(v), "must be 'auto' or a float dtype")


def _check_published_weights(check: _Checker) -> None:
    """SOURCE:NAME is a known name whose weights fit model.arch and model.layout (no network needed);
    an architecture initialised from another's weights (ERNet: its ResNet) takes those."""
    try:
        entry = published_weights.lookup(check.value("model.init_from"))
    except ValueError as e:
        check.add("model.init_from", str(e))
        return
    arch, layout = check.value("model.arch"), check.value("model.layout")
    family = ARCHITECTURES.get(arch)
    if entry.arch not in ARCHITECTURES:
        check.add("model.init_from", f"converts to {entry.arch!r}, an architecture this bcjax does not build")
    elif family is not None and (family.init_arch(arch), layout) != (entry.arch, entry.layout):
        fitting = [
            e.spec
            for e in published_weights.PUBLISHED.values()
            if (e.arch, e.layout) == (family.init_arch(arch), layout)
        ]
        other = f", or keep {arch} with --config.model.init_from={' or '.join(fitting)}" if fitting else ""
        check.add(
            "model.init_from",
            f"converts to {entry.arch} in layout {entry.layout}: pass "
            f"--config.model.arch={family.arch_initialised_by(entry.arch) or entry.arch} "
            f"--config.model.layout={entry.layout}{other}",
        )


def _check_loss(check: _Checker) -> None:
    name, target = check.value("loss.name"), check.value("data.target")
    if check.rule("loss.name", _one_of(losses.LOSSES), f"must be one of {_names(losses.LOSSES)}"):
        one_logit = losses.LOSSES[name][1]
        if one_logit and target in TARGET_CLASSES and len(TARGET_CLASSES[target]) != 2:
            check.add(
                "loss.name",
                f"takes one binary logit, so it needs a config.data.target of two classes, not {target!r} "
                f"({len(TARGET_CLASSES[target])} classes): use 'softmax_ce'",
            )
    check.rule("loss.label_smoothing", _fraction(0, 1, low_open=False), "must be in [0, 1)")
    if target in TARGET_CLASSES:
        classes = TARGET_CLASSES[target]
        check.rule(
            "loss.class_weights",
            _optional(lambda v: _is_sequence(v) and len(v) == len(classes) and all(_number(0)(w) for w in v)),
            f"must be None or {len(classes)} numbers >= 0, one per class of {target!r} ({', '.join(classes)})",
        )


def _check_optimizer(check: _Checker) -> None:
    name = check.value("optimizer.name")
    try:
        optax_function = optimizers.optax_function(name) if isinstance(name, str) else None
    except ValueError:
        optax_function = None
    if optax_function is None:
        check.add(
            "optimizer.name",
            f"must be one of {_names(optimizers.NAMED_OPTIMIZERS)} or the name of an optax optimizer function "
            "taking learning_rate (e.g. 'lamb', 'lion')",
        )
    else:
        _check_keyword_arguments(check, "optimizer.kwargs", optax_function, f"optax.{name}", exclude=("learning_rate",))
    check.rule("optimizer.learning_rate", _number(0, open_low=True), "must be a number > 0")
    schedule = check.value("optimizer.schedule")
    check.rule("optimizer.schedule", _one_of(optimizers.SCHEDULES), f"must be one of {_names(optimizers.SCHEDULES)}")
    if check.rule("optimizer.warmup_steps", _is_int(0), "must be an integer >= 0"):
        if check.value("optimizer.warmup_steps") and not str(schedule).startswith("warmup_"):
            check.add("optimizer.warmup_steps", f"needs a schedule that warms up (warmup_*), not {schedule!r}")
    if check.rule("optimizer.decay_steps", _is_int(0), "must be an integer >= 0"):
        if schedule == "step" and check.value("optimizer.decay_steps") == 0:
            check.add("optimizer.decay_steps", "must be > 0 for the schedule 'step'")
    check.rule(
        "optimizer.end_learning_rate_factor", _fraction(0, 1, low_open=False, high_open=False), "must be in [0, 1]"
    )
    check.rule("optimizer.decay_rate", _number(0, open_low=True), "must be a number > 0")
    for field in ("weight_decay", "grad_clip_norm", "eps", "backbone_lr_multiplier", "head_lr_multiplier"):
        check.rule(f"optimizer.{field}", _number(0), "must be a number >= 0")
    masks = optimizers.WEIGHT_DECAY_MASKS
    check.rule("optimizer.weight_decay_mask", _one_of(masks), f"must be one of {_names(masks)}")
    for field in ("b1", "b2", "decay", "momentum"):
        check.rule(f"optimizer.{field}", _fraction(0, 1, low_open=False), "must be in [0, 1)")
    for field in ("eps_in_sqrt", "centered", "nesterov"):
        check.rule(f"optimizer.{field}", _is_bool, _BOOL)
    check.rule("optimizer.freeze_backbone_steps", _is_int(-1), "must be an integer >= 0, or -1 for the whole run")


def _check_evaluation(check: _Checker) -> None:
    check.rule(
        "evaluation.splits",
        lambda v: _is_sequence(v) and all(side in EVALUATED_SIDES for side in v) and len(set(v)) == len(v),
        f"must be distinct names from {_names(EVALUATED_SIDES)}",
    )
    check.rule("evaluation.bootstrap_samples", _is_int(0), "must be an integer >= 0 (0: no intervals)")
    check.rule("evaluation.use_best", _is_bool, _BOOL)


def _check_keyword_arguments(
    check: _Checker, path: str, function: Callable, what: str, *, exclude: Sequence[str] = ()
) -> None:
    """The names of the mapping at `path` are keyword arguments of `function` (any, if it takes **kwargs)."""
    kwargs = check.value(path)
    if not isinstance(kwargs, _MAPPINGS):
        check.add(path, f"must be keyword arguments of {what}")
        return
    # nnx.Module classes show their metaclass's (*args, **kwargs): read __init__'s own, after self.
    signature = inspect.signature(function.__init__ if isinstance(function, type) else function)
    parameters = dict(list(signature.parameters.items())[isinstance(function, type) :])
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name not in exclude]
    for name in kwargs:
        if name not in accepted:
            check.add(f"{path}.{name}", f"{what} takes no argument {name!r}; it takes {', '.join(accepted) or 'none'}")


# ----------------------------------------------------------------------------- checking one field


class _Checker:
    """Reads fields by dotted path and collects one problem line per bad field."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.problems: list[str] = []
        self._bad: set[str] = set()

    def value(self, path: str) -> Any:
        holder: Any = self.config
        for key in path.split("."):
            if not isinstance(holder, _MAPPINGS) or key not in holder:
                return _MISSING
            holder = holder[key]
        return holder

    def rule(self, path: str, ok: Callable[[Any], bool], allowed: str) -> bool:
        """Whether the field at `path` passes `ok`; if not, records it with `allowed`."""
        value = self.value(path)
        if value is _MISSING:
            self.add(path, "missing (configs/default.py declares every field)")
            return False
        if not ok(value):
            self.add(path, allowed)
            return False
        return True

    def add(self, path: str, problem: str) -> None:
        if path in self._bad:  # one message per field: the first rule it breaks
            return
        self._bad.add(path)
        value = self.value(path)
        shown = "" if value is _MISSING or isinstance(value, _MAPPINGS) else f"={value!r}"
        self.problems.append(f"config.{path}{shown}: {problem}")


_BOOL = "must be True or False"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(minimum: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum


def _number(minimum: float, *, open_low: bool = False) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            return False
        return math.isfinite(value) and (value > minimum if open_low else value >= minimum)

    return ok


def _fraction(low: float, high: float, *, low_open: bool, high_open: bool = True) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        if not _number(-math.inf)(value):
            return False
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    return ok


def _ordered(ok: Callable[[float, float], bool]) -> Callable[[Any], bool]:
    return lambda value: _is_sequence(value) and len(value) == 2 and all(map(_number(-math.inf), value)) and ok(*value)


def _one_of(choices: Any) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in choices


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or ok(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, tuple | list)


def _is_float_dtype(name: Any) -> bool:
    """What bcjax.components.compute_dtype reads with jnp.dtype: 'float32', 'bfloat16', ..."""
    try:
        return isinstance(name, str) and jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        return False


def _names(choices: Any) -> str:
    return ", ".join(repr(choice) for choice in choices)


# ----------------------------------------------------------------------------- flags


def flag_error_message(
    error: BaseException, argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS, name: str = "config"
) -> str:
    """One line saying which flag of `argv` (program name first) is wrong and why; `error` is what parsing raised.

    `name` is the config file flag (`--config=FILE[:VARIANT]`, overrides `--config.FIELD=VALUE`).
    """
    args = _expanded(argv[1:], flag_values)
    overrides = [(match.group(1), arg) for arg in args if (match := _override(name).match(arg))]
    config = _loaded_config(args, flag_values, name)
    if config is not None:
        for path, arg in overrides:
            problem = _path_problem(config, path, name)
            if problem:
                return f"{arg}: {problem}"
    cause = _innermost(error)
    if isinstance(error, flags.IllegalFlagValueError) and error.__context__ is not None:
        text, reason = str(error), _last_line(str(cause))
        flag = text.removeprefix("flag ").removesuffix(f": {error.__context__}")
        for path, _ in overrides:
            if config is not None and flag.startswith(f"--{name}.{path}="):
                field_type = _field_type(config, path)
                if field_type is not None:
                    return f"{flag}: {name}.{path} takes {_a(field_type.__name__)} ({reason})"
        return f"{flag}: {reason}"
    if isinstance(cause, OSError) and not isinstance(error, flags.Error):
        return f"--{name}={_config_argument(args, name)}: cannot load it ({_last_line(str(cause))})"
    return _one_line(str(error))


def _override(name: str) -> re.Pattern:
    return re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)(?:=.*)?$", re.DOTALL)


def _expanded(args: Sequence[str], flag_values: flags.FlagValues) -> list[str]:
    try:
        return flag_values.read_flags_from_files(list(args), force_gnu=False)
    except flags.Error:
        return list(args)


def _config_argument(args: Sequence[str], name: str) -> str | None:
    """The FILE[:VARIANT] of `--config=...` or `--config ...` in `args`."""
    for i, arg in enumerate(args):
        match = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg, re.DOTALL)
        if match:
            return match.group(2) if match.group(1) is not None else (args[i + 1] if i + 1 < len(args) else None)
    return None


def _loaded_config(args: Sequence[str], flag_values: flags.FlagValues, name: str) -> ml_collections.ConfigDict | None:
    """The config the flag loaded, or loads it again when parsing failed before it was kept."""
    if name not in flag_values:
        return None
    config = flag_values[name].value
    if isinstance(config, ml_collections.ConfigDict):
        return config
    argument = _config_argument(args, name)
    if argument is None:
        return None
    try:
        config = flag_values[name].parser.parse(argument)
    except (OSError, TypeError, ValueError):
        return None
    return config if isinstance(config, ml_collections.ConfigDict) else None


def _path_problem(config: ml_collections.ConfigDict, path: str, name: str) -> str | None:
    """Why `--<name>.<path>` names no field of `config`; None when it does."""
    holder: Any = config
    walked = name
    for key in path.split("."):
        if not isinstance(holder, ml_collections.ConfigDict):
            return f"{walked} is {_a(type(holder).__name__)}, not a group of fields"
        if key not in holder:
            fields = list(holder.keys())
            close = difflib.get_close_matches(key, fields, n=1)
            if close:
                return f"{walked} has no field {key!r}; did you mean {close[0]!r}?"
            hint = f"its fields: {', '.join(fields)}" if fields else "it has no fields"
            if walked.endswith("kwargs"):  # arguments of a chosen function: the group is replaced whole
                hint += f"; to pass others, give them all: --{walked}=\"{{'{key}': ...}}\""
            return f"{walked} has no field {key!r}; {hint}"
        holder = holder[key]
        walked = f"{walked}.{key}"
    return None


def _field_type(config: ml_collections.ConfigDict, path: str) -> type | None:
    *groups, key = path.split(".")
    holder: Any = config
    for group in groups:
        holder = holder[group]
    try:
        field_type = holder.get_type(key)
    except (AttributeError, KeyError, TypeError):
        return None
    return field_type if isinstance(field_type, type) and field_type is not object else None


def _innermost(error: BaseException) -> BaseException:
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"
