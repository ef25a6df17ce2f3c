"""ToyNet: parameter counts, published state_dict names and shapes, forward shapes, save/load."""

from __future__ import annotations

import pytest
import torch

from toynet.errors import ConfigError
from toynet.model import ToyNet, count_parameters

# (out_channels) of conv1..conv5, written out here independently of toynet.model.
CONV_OUT = (6, 18, 32, 48, 96)
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def published_state_dict(in_channels: int, bn: bool, classes: int = 10) -> dict[str, torch.Tensor]:
    """The seed's weight-file layout: key order and shapes, filled with random values."""
    gen = torch.Generator().manual_seed(in_channels * 10 + bn)
    state: dict[str, torch.Tensor] = {}

    def add_bn(name: str, channels: int) -> None:
        state[f"{name}.weight"] = torch.rand(channels, generator=gen) + 0.5
        state[f"{name}.bias"] = torch.randn(channels, generator=gen)
        state[f"{name}.running_mean"] = torch.randn(channels, generator=gen)
        state[f"{name}.running_var"] = torch.rand(channels, generator=gen) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(1234)

    if bn:
        add_bn("bn0", in_channels)
    channels = in_channels
    for k, out in enumerate(CONV_OUT, start=1):
        state[f"conv{k}.weight"] = torch.randn(out, channels, 3, 3, generator=gen) * 0.2
        if bn:
            add_bn(f"bn{k}", out)
        else:
            state[f"conv{k}.bias"] = torch.randn(out, generator=gen) * 0.1
        channels = out
    state["linear.weight"] = torch.randn(classes, 96, generator=gen) * 0.1
    state["linear.bias"] = torch.randn(classes, generator=gen)
    return state


@pytest.mark.parametrize(
    ("in_channels", "bn", "expected"),
    [(1, False, 62_676), (3, False, 62_784), (1, True, 62_878), (3, True, 62_990)],
)
def test_parameter_counts_are_pinned(in_channels: int, bn: bool, expected: int) -> None:
    assert count_parameters(ToyNet(in_channels=in_channels, num_classes=10, bn=bn)) == expected


def test_count_parameters_skips_frozen_parameters() -> None:
    model = ToyNet(in_channels=3, bn=False)
    model.linear.requires_grad_(False)
    assert count_parameters(model) == 62_784 - (96 * 10 + 10)


def test_state_dict_keys_without_bn_are_exactly_the_published_ones() -> None:
    expected = [f"conv{k}.{p}" for k in range(1, 6) for p in ("weight", "bias")]
    expected += ["linear.weight", "linear.bias"]
    assert list(ToyNet(in_channels=3, bn=False).state_dict()) == expected
    assert len(expected) == 12


def test_state_dict_keys_with_bn_are_exactly_the_published_ones() -> None:
    expected = [f"bn0.{s}" for s in BN_SUFFIXES]
    for k in range(1, 6):
        expected += [f"conv{k}.weight"] + [f"bn{k}.{s}" for s in BN_SUFFIXES]
    expected += ["linear.weight", "linear.bias"]
    assert list(ToyNet(in_channels=1, bn=True).state_dict()) == expected
    assert len(expected) == 37


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize(("dataset", "shape"), [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_published_weights_load_strictly(bn: bool, dataset: str, shape: tuple[int, int, int]) -> None:
    state = published_state_dict(shape[0], bn)
    model = ToyNet.for_dataset(dataset, bn=bn)
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    logits = model.eval()(torch.rand(2, *shape))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 24)])
def test_forward_returns_logits_per_image(bn: bool, shape: tuple[int, int, int]) -> None:
    model = ToyNet(in_channels=shape[0], num_classes=7, bn=bn)
    for mode in (model.train, model.eval):
        mode()
        out = model(torch.rand(5, *shape))
        assert out.shape == (5, 7) and out.dtype == torch.float32


def test_for_dataset_matches_spec_and_rejects_unknown_names() -> None:
    assert ToyNet.for_dataset("digits", bn=True).conv1.in_channels == 1
    assert ToyNet.for_dataset("cifar10", bn=False).conv1.in_channels == 3
    with pytest.raises(ConfigError, match="'svhn'"):
        ToyNet.for_dataset("svhn", bn=True)


@pytest.mark.parametrize("bn", [False, True])
def test_save_and_weights_only_load_reproduce_outputs(bn: bool, tmp_path) -> None:
    torch.manual_seed(0)
    model = ToyNet(in_channels=3, bn=bn)
    model(torch.rand(8, 3, 32, 32))  # a train-mode pass moves the BN running statistics
    model.eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)

    restored = ToyNet(in_channels=3, bn=bn)
    restored.load_state_dict(torch.load(path, weights_only=True))
    restored.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
