"""What recipe configs share: parsing the `:arg` of `--config=configs/NAME.py:arg`."""

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """The options of `configs/NAME.py:a,b=2` as a ConfigDict of `spec`'s names.

    `spec` names every option with its default, whose type the value is parsed to; a bare name
    sets a boolean option. An unknown name or a bad value is one error that lists the options.
    (big_vision's `configs/common.py:parse_arg`, with its errors made explicit.)
    """
    options = ml_collections.ConfigDict(spec)
    for item in filter(None, (arg or "").split(",")):
        name, has_value, value = item.partition("=")
        if name not in spec:
            raise ValueError(f"unknown config option {name!r} in {arg!r}; options: {_describe(spec)}")
        default = spec[name]
        if not has_value and not isinstance(default, bool):
            raise ValueError(f"config option {name!r} needs a value ({name}=...); options: {_describe(spec)}")
        options[name] = True if not has_value else _parse(value, default, name)
    return options


def _parse(value: str, default, name: str):
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"config option {name!r} takes true or false, not {value!r}")
        return value.lower() == "true"
    return type(default)(value)


def _describe(spec: dict) -> str:
    return ", ".join(f"{name} (default {default!r})" for name, default in spec.items())
