"""Retrieval: compare (seed layout and order, seeds, reference), plot, export and the CLI."""

from __future__ import annotations

import csv
import io
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from orchestration import compare as cmp
from orchestration.artifacts import main
from orchestration.records import StoreError
from orchestration.store import ArtifactStore
from tests.test_store import make_record, write

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFERENCE = """dataset,bn,epochs,batch_size,transforms,loss,acc,val_loss,val_acc
mnist,false,10,32,none,0.0011,0.9998,0.0320,0.9919
mnist,true,10,32,none,0.0036,0.9993,0.0170,0.9937
cifar10,true,60,32,basic,0.1881,0.9335,0.7040,0.8028
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store with a small grid: MNIST 10 epochs BN on/off × 2 seeds, CIFAR-10 points, one failure."""
    store = ArtifactStore(tmp_path / "artifacts", tensorboard=False)
    for seed, (off, on) in enumerate([(0.990, 0.993), (0.992, 0.995)]):
        write(store, make_record("grid", dataset="mnist", bn=False, epochs=10, seed=seed, final_val_acc=off))
        write(store, make_record("grid", dataset="mnist", bn=True, epochs=10, seed=seed, final_val_acc=on))
    write(store, make_record("grid", dataset="cifar10", bn=True, epochs=60, transforms="basic", final_val_acc=0.80))
    write(store, make_record("grid", dataset="cifar10", bn=False, epochs=60, transforms="normal", status="failed"))
    write(store, make_record("other", dataset="mnist", bn=True, epochs=10, final_val_acc=0.97))
    return tmp_path / "artifacts"


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "seed_results.csv"
    path.write_text(REFERENCE)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- comparison logic ----------------------------------------------------------------

def test_seed_order_reproduces_the_published_tables() -> None:
    """Shuffled seed rows sorted by seed_order come back in seed.md's order."""
    path = REPO / "configs" / "reference" / "seed_results.csv"
    rows = list(csv.DictReader(path.open()))
    keys = [(r["dataset"], r["bn"] == "true", int(r["epochs"]), int(r["batch_size"]), r["transforms"]) for r in rows]
    shuffled = random.Random(0).sample(keys, len(keys))
    assert sorted(shuffled, key=lambda k: cmp.seed_order(*k)) == keys


def test_seed_order_on_hand_picked_rows() -> None:
    """The order seed.md shows: MNIST first; then epochs, batch, None/Basic/Normal, BN off before on."""
    expected = [("mnist", False, 10, 32, "none"), ("mnist", True, 10, 32, "none"), ("mnist", False, 60, 64, "none"),
                ("cifar10", True, 60, 32, "none"), ("cifar10", False, 60, 32, "basic"), ("cifar10", True, 60, 32, "normal"),
                ("cifar10", False, 60, 64, "none"), ("cifar10", True, 180, 32, "normal"), ("cifar10", True, 240, 256, "normal"),
                ("digits", True, 3, 32, "none")]
    assert sorted(reversed(expected), key=lambda k: cmp.seed_order(*k)) == expected


def test_compare_gives_mean_std_and_n_per_point_and_the_reference_difference(root: Path, reference: Path) -> None:
    runs = ArtifactStore(root).runs("grid")
    result = cmp.compare(runs, cmp.load_reference(reference))
    points = [(r.point["dataset"], r.point["bn"], r.n) for r in result.rows]
    assert points == [("mnist", False, 2), ("mnist", True, 2), ("cifar10", True, 1)]
    assert result.failed == 1 and result.extra_columns == []
    nobn = result.rows[0]
    assert nobn.mean["val_acc"] == pytest.approx(0.991)
    assert nobn.std["val_acc"] == pytest.approx(0.0014142, abs=1e-6)  # sample std of 0.990, 0.992
    assert nobn.reference["val_acc"] == 0.9919
    assert nobn.delta("val_acc") == pytest.approx(0.991 - 0.9919)


def test_compare_keeps_experiments_apart_unless_pooled(root: Path) -> None:
    store = ArtifactStore(root)
    both = cmp.combined_runs([store.runs("grid"), store.runs("other")])
    apart = cmp.compare(both)
    assert "experiment" in apart.extra_columns
    assert [(r.point["bn"], r.point["experiment"], r.n) for r in apart.rows[:3]] == [
        (False, "grid", 2), (True, "grid", 2), (True, "other", 1)]
    pooled = cmp.compare(both, pool=True)
    assert [r.n for r in pooled.rows[:2]] == [2, 3]


def test_compare_shows_a_column_for_any_other_varying_setting(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a", tensorboard=False)
    write(store, make_record("lr", lr=0.1))
    write(store, make_record("lr", lr=0.01))
    result = cmp.compare(store.runs("lr"))
    assert result.extra_columns == ["lr"] and len(result.rows) == 2
    assert "| LR |" in cmp.to_markdown(result)
    # The same non-seed setting everywhere still gets a column: a subset run must not pass for a full one.
    write(store, make_record("subset", train_limit=2000))
    result = cmp.compare(store.runs("subset"))
    assert result.extra_columns == ["train_limit"] and "| Train limit |" in cmp.to_markdown(result)
    assert cmp.compare(ArtifactStore(store.root).runs("lr"), pool=True).extra_columns == ["lr"]


@pytest.mark.parametrize("content, message", [
    ("dataset,bn\nmnist,true\n", "missing column 'epochs'"),
    (REFERENCE.replace("mnist,false,10", "mnist,maybe,10"), "line 2: expected bn true/false"),
    (REFERENCE.replace("0.9919", "n/a"), "line 2"),
])
def test_bad_reference_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "ref.csv"
    path.write_text(content)
    with pytest.raises(StoreError, match=message):
        cmp.load_reference(path)
    with pytest.raises(StoreError, match="cannot read it"):
        cmp.load_reference(tmp_path / "absent.csv")


# ---- CLI -------------------------------------------------------------------------------

def test_list_shows_experiments_with_counts(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--root", str(root), "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["EXPERIMENT", "RUNS", "COMPLETE", "FAILED"]
    assert lines[1].split()[:4] == ["grid", "6", "5", "1"] and lines[2].split()[:4] == ["other", "1", "1", "0"]


def test_runs_filters_with_where(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", "grid", "--where", "dataset=mnist", "bn=true", "--root", str(root))
    body = out.splitlines()[1:]
    assert code == 0 and len(body) == 2 and all(" mnist " in line and " on " in line for line in body)
    code, out, _ = cli(capsys, "--root", str(root), "runs", "grid", "--where", "status=failed")
    assert len(out.splitlines()) == 2 and "failed" in out


def test_show_accepts_run_exp_slash_run_and_experiment_flag(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = make_record(dataset="cifar10", bn=True, epochs=60, transforms="basic").run_id
    for argv in ([run_id], [f"grid/{run_id}"], [run_id, "--experiment", "grid"], [run_id[:20]]):
        code, out, err = cli(capsys, "--root", str(root), "show", *argv)
        assert code == 0, err
        assert f"run         {run_id}" in out and "weights.pt" in out and "sha256" in out
        assert "best val_acc 0.8000 at epoch 60" in out and "val_acc 0.8000" in out
        assert "execution   compile=off bf16_autocast=false channels_last=false" in out


def test_compare_markdown_with_seed_reference(root: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "--root", str(root), "compare", "grid", "--reference", str(reference))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("| Dataset | BN | Epoch | Batch Size | Transforms | loss | seed loss | Δ loss |")
    assert lines[2].startswith("| MNIST |  | 10 | 32 | None |")
    assert "0.9910 ± 0.0014 | 0.9919 | -0.0009 | 2 |" in lines[2]
    assert lines[4].startswith("| CIFAR10 | √ | 60 | 32 | Basic |") and lines[4].endswith("| 0.8000 | 0.8028 | -0.0028 | 1 |")
    assert "1 failed run(s) left out" in err


def test_compare_csv_is_machine_readable(root: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--root", str(root), "compare", "grid", "other", "--pool",
                       "--reference", str(reference), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["n"] for r in rows] == ["2", "3", "1"]
    assert rows[1]["bn"] == "true" and float(rows[1]["seed_val_acc"]) == 0.9937
    assert float(rows[1]["delta_val_acc"]) == pytest.approx(float(rows[1]["val_acc"]) - 0.9937, abs=1e-6)


def test_compare_against_the_repository_seed_file(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--root", str(root), "compare", "grid", "--reference", "seed")
    assert code == 0 and "| 0.9919 |" in out and "| 0.8028 |" in out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_real_png(root: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    out = tmp_path / "plots" / "grid.png"
    code, stdout, _ = cli(capsys, "--root", str(root), "plot", "grid", "--out", str(out), "--reference", str(reference))
    assert code == 0 and str(out) in stdout
    width, height = _png_size(out)
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (height, width) and width >= 1000 and height >= 600  # two rows of panels
    assert pixels.std() > 0.05  # not a blank canvas


def test_export_csv_and_parquet(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--root", str(root), "export", "grid", "--out", str(tmp_path / "runs.csv"))
    assert code == 0 and "wrote 6 rows" in out
    table = pacsv.read_csv(tmp_path / "runs.csv")
    assert table.num_rows == 6 and {"run_id", "status", "val_acc", "versions", "weights_sha256"} <= set(table.column_names)
    code, out, _ = cli(capsys, "--root", str(root), "export", "grid", "--epochs", "--out", str(tmp_path / "e.parquet"))
    assert code == 0 and pq.read_table(tmp_path / "e.parquet").num_rows == 4 * 10 + 60 + 59


def test_root_defaults_to_the_environment_variable(root: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOYNET_ARTIFACTS", str(root))
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "grid" in out


@pytest.mark.parametrize("argv, message", [
    (["runs", "gird"], "unknown experiment 'gird'"),
    (["show", "mnist-bn-b32-none-e10-s9"], "unknown run 'mnist-bn-b32-none-e10-s9' in any experiment"),
    (["show", "mnist-bn"], "is ambiguous"),
    (["runs", "../grid"], "invalid experiment name '../grid'"),
    (["runs", "/etc"], "invalid experiment name '/etc'"),
    (["runs", "grid", "--where", "bnn=true"], "unknown column 'bnn'"),
    (["runs", "grid", "--where", "bn"], "expected COLUMN=VALUE"),
    (["compare", "grid", "--reference", "nope.csv"], "nope.csv: cannot read it"),
    (["export", "grid", "--out", "x.json"], "expected a file name ending in .csv or .parquet"),
    (["plot", "other2", "--out", "x.png"], "closest: other"),
])
def test_user_errors_are_one_line_and_exit_2(root: Path, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    code, out, err = cli(capsys, "--root", str(root), *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_root_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--root", str(tmp_path / "none"), "list")
    assert code == 2 and err.startswith("error: no artifacts store at")


def test_show_verifies_weights_and_fails_on_tampering(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ArtifactStore(root)
    run_id = make_record(dataset="cifar10", bn=True, epochs=60, transforms="basic").run_id
    code, out, _ = cli(capsys, "--root", str(root), "show", run_id)
    assert code == 0 and "(verified)" in out
    Path(store.get_run("grid", run_id).weights_path).write_bytes(b"tampered")
    code, out, err = cli(capsys, "--root", str(root), "show", run_id)
    assert code == 2 and "(NOT verified)" in out
    assert err.startswith("error: weights file ") and "fails verification: sha256" in err and "Traceback" not in err


def test_module_entry_point_runs_without_ray(root: Path) -> None:
    """``python -m orchestration.artifacts`` works, and neither the store nor the CLI imports ray."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestration.artifacts", "--root", str(root), "compare", "grid"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("| Dataset | BN | Epoch |")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "orchestration.store" in imported and not any(m == "ray" or m.startswith("ray.") for m in imported)
