"""The PyTorch worker: a step of the benchmark model in channels_last, bf16 autocast and torch.compile if asked."""

from __future__ import annotations

import os

import torch
import torchvision

from bcjax.normalization import IMAGENET_MEAN, IMAGENET_STD
from benchmarking import timing
from benchmarking.models import MODELS
from benchmarking.protocol import LEARNING_RATE, NUM_CLASSES, RunSpec, compile_estimate, host_batch, mb, time_steps


def run(spec: RunSpec) -> dict:
    """A step of the benchmark model in channels_last, optionally under bfloat16 autocast and torch.compile."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    (model, optimizer), init_s = timing.timed(lambda: _model_and_optimizer(spec, device))
    step = _step(spec, device, model, optimizer)

    def sync(carry: None) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    _, figures = time_steps(step, None, sync, spec)
    peak = mb(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    return {
        **figures,
        **compile_estimate(figures),
        "init_s": init_s,
        "peak_device_mb": peak,
        "device": "gpu" if device.type == "cuda" else "cpu",
        "note": f"{'torch.compile' if spec.torch_compile else 'eager'}, {torch.get_num_threads()} threads",
    }


def _model_and_optimizer(spec: RunSpec, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The benchmark model (2 classes) in channels_last on `device`, and its Adam: the row's "init"."""
    model = build_model(spec.model).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    return (torch.compile(model) if spec.torch_compile else model), optimizer


def build_model(name: str) -> torch.nn.Module:
    """`name` as `benchmarking.models` describes it: backbone -> global average pool -> Linear(2)."""
    builder = MODELS[name].torch
    if builder == "ernet":
        from benchmarking import torch_ernet

        return torch_ernet.ERNet(name, num_classes=NUM_CLASSES)
    network = getattr(torchvision.models, builder)(num_classes=NUM_CLASSES)
    if MODELS[name].torch_is_resnet:
        return network
    features = network.features
    width = [m for m in features.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
    return torch.nn.Sequential(
        features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, NUM_CLASSES)
    )


def _step(spec: RunSpec, device: torch.device, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """One training step on the host's uint8 batch: transfer, normalise, forward, backward, update."""
    images, labels = host_batch(spec)
    host_images = torch.from_numpy(images).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
    host_labels = torch.from_numpy(labels).long()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    autocast = spec.dtype == "bfloat16"

    def step(carry: None) -> None:
        x = host_images.to(device).float().div_(255).sub_(mean).div_(std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), host_labels.to(device)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
