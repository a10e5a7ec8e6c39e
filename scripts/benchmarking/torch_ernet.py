"""ERNet in PyTorch, for the benchmark's side-by-side runs: a torchvision ResNet with the enhanced
connections of `bcjax/models/ernet.py` (whose docstring defines the block and its options).

The ResNet's own modules keep torchvision's names, so its state dict is torchvision's plus the
`enhanced.{stage}.{block}.{i}.{weight, bn.*}` entries; tests/test_ernet.py loads the same weights
into both and compares logits.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

ARCHITECTURES = {
    "ernet18": (BasicBlock, (2, 2, 2, 2)),
    "ernet34": (BasicBlock, (3, 4, 6, 3)),
    "ernet50": (Bottleneck, (3, 4, 6, 3)),
    "ernet101": (Bottleneck, (3, 4, 23, 3)),
}


class EnhancedConnection(nn.Module):
    """ER(z) = w * BN(z) per channel; starts at zero, or as the identity in eval mode for the newest map."""

    def __init__(self, channels: int, *, newest: bool):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.weight = nn.Parameter(torch.full((channels,), 1.0 if newest else 0.0))
        if newest:
            nn.init.constant_(self.bn.weight, math.sqrt(1.0 + self.bn.eps))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.bn(z) * self.weight.view(1, -1, 1, 1)


def _branches(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual branch, shortcut) of a torchvision BasicBlock or Bottleneck."""
    convs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, Bottleneck):
        convs.append((block.conv3, block.bn3))
    y = x
    for k, (conv, bn) in enumerate(convs):
        y = bn(conv(y))
        if k < len(convs) - 1:
            y = block.relu(y)
    return y, (block.downsample(x) if block.downsample is not None else x)


class ERNet(torchvision.models.ResNet):
    """torchvision's ResNet of the ERNet's depth with enhanced residual blocks (layout v1.5);
    `ERNet("ernet50", num_classes=2)` is the benchmark's model."""

    def __init__(self, arch: str = "ernet50", num_classes: int = 1000, *, newest_map="identity", er_input="post"):
        block, depths = ARCHITECTURES[arch]
        super().__init__(block, list(depths), num_classes=num_classes)
        self.newest_map, self.er_input = newest_map, er_input
        extra = int(newest_map == "normalized")
        self.enhanced = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(EnhancedConnection(_out_channels(b), newest=i == j) for i in range(j + extra))
                for j, b in enumerate(stage)
            )
            for stage in self._stages()
        )

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _run_stage(self, stage: nn.Sequential, connections: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """As `bcjax.models.ernet.ERNet.run_stage`."""
        older, before_relu = [], None
        for j, (block, ers) in enumerate(zip(stage, connections)):
            residual, shortcut = _branches(block, x)
            newest = shortcut if j == 0 else x
            *on_older, on_newest = list(ers) if self.newest_map == "normalized" else [*ers, None]
            total = residual + (newest if on_newest is None else on_newest(newest))
            for er, f in zip(on_older, older):
                total = total + er(f)
            older.append(before_relu if before_relu is not None and self.er_input == "pre" else newest)
            before_relu = total
            x = torch.relu(total)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, connections in zip(self._stages(), self.enhanced):
            x = self._run_stage(stage, connections, x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _out_channels(block: nn.Module) -> int:
    return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features
