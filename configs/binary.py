"""Recipe A (Abu Al-Haija & Manasra): ResNet-50 transfer learning, benign vs malignant, as published.

Train on every 100X/200X/400X image, test on every 40X image (every patient on
both sides: the report's leakage line shows it); input 144 wide x 96 high;
global pool -> Dense 1024 -> Dropout 0.4 -> ReLU -> Dense 1 sigmoid; MSE on the
sigmoid; RMSprop with epsilon inside the square root; batch 32, 200 epochs x 200 steps.

    python -m bcjax.main --config=configs/binary.py --workdir=runs/recipe_a \
        --config.model.init_from=weights/keras_resnet50   # ImageNet weights, as published
    python -m bcjax.main --config=configs/binary.py:patient --workdir=runs/recipe_a_patient

`:patient` keeps everything but the split, which becomes the patient-disjoint
default (5 accession-grouped folds, fold 0, validation from training patients).
The paper gives no learning rate: Keras' RMSprop default, 1e-3, is used.
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse_arg(arg, patient=False)
    config = default.get_config()
    if not options.patient:  # ':patient' keeps the default patient-disjoint split
        config.data.split = "recipe_a"
        config.data.split_kwargs = ml_collections.ConfigDict({"val_fraction": 0.0})
    config.data.height, config.data.width = 96, 144
    config.data.target = "label"
    config.model.arch, config.model.layout = "resnet50", "v1"  # the Keras ResNet50 the paper fine-tuned
    config.model.head = "recipe_a"
    config.loss.name = "sigmoid_mse"
    opt = config.optimizer
    opt.name, opt.learning_rate, opt.decay, opt.eps, opt.eps_in_sqrt = "rmsprop", 1e-3, 0.9, 1e-7, True
    config.batch_size = 32
    config.num_epochs, config.steps_per_epoch = 200, 200
    config.log_every_steps = 200
    return config
