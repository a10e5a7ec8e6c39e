"""Recipe B (Nishio et al.): magnification-independent tumour typing with ResNet-50 or VGG19, as published.

Images split at random 70/30 (patients leak; the report shows how much), 25% of
training as validation with the best weights kept; 224x224; per-channel z-score
from the training images; ResNet-50 with a new classifier; categorical
cross-entropy; Adam with weight decay 1e-4, learning rate 3e-4 decaying to 1e-5;
batch 32, 30 epochs; fixed seed.

    python -m bcjax.main --config=configs/multiclass.py --workdir=runs/recipe_b \
        --config.model.init_from=weights/torchvision_resnet50
    python -m bcjax.main --config=configs/multiclass.py:balanced ...  # oversampled classes (94.73% in the paper)
    python -m bcjax.main --config=configs/multiclass.py:patient ...   # patient-disjoint 5-fold split instead
    python -m bcjax.main --config=configs/multiclass.py:arch=vgg19 ... \
        --config.model.init_from=torchvision:vgg19  # VGG19 (88.33%, 92.50% balanced)
    python -m bcjax.main --config=configs/multiclass.py:task=label ...  # the binary task (99.03%; VGG19 96.59%)

Arguments combine with commas: `configs/multiclass.py:arch=vgg19,task=label,patient`. VGG19 keeps
torchvision's ImageNet fully connected layers and replaces its last Linear by the new classifier,
as `model.classifier[6] = nn.Linear(4096, n)` does (the paper does not say more).
"""

import ml_collections

from configs import common, default

ARCHS = {"resnet50": "v1.5", "vgg19": "torch"}  # arch -> torchvision's layout


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse_arg(arg, balanced=False, patient=False, arch="resnet50", task="tumor_type")
    if options.arch not in ARCHS:
        raise ValueError(f"recipe B trains {', '.join(ARCHS)}, not {options.arch!r}")
    config = default.get_config()
    if not options.patient:  # ':patient' keeps the default patient-disjoint split
        config.data.split = "image_random"
        config.data.split_kwargs = ml_collections.ConfigDict({"test_fraction": 0.3, "val_fraction": 0.25})
    config.data.height = config.data.width = 224
    config.data.target = options.task
    config.data.normalization = "zscore"
    config.data.balance = options.balanced
    if config.data.balance:  # the paper oversampled with flips and rotations
        config.data.augment.flip_horizontal = config.data.augment.flip_vertical = True
        config.data.augment.rotate90 = True
    config.model.arch, config.model.layout, config.model.head = options.arch, ARCHS[options.arch], "linear"
    if options.arch == "vgg19":
        config.model.backbone_kwargs = ml_collections.ConfigDict({"fc_layers": True})
    config.loss.name = "softmax_ce"
    opt = config.optimizer
    opt.name, opt.learning_rate, opt.weight_decay = "adam", 3e-4, 1e-4
    opt.schedule, opt.end_learning_rate_factor = "cosine", 1e-5 / 3e-4
    opt.eps = 1e-8  # PyTorch's Adam default (the paper used PyTorch)
    config.batch_size = 32
    config.num_epochs = 30
    config.best_metric = "validation/accuracy"
    return config
