"""The seed's three transform pipelines as batched tensor ops on the data's own device.

The seed used torchvision pipelines on PIL images, one image at a time:

* ``none``:   ToTensor (train and val);
* ``basic``:  train RandomHorizontalFlip + ToTensor + Normalize; val ToTensor + Normalize;
* ``normal``: train RandomResizedCrop(original size) + RandomHorizontalFlip + ToTensor +
  Normalize; val ToTensor + Normalize.

Here every transform maps a uint8 (N, C, H, W) batch to float32 (N, C, H, W) on the
same device, with independent randomness per image drawn only from the generator
passed in. That generator must live on the batch's device
(``torch.Generator(device=x.device)``); saving ``generator.get_state()`` with a
checkpoint makes the augmentation stream resumable. ``None`` uses torch's default
generator for that device.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from toynet.errors import ConfigError
from toynet.spec import TRANSFORMS

BatchTransform = Callable[[Tensor, torch.Generator | None], Tensor]

# ImageNet statistics, as in the seed. One channel uses the mean of the three channels'
# values, the usual grayscale equivalent: mean 0.449, std 0.226.
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
GRAY_MEAN: tuple[float, ...] = (0.449,)
GRAY_STD: tuple[float, ...] = (0.226,)

# torchvision's RandomResizedCrop.get_params tries this many boxes before falling back.
_CROP_TRIES = 10
DEFAULT_SCALE: tuple[float, float] = (0.08, 1.0)
DEFAULT_RATIO: tuple[float, float] = (3 / 4, 4 / 3)


def build_transforms(name: str, channels: int) -> tuple[BatchTransform, BatchTransform]:
    """(train, val) transforms of the seed pipeline ``name`` for ``channels``-channel images.

    Both take ``(x, generator)`` with x uint8 (N, C, H, W) and return float32 (N, C, H, W)
    on x's device; val transforms ignore the generator. The returned callables are
    picklable. Unknown names or channel counts other than 1 or 3 raise ConfigError.
    """
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transforms {name!r}; expected one of {list(TRANSFORMS)}")
    if channels not in (1, 3):
        raise ConfigError(f"transforms need 1 or 3 image channels, got {channels}")
    if name == "none":
        return to_float, to_float
    mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    val = functools.partial(_val_normalized, mean=mean, std=std)
    train_fn = _train_basic if name == "basic" else _train_normal
    return functools.partial(train_fn, mean=mean, std=std), val


def to_float(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 (N, C, H, W) -> new float32 (N, C, H, W) in [0, 1]; equals torchvision's ToTensor."""
    _check_uint8_batch(x)
    return x.to(torch.float32).div_(255)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> Tensor:
    """Per-channel ``(x - mean) / std`` of a float (N, C, H, W) batch, as torchvision's Normalize.

    Returns a new tensor unless ``inplace``, in which case x is overwritten and returned.
    """
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), x.dtype, x.device)
    out = x if inplace else x.clone()
    # sub_ then div_ (not a multiply by 1/std) so results match torchvision bit for bit.
    return out.sub_(mean_t).div_(std_t)


def batch_flip_lr(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Mirror each (C, H, W) image left-right with probability 1/2, independently.

    Any dtype; returns a new tensor of x's shape, dtype and device.
    """
    flip = _coin_flips(x.shape[0], generator, x.device)  # (N,) bool
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_random_resized_crop(
    x: Tensor,
    generator: torch.Generator | None,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Tensor:
    """torchvision's RandomResizedCrop(size=(H, W)) with its default bilinear resize, per image.

    x is float (N, C, H, W); returns a new tensor of the same shape, dtype and device.
    """
    n, _, height, width = x.shape
    boxes = sample_crop_boxes(n, height, width, generator, x.device, scale, ratio)
    return resized_crop(x, boxes)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Tensor:
    """n crop boxes drawn as torchvision's ``RandomResizedCrop.get_params``, vectorised.

    Returns int64 (n, 4) rows ``(top, left, h, w)``. Per image: up to 10 tries of
    area ~ U(scale) * H * W and log aspect ~ U(log ratio), w = round(sqrt(area * r)),
    h = round(sqrt(area / r)); the first try with 0 < w <= W and 0 < h <= H wins and its
    corner is uniform over the valid positions; otherwise the central crop clamped to
    the ratio bounds. All tries are drawn at once, so every image consumes the same
    amount of randomness whichever try it accepts.
    """
    # (n, 22): 10 area draws, 10 log-ratio draws, then the top and left positions.
    u = torch.rand((n, 2 * _CROP_TRIES + 2), generator=generator, device=device)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    area = (height * width) * (scale[0] + (scale[1] - scale[0]) * u[:, :_CROP_TRIES])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _CROP_TRIES : 2 * _CROP_TRIES])
    # torch.round rounds half to even, like Python's round in get_params.
    w = torch.round(torch.sqrt(area * aspect))  # (n, 10)
    h = torch.round(torch.sqrt(area / aspect))  # (n, 10)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # argmax returns the first maximum: the first valid try (0 if none, replaced below).
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # (n, 1)
    found = valid.any(dim=1)  # (n,)
    fb_h, fb_w = _fallback_size(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fb_h))
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fb_w))
    # floor(u * count) is uniform on {0, ..., count - 1}; the clamp guards float32 rounding up.
    top = torch.minimum(torch.floor(u[:, -2] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u[:, -1] * (width - w + 1)), width - w)
    top = torch.where(found, top, float((height - fb_h) // 2))
    left = torch.where(found, left, float((width - fb_w) // 2))
    return torch.stack((top, left, h, w), dim=1).long()


def resized_crop(x: Tensor, boxes: Tensor, flip: Tensor | None = None) -> Tensor:
    """Crop each image to its box and resize it back to (H, W), optionally mirrored.

    x: float (N, C, H, W); boxes: (N, 4) integer ``(top, left, h, w)`` inside the image;
    flip: optional (N,) bool, mirror those outputs left-right. Equals, per image,
    ``F.interpolate(crop, (H, W), mode="bilinear", align_corners=False)`` (torchvision's
    tensor resize; antialiasing is a no-op when upsampling), followed by the flip.
    Returns a new tensor of x's shape, dtype and device.
    """
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(device=x.device, dtype=x.dtype).unbind(dim=1)  # (N,) each
    ys = _grid_coords(top, h, height)  # (N, H)
    xs = _grid_coords(left, w, width)  # (N, W)
    if flip is not None:
        # Mirroring the output = reading its source columns in reverse order.
        xs = torch.where(flip.view(-1, 1), xs.flip(1), xs)
    # grid[n, r, c] = (x, y) source of output pixel (r, c): (N, H, W, 2).
    shape = (n, height, width)
    grid = torch.stack((xs.unsqueeze(1).expand(shape), ys.unsqueeze(2).expand(shape)), dim=3)
    # Coordinates already lie inside the box; "border" only absorbs float rounding at the edge.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grid_coords(start: Tensor, length: Tensor, size: int) -> Tensor:
    """(N, size) grid_sample coordinates resizing the span [start, start + length) to ``size``.

    The source pixel of output o is interpolate's align_corners=False coordinate
    (o + 0.5) * length / size - 0.5, clamped to the span as interpolate clamps it to the
    crop, then mapped to grid_sample's [-1, 1] convention (pixel p -> (2p + 1) / size - 1).
    """
    o = torch.arange(size, device=start.device, dtype=start.dtype)  # (size,)
    src = (o + 0.5) * (length / size).unsqueeze(1) - 0.5  # (N, size), crop coordinates
    src = torch.minimum(src.clamp_min(0), (length - 1).unsqueeze(1)) + start.unsqueeze(1)
    return (2 * src + 1) / size - 1


def _fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(h, w) of get_params' central fallback crop: the whole image, clamped to ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _coin_flips(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    # Same test as RandomHorizontalFlip(p=0.5): flip when rand < p.
    return torch.rand(n, generator=generator, device=device) < 0.5


def _val_normalized(
    x: Tensor, generator: torch.Generator | None = None, *, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    return normalize(to_float(x), mean, std, inplace=True)


def _train_basic(
    x: Tensor, generator: torch.Generator | None, *, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    _check_uint8_batch(x)
    # Flip the uint8 batch: a quarter of the bytes of flipping floats, same result.
    return normalize(to_float(batch_flip_lr(x, generator)), mean, std, inplace=True)


def _train_normal(
    x: Tensor, generator: torch.Generator | None, *, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    _check_uint8_batch(x)
    n, _, height, width = x.shape
    boxes = sample_crop_boxes(n, height, width, generator, x.device)
    flip = _coin_flips(n, generator, x.device)
    # Crop, resize and flip in one pass; normalise the result in place.
    out = resized_crop(to_float(x), boxes, flip)
    return normalize(out, mean, std, inplace=True)


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    # Built once per (stats, dtype, device): avoids a host-to-device copy on every batch.
    def as_tensor(values: tuple[float, ...]) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)

    return as_tensor(mean), as_tensor(std)


def _check_uint8_batch(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 (N, C, H, W) batch, got {x.dtype} of shape {tuple(x.shape)}")
