"""Recipe C (a model-comparison report, tf.keras): a frozen ImageNet base and a dense head,
benign vs malignant, for VGG16, MobileNetV3 and ResNet50V2.

As the report gives it: 0-255 input -> RandomBrightness(0.2) -> RandomFlip (both axes) ->
RandomRotation(0.2) (+-72 degrees, reflect) -> the base's preprocess_input -> the base
(include_top=False, average pooling, frozen, batch norm in inference mode) -> Dropout/Dense
stack -> one sigmoid; binary cross-entropy; Adam. Reported test accuracy (642 images): VGG16
0.875, MobileNetV3 0.812, ResNet50V2 0.858.

    python -m bcjax.main --config=configs/recipe_c.py:model=vgg16 --workdir=runs/recipe_c_vgg16
    python -m bcjax.main --config=configs/recipe_c.py:model=mobilenet_v3 --workdir=runs/recipe_c_mobilenet
    python -m bcjax.main --config=configs/recipe_c.py:model=resnet50v2 --workdir=runs/recipe_c_resnet50v2
    python -m bcjax.main --config=configs/recipe_c.py:model=vgg16,patient --workdir=runs/recipe_c_vgg16_patient

The Keras ImageNet weights (`model.init_from=keras:...`) are downloaded on first use and cached
(`python -m bcjax.weight_hub list`); a frozen base needs them, so the config names them.

The report leaves unstated, and this config chooses: MobileNetV3 Large (Keras' MobileNetV3Large
no-top file ends at its 960-channel map, so the head reads 960 pooled features), 224x224 input
(the Keras ImageNet weights' size), Adam's Keras default learning rate 1e-3 and epsilon 1e-7,
batch 32 and 20 epochs. Its split: sklearn's train_test_split (25% validation) of a training table
and 642 test images (8% of 7,909), both image-level: `image_random(test_fraction=0.081,
val_fraction=0.25)`, so most test patients were also seen in training (the report's leakage line
says how many). `:patient` keeps everything but the split, which becomes the patient-disjoint default.
"""

import ml_collections

from configs import common, default

# model -> (arch, layout, backbone options, head preset, published ImageNet weights)
MODELS = {
    "vgg16": ("vgg16", "keras", {}, "recipe_c_vgg16", "keras:vgg16"),
    "mobilenet_v3": (
        "mobilenet_v3_large",
        "keras",
        {"pre_logits": False},
        "recipe_c_mobilenetv3",
        "keras:mobilenet_v3_large",
    ),
    "resnet50v2": ("resnet50", "v2", {}, "recipe_c_resnet50v2", "keras:resnet50v2"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse_arg(arg, model="vgg16", patient=False)
    if options.model not in MODELS:
        raise ValueError(f"unknown model {options.model!r} for recipe C; choose one of {sorted(MODELS)}")
    arch, layout, backbone_kwargs, head, weights = MODELS[options.model]
    config = default.get_config()
    if not options.patient:  # ':patient' keeps the default patient-disjoint split
        config.data.split = "image_random"
        config.data.split_kwargs = ml_collections.ConfigDict({"test_fraction": 0.081, "val_fraction": 0.25})
    config.data.height = config.data.width = 224
    config.data.target = "label"
    config.data.augment.update(brightness=0.2, flip_horizontal=True, flip_vertical=True, rotation=72.0)
    config.model.arch, config.model.layout, config.model.head = arch, layout, head
    config.model.backbone_kwargs = ml_collections.ConfigDict(backbone_kwargs)
    config.model.init_from = weights
    config.loss.name = "sigmoid_bce"
    opt = config.optimizer
    opt.name, opt.learning_rate, opt.eps = "adam", 1e-3, 1e-7
    opt.freeze_backbone_steps = -1  # the base stays frozen, batch norm in inference mode
    config.batch_size = 32
    config.num_epochs = 20
    config.best_metric = "validation/accuracy"
    return config
