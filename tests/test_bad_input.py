"""Bad input, table-driven: one clear line, exit status 2, no traceback, no Ray, nothing written.

Each case runs an entry point's ``main`` in-process (fast); two cases also run as real
processes to show what a user's terminal gets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from orchestration import artifacts as artifacts_cli
from orchestration import grid
from tests.test_data import make_mnist
from toynet import train

REPO = Path(__file__).resolve().parents[1]


def _config(tmp: Path, body: str) -> str:
    path = tmp / "grid.yaml"
    path.write_text(body)
    return str(path)


GOOD = "experiment: t\ngrid: {dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 1}\n"


def _truncated_mnist(tmp: Path) -> str:
    make_mnist(tmp / "data")
    images = next((tmp / "data" / "MNIST" / "raw").glob("train-images*"))
    images.write_bytes(images.read_bytes()[:1000])
    return str(tmp / "data")


def _empty_store(tmp: Path) -> str:
    (tmp / "store").mkdir()
    return str(tmp / "store")


def _store_with_one_run(tmp: Path, damage: str) -> str:
    """A store holding one complete run, then damaged: tampered weights or corrupt Parquet."""
    from orchestration.store import ArtifactStore
    from tests.test_store import make_record, write

    store = ArtifactStore(tmp / "store", tensorboard=False)
    record = write(store, make_record("exp"))
    (attempt,) = [p for p in (tmp / "store" / "exp" / "runs" / record.run_id).iterdir() if p.is_dir()]
    target = attempt / ("weights.pt" if damage == "weights" else "run.parquet")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return str(tmp / "store")


def _not_a_dir(tmp: Path) -> str:
    (tmp / "file").write_text("a file, not a directory\n")
    return str(tmp / "file" / "artifacts")


# (id, entry point, argv builder(tmp) -> list[str], words the message must contain)
Case = tuple[str, Callable, Callable[[Path], list[str]], tuple[str, ...]]
GRID: list[Case] = [
    ("malformed yaml", grid.main, lambda t: ["--config", _config(t, "grid: {dataset: [digits\n")], ("grid.yaml",)),
    ("config not a mapping", grid.main, lambda t: ["--config", _config(t, "- 1\n- 2\n")], ("grid.yaml", "mapping")),
    ("missing config file", grid.main, lambda t: ["--config", str(t / "nope.yaml")], ("nope.yaml",)),
    ("unknown top-level key", grid.main, lambda t: ["--config", _config(t, GOOD + "colour: red\n")], ("colour",)),
    ("unknown nested key", grid.main, lambda t: ["--config", _config(t, GOOD + "resources: {cpus: 1}\n")], ("cpus",)),
    ("wrong type", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("batch_size: 32", "batch_size: big"))], ("batch_size",)),
    ("empty grid", grid.main, lambda t: ["--config", _config(t, "experiment: t\ngrid: []\n")], ("grid",)),
    ("batch size zero", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("batch_size: 32", "batch_size: 0"))], ("batch_size",)),
    ("negative epochs", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("epochs: 1", "epochs: -1"))], ("epochs",)),
    ("unknown dataset", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("digits", "imagenet"))], ("imagenet",)),
    ("unknown transform", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("none", "fancy"))], ("fancy",)),
    ("unknown flag", grid.main, lambda t: ["--config", _config(t, GOOD), "--bogus"], ("--bogus",)),
    ("bad flag value", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--workers-per-trial", "0"], ("--workers-per-trial",)),
    ("negative retries", grid.main, lambda t: ["--config", _config(t, GOOD), "--max-retries", "-1"], ("--max-retries",)),
    ("unknown compile mode", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--compile", "fast", "--dry-run"], ("--compile", "reduce-overhead")),
    ("gpus on a gpu-less machine", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--gpus-per-worker", "1", "--dry-run"], ("no GPUs",)),
    ("more workers than cpus", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--workers-per-trial", "64", "--dry-run"], ("64 worker",)),
    ("experiment escaping the root", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--experiment", "../x"], ("../x",)),
    ("data dir missing, download off", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("digits", "mnist")), "--data-dir", str(t / "no-data"),
                "--artifacts", str(t / "a")], ("mnist", "no-data")),
    ("truncated dataset file", grid.main,
     lambda t: ["--config", _config(t, GOOD.replace("digits", "mnist")), "--data-dir", _truncated_mnist(t),
                "--artifacts", str(t / "a")], ("train-images",)),
    ("artifacts root not writable", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--artifacts", _not_a_dir(t)], ("artifacts",)),
    ("inject-fault malformed", grid.main,
     lambda t: ["--config", _config(t, GOOD), "--inject-fault", "when=now"], ("--inject-fault",)),
]
TRAIN: list[Case] = [
    ("train: unknown dataset", train.main,
     lambda t: ["--dataset", "imagenet", "--batch-size", "8", "--epochs", "1", "--out", str(t / "o")], ("imagenet",)),
    ("train: batch size zero", train.main,
     lambda t: ["--dataset", "digits", "--batch-size", "0", "--epochs", "1", "--out", str(t / "o")], ("batch_size",)),
    ("train: unknown transform", train.main,
     lambda t: ["--dataset", "digits", "--batch-size", "8", "--epochs", "1", "--transforms", "x",
                "--out", str(t / "o")], ("'x'",)),
    ("train: cuda absent", train.main,
     lambda t: ["--dataset", "digits", "--batch-size", "8", "--epochs", "1", "--device", "cuda",
                "--out", str(t / "o")], ("CUDA",)),
    ("train: unknown compile mode", train.main,
     lambda t: ["--dataset", "digits", "--batch-size", "8", "--epochs", "1", "--compile", "fast",
                "--out", str(t / "o")], ("--compile", "'fast'")),
    ("train: non-integer epochs", train.main,
     lambda t: ["--dataset", "digits", "--batch-size", "8", "--epochs", "two"], ("--epochs",)),
]
CLI: list[Case] = [
    ("artifacts: tampered weights", artifacts_cli.main,
     lambda t: ["--root", _store_with_one_run(t, "weights"), "show", "exp/" + _run_id()], ("sha256", "fails verification")),
    ("artifacts: corrupt parquet", artifacts_cli.main,
     lambda t: ["--root", _store_with_one_run(t, "parquet"), "compare", "exp"], ("run.parquet",)),
    ("artifacts: unknown experiment", artifacts_cli.main,
     lambda t: ["--root", _empty_store(t), "runs", "nope"], ("nope",)),
    ("artifacts: experiment escaping the root", artifacts_cli.main,
     lambda t: ["--root", str(t / "store"), "runs", "../etc"], ("../etc",)),
]


def _run_id() -> str:
    from tests.test_store import make_record

    return make_record("exp").run_id


def _call(main: Callable, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse reports bad flags by exiting
        return int(exc.code)


@pytest.mark.parametrize("case", GRID + TRAIN + CLI, ids=[c[0] for c in GRID + TRAIN + CLI])
def test_bad_input_gives_one_clear_line(case: Case, tmp_path, capsys):
    _, main, argv, words = case
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = argv(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = _call(main, args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    # Nothing written: the tmp dir holds only what the case itself prepared.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == made
    assert before == [] or before == made
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


@pytest.mark.parametrize("argv", [
    [sys.executable, "orchestration/grid.py", "--config", "configs/missing.yaml"],
    [sys.executable, "-m", "toynet.train", "--dataset", "digits", "--batch-size", "8", "--epochs", "1",
     "--device", "cuda:0"],
], ids=["grid.py", "toynet.train"])
def test_bad_input_in_a_real_process(argv):
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
