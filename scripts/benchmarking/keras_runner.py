"""The Keras 3 (TensorFlow) worker: `train_on_batch` of a keras.applications network + Dense(2).

TensorFlow is imported inside `run`, after the model check, so that a network Keras lacks is
reported without loading it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bcjax.normalization import IMAGENET_MEAN, IMAGENET_STD
from benchmarking import timing
from benchmarking.models import MODELS
from benchmarking.protocol import LEARNING_RATE, NUM_CLASSES, RunSpec, compile_estimate, host_batch, mb, time_steps


def run(spec: RunSpec) -> dict:
    """`train_on_batch` of the Keras network + Dense(2) on the uint8 batch."""
    if MODELS[spec.model].keras is None:
        return {"status": f"not available: keras.applications has no {spec.model}"}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    model, init_s = timing.timed(lambda: _compiled_model(keras, spec))
    images, labels = host_batch(spec)

    def step(carry: None) -> None:
        model.train_on_batch(images, labels)

    _, figures = time_steps(step, None, lambda _: None, spec)
    gpus = tf.config.list_physical_devices("GPU")
    peak = mb(tf.config.experimental.get_memory_info("GPU:0")["peak"]) if gpus else None
    return {
        **figures,
        **compile_estimate(figures),
        "init_s": init_s,
        "peak_device_mb": peak,
        "device": "gpu" if gpus else "cpu",
        "note": f"jit_compile={model.jit_compile} ({spec.keras_jit_compile})",
    }


def _compiled_model(keras: Any, spec: RunSpec) -> Any:
    """The model compiled with Adam and sparse softmax cross-entropy: the row's "init"."""
    model = _model(keras, spec)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[spec.keras_jit_compile],
    )
    return model


def _model(keras: Any, spec: RunSpec) -> Any:
    """uint8 input -> ImageNet normalisation -> the keras.applications network, average-pooled -> Dense(2)
    -> float32 logits."""
    if spec.dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    shape = (spec.height, spec.width, 3)
    inputs = keras.Input(shape, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD))(x)
    name = MODELS[spec.model].keras
    options = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}  # normalised above
    x = getattr(keras.applications, name)(weights=None, include_top=False, pooling="avg", input_shape=shape, **options)(
        x
    )
    logits = keras.layers.Activation("linear", dtype="float32")(keras.layers.Dense(NUM_CLASSES)(x))
    return keras.Model(inputs, logits)
