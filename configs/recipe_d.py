"""Recipe D (ERNet): a ResNet with enhanced residual blocks, benign vs malignant, as published.

224x224 Macenko-normalised images; a random 30% of the images as test set and 5-fold cross-validation
inside the other 70% (`image_kfold`: one test set, fold i validates; the paper reports the mean of
its five runs, so every fold runs in one command); Adam 1e-4, batch 16, 100 epochs; translations,
rotations, flips, crops and zoom (magnitudes unstated: see README "Augmentation"); a linear
two-class softmax head. Reported accuracy (image-level split, so patients leak; the paper's
tables disagree by +-2 points): ERNet-18 93.22, -34 93.34, -50 95.75, -101 95.92.

    python -m bcjax.main --config=configs/recipe_d.py --workdir=runs/recipe_d_ernet50 \
        --config.model.init_from=torchvision:resnet50
    python -m bcjax.main --config=configs/recipe_d.py:depth=18 --workdir=runs/recipe_d_ernet18 \
        --config.model.init_from=torchvision:resnet18
    python -m bcjax.main --config=configs/recipe_d.py:patient --workdir=runs/recipe_d_patient

The paper does not say whether it started from ImageNet weights; ERNet's identity-like init makes
step 0 compute the loaded ResNet's function (bcjax/models/ernet.py), so `init_from` names the
ResNet of the same depth. `:patient` runs the 5 patient-disjoint folds of the default protocol.
The readings of what the paper leaves open are `model.backbone_kwargs` (newest_map, er_input),
e.g. `--config.model.backbone_kwargs.newest_map=normalized`.
"""

import ml_collections

from configs import common, default

DEPTHS = (18, 34, 50, 101)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse_arg(arg, depth=50, patient=False)
    if options.depth not in DEPTHS:
        raise ValueError(f"ERNet depth {options.depth} is not one of {DEPTHS}")
    config = default.get_config()
    if not options.patient:
        config.data.split = "image_kfold"
        config.data.split_kwargs = ml_collections.ConfigDict({"test_fraction": 0.3, "k": 5, "fold": 0})
    config.data.all_folds = True
    config.data.height = config.data.width = 224
    config.data.target = "label"
    config.data.stain_normalization = "macenko"
    config.data.augment.update(
        flip_horizontal=True, flip_vertical=True, rotation=20.0, zoom=0.2, translation=0.1, crop_scale=(0.8, 1.0)
    )
    config.model.arch, config.model.layout, config.model.head = f"ernet{options.depth}", "v1.5", "linear"
    # What the paper leaves open (bcjax/models/ernet.py): the newest map unmodified, as Eq. 10 writes it;
    # earlier blocks' outputs read after their ReLU.
    config.model.backbone_kwargs = ml_collections.ConfigDict({"newest_map": "identity", "er_input": "post"})
    config.loss.name = "softmax_ce"
    opt = config.optimizer
    opt.name, opt.learning_rate, opt.eps = "adam", 1e-4, 1e-7  # TensorFlow's Adam
    config.batch_size = 16
    config.num_epochs = 100
    config.best_metric = "validation/accuracy"
    return config
