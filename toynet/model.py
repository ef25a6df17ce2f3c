"""ToyNet: the seed's ~0.063M-parameter CNN, with or without batch norm.

Attribute names (``conv1``..``conv5``, ``bn0``..``bn5``, ``linear``) are the published
state_dict keys, so the original weight files load with ``strict=True``:

* without BN: ``conv{k}.weight``, ``conv{k}.bias`` (k = 1..5), ``linear.weight``,
  ``linear.bias`` -- 12 entries;
* with BN: ``bn0.*``, then ``conv{k}.weight``, ``bn{k}.*`` (k = 1..5), then ``linear.*``
  -- 37 entries (each ``bn`` holds weight, bias, running_mean, running_var,
  num_batches_tracked).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toynet.errors import ConfigError
from toynet.spec import INPUT_SHAPES, NUM_CLASSES

# (out_channels, stride) of conv1..conv5; all are 3x3 with padding 1.
_CONVS: tuple[tuple[int, int], ...] = ((6, 1), (18, 2), (32, 2), (48, 1), (96, 1))


class ToyNet(nn.Module):
    """Five 3x3 convs (ReLU, then optional BN), global average pooling, one linear layer.

    With ``bn=True`` the input is batch-normalised (``bn0``), each ReLU is followed by a
    BatchNorm2d and the convs drop their bias (the BN shift replaces it). Works for any
    input size; the seed uses 28x28 (MNIST, 1 channel) and 32x32 (CIFAR-10, 3 channels).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, bn: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.bn = bn
        # Registration order fixes the state_dict key order: bn0, conv1, bn1, ..., linear.
        self.bn0 = _norm(in_channels, bn)
        channels = in_channels
        for k, (out, stride) in enumerate(_CONVS, start=1):
            conv = nn.Conv2d(channels, out, kernel_size=3, stride=stride, padding=1, bias=not bn)
            setattr(self, f"conv{k}", conv)
            setattr(self, f"bn{k}", _norm(out, bn))
            channels = out
        self.linear = nn.Linear(channels, num_classes)

    @classmethod
    def for_dataset(cls, dataset: str, bn: bool) -> ToyNet:
        """The ToyNet for one of ``spec.INPUT_SHAPES``' datasets; unknown names raise ConfigError."""
        if dataset not in INPUT_SHAPES:
            raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(INPUT_SHAPES)}")
        return cls(in_channels=INPUT_SHAPES[dataset][0], num_classes=NUM_CLASSES, bn=bn)

    def forward(self, x: Tensor) -> Tensor:
        """Float (N, C, H, W) images -> (N, num_classes) logits."""
        x = self.bn0(x)
        for k in range(1, len(_CONVS) + 1):
            conv: nn.Module = getattr(self, f"conv{k}")
            norm: nn.Module = getattr(self, f"bn{k}")
            x = norm(torch.relu(conv(x)))
        # (N, 96, h, w) -> (N, 96): global average pooling.
        return self.linear(x.mean(dim=(2, 3)))


def _norm(channels: int, bn: bool) -> nn.Module:
    # Identity holds no state, so the BN-free state_dict keeps exactly the 12 published keys.
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
