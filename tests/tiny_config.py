"""The tests' configs: a seconds-long run (`tests/tiny_config.py:DATA_DIR`, a prepared breakhis/custom)
and `input_config` for the input pipeline alone."""

import ml_collections

from bcjax import input_pipeline
from configs import default


def input_config(**fields) -> input_pipeline.InputConfig:
    """configs/default.py's data as an InputConfig with `fields` changed (imagenet normaliser, no split arguments)."""
    return input_pipeline.InputConfig.from_config(
        default.get_config(), **{"normalization": "imagenet", "split_kwargs": {}, **fields}
    )


def get_config(data_dir: str) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.data_dir = data_dir
    config.data.dataset = "breakhis/custom"
    config.data.split_kwargs = ml_collections.ConfigDict({"k": 3, "fold": 0, "val_fraction": 0.25})
    config.data.height, config.data.width = 32, 32
    config.data.normalization = "imagenet"
    config.data.augment.flip_horizontal = True
    config.model.arch = "resnet18"
    config.model.dtype = "float32"
    config.optimizer.learning_rate = 1e-3
    config.batch_size = 8
    config.eval_batch_size = 16
    config.total_steps = 6
    config.steps_per_epoch = 3
    config.log_every_steps = 1
    config.evaluation.bootstrap_samples = 50
    return config
