"""Every field of a bcjax run with its default; recipe configs import this and override.

Override any field on the command line: `--config.optimizer.name=adam`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds the initial weights, dropout, shuffling and augmentation (the split: split_kwargs.seed)
    config.restart = False  # True: delete a workdir's run of another config and start over
    config.data = _data()
    config.model = _model()
    config.loss = _loss()
    config.optimizer = _optimizer()
    _run_length(config)
    config.evaluation = _evaluation()
    return config


def _data() -> ml_collections.ConfigDict:
    """bcjax.input_pipeline.InputConfig.from_config reads its fields from here."""
    data = ml_collections.ConfigDict()
    data.data_dir = "~/tensorflow_datasets"  # folder holding the prepared TFDS dataset
    data.dataset = "breakhis/archive"  # 'breakhis/archive' (published, counts checked) or 'breakhis/custom'
    data.manual_dir = config_dict.placeholder(str)  # folder with BreaKHis_v1.tar.gz: builds the dataset if missing
    data.synthetic = ml_collections.ConfigDict()  # the demo's synthetic BreakHis, written into the workdir
    data.synthetic.enabled = False  # True: use synthetic data instead of data_dir/dataset (never implicit)
    data.synthetic.patients = 2  # patient folders per tumour type (plus the archive's quirk folders)
    data.synthetic.images_per_magnification = 4  # images per patient and magnification
    data.synthetic.image_width = 700  # BreakHis images are 700x460
    data.synthetic.image_height = 460
    data.synthetic.seed = 0  # seed of the synthetic images (independent of config.seed)
    # patient_kfold | patient_holdout | recipe_a | image_random | image_kfold | official_folds
    data.split = "patient_kfold"
    data.split_kwargs = ml_collections.ConfigDict({"k": 5, "fold": 0, "val_fraction": 0.2})  # the protocol's arguments
    data.all_folds = False  # True: run every fold of patient_kfold/image_kfold and report mean +- std (Spanhol)
    data.magnification = ""  # '' for all (MIB/MIM tasks) or one of 40X/100X/200X/400X (MSB/MSM)
    data.height = 224  # working resolution: images are decoded once at this size
    data.width = 224
    data.target = "label"  # 'label' (benign/malignant) or 'tumor_type' (8 classes)
    # auto (from the pretrained weights, else imagenet) | imagenet | caffe | tf | unit | zscore
    data.normalization = "auto"
    data.stain_normalization = "none"  # 'macenko' (recipe D): once per image, before caching
    data.balance = False  # oversample the target's classes to equal counts (recipe B)
    data.decode_threads = 2  # threads feeding the host path's training batches
    data.decode_workers = 0  # threads decoding the PNGs the image cache lacks; 0: one per host core
    # where decoded images are kept between runs (bcjax.image_cache): '' beside the dataset
    # (<data_dir>/bcjax_image_cache), a folder, or 'none' to decode in memory every run
    data.image_cache_dir = ""
    # auto (on when the training images fit in device memory) | True | False: batches drawn and augmented on device
    data.device_resident = config_dict.FieldReference("auto", field_type=object)
    aug = data.augment = ml_collections.ConfigDict()  # training-time augmentation (bcjax.augment.AugmentConfig)
    aug.flip_horizontal = False
    aug.flip_vertical = False
    aug.rotate90 = False  # multiples of 90 degrees (square inputs) or 180 (others)
    aug.crop_scale = (1.0, 1.0)  # random resized crop: range of the area kept
    aug.crop_ratio = (1.0, 1.0)  # random resized crop: range of the aspect-ratio change
    aug.brightness = 0.0  # delta drawn from +-brightness * 255 grey levels (recipe C: 0.2, +-51)
    aug.contrast = 0.0  # contrast factor drawn from [1 - c, 1 + c]
    aug.hed_sigma = 0.0  # HED stain jitter strength (Tellez 2018)
    aug.rotation = 0.0  # any angle drawn from +-rotation degrees, bilinear (recipe C: 72)
    aug.zoom = 0.0  # sampling-grid scale drawn from [1 - zoom, 1 + zoom]: below 1 zooms in
    aug.translation = 0.0  # shift drawn from +-translation of the height and of the width
    aug.fill_mode = "reflect"  # outside the image after rotation/zoom/translation: reflect | nearest | constant (0)
    return data


def _model() -> ml_collections.ConfigDict:
    """bcjax.components.build_model"""
    model = ml_collections.ConfigDict()
    model.arch = "resnet50"  # any name in bcjax.models.ARCHITECTURES (python -m bcjax.models.summary --help)
    model.layout = "v1.5"  # the arch family's variant; ResNet: v1.5 (torchvision/timm) | v1 (Keras) | v2 (Keras V2)
    model.backbone_kwargs = ml_collections.ConfigDict()  # the family's options, e.g. resnet: bn_epsilon
    model.head = "linear"  # linear | mlp | a published stack: recipe_a, recipe_c_vgg16, recipe_c_mobilenetv3, ...
    model.head_kwargs = ml_collections.ConfigDict()  # mlp: hidden, dropout, input_dropout, activation, dropout_first
    model.init_from = config_dict.placeholder(str)  # `python -m bcjax.convert` output: ImageNet backbone weights
    model.dtype = "auto"  # compute dtype: auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16
    return model


def _loss() -> ml_collections.ConfigDict:
    """bcjax.losses.make_loss"""
    loss = ml_collections.ConfigDict()
    loss.name = "softmax_ce"  # sigmoid_mse (recipe A) | sigmoid_bce | softmax_ce
    loss.label_smoothing = 0.0
    loss.class_weights = config_dict.placeholder(tuple)  # one weight per class, e.g. (1.0, 0.5)
    return loss


def _optimizer() -> ml_collections.ConfigDict:
    """bcjax.optimizers.make_optimizer (its module docstring says what each field does)"""
    opt = ml_collections.ConfigDict()
    opt.name = "adam"  # rmsprop | adam | adamw | sgd | any optax optimizer (with optimizer.kwargs)
    opt.learning_rate = 1e-4  # base learning rate
    opt.schedule = "constant"  # constant | cosine | warmup_cosine | warmup_constant | step
    opt.warmup_steps = 0
    opt.end_learning_rate_factor = 0.0  # cosine: final rate as a fraction of the base rate
    opt.decay_steps = 0  # 'step' schedule: multiply the rate by decay_rate every decay_steps steps
    opt.decay_rate = 0.1  # 'step' schedule: the factor
    opt.weight_decay = 0.0  # adamw: decoupled; others: L2 added to the gradient
    opt.weight_decay_mask = "kernels"  # 'kernels' (rank >= 2: no biases, no BN) | 'all'
    opt.grad_clip_norm = 0.0  # clip the global gradient norm (0: off)
    opt.b1 = 0.9  # adam/adamw
    opt.b2 = 0.999  # adam/adamw
    opt.eps = 1e-7  # adam/adamw/rmsprop epsilon (Keras' default)
    opt.decay = 0.9  # rmsprop: rho, the moving-average decay of squared gradients
    opt.eps_in_sqrt = True  # rmsprop: w -= lr * g / sqrt(v + eps), recipe A's formula (Keras: eps outside)
    opt.centered = False  # rmsprop
    opt.momentum = 0.0  # sgd / rmsprop momentum
    opt.nesterov = False  # sgd / rmsprop
    opt.freeze_backbone_steps = 0  # train only the head (backbone BN frozen too) for this many steps; -1: always
    opt.backbone_lr_multiplier = 1.0  # backbone learning rate = base * this
    opt.head_lr_multiplier = 1.0  # head learning rate = base * this
    opt.kwargs = ml_collections.ConfigDict()  # extra keyword arguments of other optax optimizers
    return opt


def _run_length(config: ml_collections.ConfigDict) -> None:
    """Steps; 0 or None derives from the epoch length (bcjax.schedule.make_schedule)."""
    config.batch_size = 32  # global batch, split over all devices of all hosts
    config.eval_batch_size = 64  # global batch of evaluation (the last one is padded and masked)
    config.num_epochs = 30
    config.steps_per_epoch = config_dict.placeholder(int)  # None: training images // batch_size
    config.total_steps = config_dict.placeholder(int)  # None: num_epochs * steps_per_epoch
    config.log_every_steps = 50  # also the only host syncs of the loop
    config.eval_every_steps = config_dict.placeholder(int)  # None: every epoch (needs a validation split)
    config.checkpoint_every_steps = config_dict.placeholder(int)  # None: every epoch
    config.keep_checkpoints = 2  # latest checkpoints kept (the best one is kept as well)
    config.best_metric = "validation/balanced_accuracy"  # ranks checkpoints; higher is better
    config.shard_params = False  # True: shard large parameters and optimizer state over devices


def _evaluation() -> ml_collections.ConfigDict:
    evaluation = ml_collections.ConfigDict()
    evaluation.splits = ("validation", "test")
    evaluation.bootstrap_samples = 1000  # 95% intervals resampling patients
    evaluation.use_best = True  # evaluate the best checkpoint by best_metric when there is one
    return evaluation
