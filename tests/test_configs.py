"""The configs: `:arg` variants through `configs/common.py:parse_arg`, one source of defaults."""

import dataclasses

import pytest

from bcjax import input_pipeline
from configs import binary, common, default, demo, multiclass


def test_parse_arg_reads_flags_and_typed_values():
    options = common.parse_arg("patient,k=3,fraction=0.5,name=x", patient=False, k=5, fraction=0.2, name="y")
    assert options.to_dict() == {"patient": True, "k": 3, "fraction": 0.5, "name": "x"}
    assert common.parse_arg(None, patient=False).patient is False
    assert common.parse_arg("patient=false", patient=True).patient is False


@pytest.mark.parametrize(
    "arg, message",
    [("pateint", "unknown config option 'pateint'.*patient"), ("k", "needs a value"), ("patient=yes", "true or false")],
)
def test_parse_arg_errors_name_the_options(arg, message):
    with pytest.raises(ValueError, match=message):
        common.parse_arg(arg, patient=False, k=5)


def test_patient_variants_keep_the_default_split():
    defaults = default.get_config().data
    for config in (binary.get_config("patient"), multiclass.get_config("balanced,patient")):
        assert config.data.split == defaults.split
        assert config.data.split_kwargs.to_dict() == defaults.split_kwargs.to_dict()
    assert binary.get_config().data.split == "recipe_a"
    assert multiclass.get_config().data.split == "image_random"
    assert multiclass.get_config("balanced").data.balance and not multiclass.get_config().data.balance
    with pytest.raises(ValueError, match="unknown config option"):
        binary.get_config("balanced")


def test_recipe_configs_redeclare_no_field():
    """Recipes override configs/default.py's fields; none adds a field default.py lacks."""

    def fields(config, prefix=""):
        names = set()
        for key, value in config.items():
            if key in ("split_kwargs", "head_kwargs", "kwargs"):  # arguments of the chosen protocol or function
                names.add(prefix + key)
            elif hasattr(value, "items"):
                names |= fields(value, f"{prefix}{key}.")
            else:
                names.add(prefix + key)
        return names

    declared = fields(default.get_config())
    for config in (binary.get_config(), multiclass.get_config("balanced"), demo.get_config()):
        assert fields(config) == declared


def test_input_config_comes_from_config_data():
    """Every InputConfig field is read from config.data (or config.seed): no second set of defaults."""
    config = default.get_config()
    config.data.height, config.data.decode_threads, config.seed = 123, 7, 11
    config.data.augment.crop_scale = (0.5, 1.0)
    derived = input_pipeline.InputConfig.from_config(config, normalization="imagenet")
    assert (derived.height, derived.decode_threads, derived.seed) == (123, 7, 11)
    assert derived.augment.crop_scale == (0.5, 1.0) and derived.magnification is None
    for field in dataclasses.fields(input_pipeline.InputConfig):
        assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, field.name
        assert field.name in config.data or field.name == "seed", field.name
