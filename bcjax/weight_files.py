"""Readers for the weight files the frameworks publish: file -> {their key: float32 array}.

torchvision `.pth` state dicts go through `torch.load(weights_only=True)` (never plain
pickle); timm `model.safetensors` through safetensors' numpy API, no torch; Keras legacy
HDF5 weights (the published `*_tf_kernels[_notop].h5`, or a full-model `.h5` holding them
under `model_weights`) through h5py, no TensorFlow. Each library is imported only by its
reader, so the trainer and the other readers run without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bcjax.pretrained import ConversionError


def read_torch(path: Path) -> dict[str, np.ndarray]:
    """A torchvision state dict; refuses pickles that hold anything but named tensors."""
    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(
            f"{path} is not a torchvision state dict (a mapping of names to tensors); "
            "pass the .pth file that torchvision.models downloads"
        )
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A timm `model.safetensors`."""
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(path).items()}


def read_keras(path: Path) -> dict[str, np.ndarray]:
    """A Keras 2 legacy HDF5 weights file, keyed "layer/leaf" (e.g. "conv1_conv/kernel")."""
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ConversionError(
                f"{path} is not a legacy Keras HDF5 weights file (no 'layer_names'); "
                "use the published *_tf_kernels*.h5 file (Keras 3 .weights.h5 is not read)"
            )
        tensors = {}
        for layer in map(_decode, root.attrs["layer_names"]):
            group = root[layer]
            for weight in map(_decode, group.attrs["weight_names"]):
                leaf = weight.rsplit("/", 1)[-1].removesuffix(":0")
                tensors[f"{layer}/{leaf}"] = np.asarray(group[weight], np.float32)
    return tensors


def _decode(name: bytes | str) -> str:
    """HDF5 string attributes come back as bytes (Keras 2 wrote fixed-length ASCII) or str."""
    return name.decode("utf8") if isinstance(name, bytes) else str(name)
