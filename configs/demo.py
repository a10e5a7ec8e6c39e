"""The quickstart: synthetic BreakHis written into the workdir, a small ResNet, 2 CPU cores, ~2 minutes.

    python -m bcjax.main --config=configs/demo.py --workdir=/tmp/bcjax-demo

Patient-disjoint (the default split), so the test accuracy is measured on
synthetic patients the model never saw.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.synthetic.enabled = True
    config.data.synthetic.patients = 3
    config.data.synthetic.images_per_magnification = 6
    config.data.synthetic.image_width, config.data.synthetic.image_height = 350, 230  # half size: faster to write
    config.data.split_kwargs = ml_collections.ConfigDict({"k": 4, "fold": 0, "val_fraction": 0.2})
    config.data.height = config.data.width = 80  # not 64: see BENCHMARKS.md on 2x2 feature maps
    config.data.normalization = "imagenet"
    config.data.augment.flip_horizontal = config.data.augment.flip_vertical = True
    config.data.augment.rotate90 = True
    config.model.arch = "resnet18"
    config.loss.name = "softmax_ce"
    config.optimizer.name, config.optimizer.learning_rate = "adam", 1e-3
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 6
    config.log_every_steps = 10
    config.evaluation.bootstrap_samples = 200
    return config
