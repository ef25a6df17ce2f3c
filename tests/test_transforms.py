"""Batched transforms against the seed's torchvision pipelines on PIL images.

Tolerances: validation transforms 1e-6; crop+resize vs F.interpolate / torchvision's
tensor resized_crop 1e-5; vs PIL one uint8 step (1/255, PIL rounds after each of its
two resize passes); flip rate within 0.02 of 1/2 over 10,000 images (4 sigma); crop box
distributions two-sample KS statistic < 0.03 (20,000 vs 10,000 draws; the 0.01%
critical value is 0.026); mean image over 5,000 draws within 0.2 per pixel and 0.04 on
average (normalised units; observed ~0.11 / 0.023; dropping the flip or the crop gives
~1.5 / 0.3).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from toynet.errors import ConfigError
from toynet.spec import TRANSFORMS
from toynet.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batch_flip_lr,
    batch_random_resized_crop,
    build_transforms,
    resized_crop,
    sample_crop_boxes,
    to_float,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def structured_image(channels: int, height: int, width: int) -> torch.Tensor:
    """uint8 (C, H, W): ramps, a checkerboard and an off-centre bright block; left != right."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    planes = [xx * 255 // (width - 1), yy * 255 // (height - 1), ((xx // 4 + yy // 4) % 2) * 255]
    img = torch.stack(planes[:channels]).to(torch.uint8)
    img[:, 3:10, width // 2 + 2 : width - 3] = 255
    return img


def image_batch(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """uint8 (n, C, H, W): random noise, with a few structured images in front."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    x[0] = structured_image(*shape)
    x[1] = 0
    x[2] = 255
    return x


def to_pil(img: torch.Tensor) -> Image.Image:
    array = img.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def seed_pipelines(name: str, channels: int, size: int) -> tuple[T.Compose, T.Compose]:
    """The seed's torchvision (train, val) pipelines; 1 channel uses the mean ImageNet stats."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    norm = [T.Normalize(mean, std)]
    if name == "none":
        return T.Compose([T.ToTensor()]), T.Compose([T.ToTensor()])
    crop = [T.RandomResizedCrop(size)] if name == "normal" else []
    train = T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), *norm])
    return train, T.Compose([T.ToTensor(), *norm])


def apply_pil(pipeline: T.Compose, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([pipeline(to_pil(img)) for img in x])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_val_transform_matches_torchvision(name: str, shape: tuple[int, int, int]) -> None:
    x = image_batch(16, shape)
    _, val = build_transforms(name, shape[0])
    _, reference = seed_pipelines(name, shape[0], shape[1])
    torch.testing.assert_close(val(x, None), apply_pil(reference, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_none_train_is_exactly_to_tensor(shape: tuple[int, int, int]) -> None:
    x = image_batch(16, shape)
    train, _ = build_transforms("none", shape[0])
    expected = apply_pil(T.Compose([T.ToTensor()]), x)
    assert torch.equal(train(x, torch.Generator().manual_seed(0)), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["basic", "normal"])
def test_train_transform_is_seeded_and_resumable(name: str, shape: tuple[int, int, int]) -> None:
    x = image_batch(64, shape)
    train, _ = build_transforms(name, shape[0])
    first = train(x, torch.Generator().manual_seed(1))
    assert torch.equal(first, train(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, train(x, torch.Generator().manual_seed(2)))

    gen = torch.Generator().manual_seed(3)
    train(x, gen)
    state = gen.get_state()  # what a checkpoint saves mid-epoch
    expected = train(x, gen)
    gen.set_state(state)
    assert torch.equal(train(x, gen), expected)


def test_transforms_survive_pickling() -> None:
    train, _ = build_transforms("normal", 3)
    x = image_batch(8, (3, 32, 32))
    copy = pickle.loads(pickle.dumps(train))
    assert torch.equal(copy(x, torch.Generator().manual_seed(0)), train(x, torch.Generator().manual_seed(0)))


def flipped_mask(out: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which outputs are exactly the mirrored input; fails if any is neither."""
    same = (out == plain).flatten(1).all(1)
    mirrored = (out == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()), "every output must be the input or its exact mirror"
    return mirrored & ~same


def test_flip_rate_is_one_half_and_flips_are_exact() -> None:
    n = 10_000
    x = torch.randint(0, 256, (n, 2, 3, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, :, :, 0] = 0  # no image is its own mirror, so every flip is visible
    x[:, :, :, -1] = 255
    flipped = flipped_mask(batch_flip_lr(x, torch.Generator().manual_seed(1)), x)
    assert abs(flipped.float().mean().item() - 0.5) < 0.02


def test_basic_train_flips_about_half_of_the_images() -> None:
    x = image_batch(4_000, (3, 8, 8))
    x[:, :, :, 0] = 0
    x[:, :, :, -1] = 255
    train, val = build_transforms("basic", 3)
    flipped = flipped_mask(train(x, torch.Generator().manual_seed(0)), val(x, None))
    assert abs(flipped.float().mean().item() - 0.5) < 0.03


def edge_boxes(height: int, width: int) -> torch.Tensor:
    """Whole image, single pixels, single rows and columns: the resize's corner cases."""
    return torch.tensor(
        [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, 1, 1),
         (5, 0, 1, width), (0, 7, height, 1)]
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_resized_crop_matches_interpolate_and_torchvision(shape: tuple[int, int, int]) -> None:
    _, height, width = shape
    gen = torch.Generator().manual_seed(0)
    boxes = torch.cat([sample_crop_boxes(64, height, width, gen), edge_boxes(height, width)])
    x = torch.rand(len(boxes), *shape, generator=gen)
    out = resized_crop(x, boxes)
    for k, (i, j, h, w) in enumerate(boxes.tolist()):
        crop = x[k : k + 1, :, i : i + h, j : j + w]
        expected = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)
        torchvision_out = TF.resized_crop(x[k], i, j, h, w, [height, width], antialias=True)
        torch.testing.assert_close(out[k], torchvision_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[-5], x[-5], atol=1e-6, rtol=0)  # whole-image box


@pytest.mark.parametrize("shape", SHAPES)
def test_resized_crop_matches_pil_within_one_level(shape: tuple[int, int, int]) -> None:
    _, height, width = shape
    x = image_batch(64, shape)
    sampled = sample_crop_boxes(59, height, width, torch.Generator().manual_seed(0))
    boxes = torch.cat([sampled, edge_boxes(height, width)])
    out = resized_crop(to_float(x), boxes)
    size = [height, width]
    crops = [TF.resized_crop(to_pil(img), *box, size) for img, box in zip(x, boxes.tolist())]
    expected = torch.stack([TF.to_tensor(crop) for crop in crops])
    diff = (out - expected).abs()
    assert diff.max().item() <= 1.01 / 255 and diff.mean().item() < 0.5 / 255


def test_resized_crop_flip_equals_torch_flip() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 32, 32, generator=gen)
    boxes = sample_crop_boxes(32, 32, 32, gen)
    flip = torch.arange(32) % 2 == 0
    plain = resized_crop(x, boxes)
    expected = torch.where(flip.view(-1, 1, 1, 1), plain.flip(-1), plain)
    torch.testing.assert_close(resized_crop(x, boxes, flip), expected, atol=1e-6, rtol=0)


def torchvision_boxes(
    n: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0)
) -> np.ndarray:
    """n draws of torchvision's RandomResizedCrop.get_params as (top, left, h, w) rows."""
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    return np.array([T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])


@pytest.mark.parametrize(("height", "width"), [(32, 32), (12, 40)])
def test_crop_box_distribution_matches_get_params(height: int, width: int) -> None:
    ours = sample_crop_boxes(20_000, height, width, torch.Generator().manual_seed(0)).double().numpy()
    theirs = torchvision_boxes(10_000, height, width).astype(float)

    def stats(b: np.ndarray) -> dict[str, np.ndarray]:
        top, left, h, w = b.T
        return {"area": h * w / (height * width), "log_aspect": np.log(w / h), "top": top, "left": left}

    for key, values in stats(ours).items():
        statistic = ks_2samp(values, stats(theirs)[key]).statistic
        assert statistic < 0.03, f"{key}: KS statistic {statistic:.4f}"
    assert np.all((ours[:, 2] >= 1) & (ours[:, 0] + ours[:, 2] <= height))
    assert np.all((ours[:, 3] >= 1) & (ours[:, 1] + ours[:, 3] <= width))


def test_crop_falls_back_to_get_params_central_box() -> None:
    # A 12x40 image cannot hold any full-area box with aspect in [3/4, 4/3]: every try fails.
    ours = sample_crop_boxes(50, 12, 40, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    theirs = torchvision_boxes(1, 12, 40, scale=(1.0, 1.0))
    assert (ours.numpy() == theirs).all()


def test_normal_train_mean_image_matches_torchvision() -> None:
    n = 5_000
    img = structured_image(3, 32, 32)
    train, _ = build_transforms("normal", 3)
    ours = train(img.expand(n, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0)).mean(0)
    pipeline, _ = seed_pipelines("normal", 3, 32)
    torch.manual_seed(0)
    pil = to_pil(img)
    theirs = torch.stack([pipeline(pil) for _ in range(n)]).mean(0)
    diff = (ours - theirs).abs()
    assert diff.max().item() < 0.2 and diff.mean().item() < 0.04


def test_batch_random_resized_crop_keeps_constant_images_constant() -> None:
    x = torch.full((16, 3, 32, 32), 0.25)
    out = batch_random_resized_crop(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_keep_shape_device_and_return_float32(
    name: str, shape: tuple[int, int, int], device: str
) -> None:
    x = image_batch(8, shape).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    for transform in build_transforms(name, shape[0]):
        out = transform(x, gen)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device


def test_unknown_transform_name_raises_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_transforms("fancy", 3)
    message = str(info.value)
    assert "'fancy'" in message and all(name in message for name in TRANSFORMS)
    with pytest.raises(ConfigError, match="channels"):
        build_transforms("basic", 2)


def test_transforms_reject_non_uint8_batches() -> None:
    train, _ = build_transforms("normal", 3)
    with pytest.raises(ValueError, match="uint8"):
        train(torch.rand(2, 3, 32, 32), None)
