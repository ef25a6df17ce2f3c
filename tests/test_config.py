"""orchestration.config: the shipped configs, expansion, overrides and one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestration.config import (
    DEFAULT_CONFIG,
    DataOptions,
    Failure,
    GridConfig,
    Overrides,
    Resources,
    Training,
    apply_overrides,
    load_config,
    parse_config,
)
from toynet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
REFERENCE = CONFIGS / "reference" / "seed_results.csv"
SEED_MD = ROOT.parent / "shared" / "docs" / "seed.md"
CSV_COLUMNS = ["dataset", "bn", "epochs", "batch_size", "transforms", "loss", "acc", "val_loss", "val_acc"]

MINIMAL = """\
experiment: t
grid: {dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 1}
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _key(run) -> tuple:
    return (run.dataset, run.bn, run.epochs, run.batch_size, run.transforms)


def _reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- shipped configs
def test_seed_config_is_exactly_the_seed_tables_in_order():
    cfg = load_config(CONFIGS / "seed.yaml")
    rows = _reference_rows()
    expected = [(r["dataset"], r["bn"] == "true", int(r["epochs"]), int(r["batch_size"]), r["transforms"]) for r in rows]
    assert [_key(r) for r in cfg.runs] == expected
    assert len(set(cfg.runs)) == len(cfg.runs) == 38
    assert sum(r.dataset == "mnist" for r in cfg.runs) == 8
    assert sum(r.dataset == "cifar10" for r in cfg.runs) == 30
    assert cfg.experiment == "seed" and {r.seed for r in cfg.runs} == {0}
    assert all((r.lr, r.momentum, r.weight_decay) == (0.1, 0.9, 0.0) for r in cfg.runs)
    assert DEFAULT_CONFIG == CONFIGS / "seed.yaml"


def test_reference_csv_shape():
    with REFERENCE.open(newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == CSV_COLUMNS
    rows = _reference_rows()
    assert len(rows) == 38
    for row in rows:
        assert row["dataset"] in ("mnist", "cifar10") and row["bn"] in ("true", "false")
        assert row["transforms"] in ("none", "basic", "normal")
        assert all(0 <= float(row[m]) for m in ("loss", "val_loss"))
        assert all(0 < float(row[m]) <= 1 for m in ("acc", "val_acc"))
    assert max(float(r["val_acc"]) for r in rows if r["dataset"] == "cifar10") == 0.8206


def _seed_md_rows() -> list[list[str]]:
    """The seed's two tables, normalised the way the CSV is (√→true, Baisc/Normal*→basic/normal)."""
    names = {"None": "none", "Basic": "basic", "Baisc": "basic", "Normal*": "normal"}
    rows, dataset = [], None
    for line in SEED_MD.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            dataset = {"### MNIST": "mnist", "### CIFAR10": "cifar10"}.get(line.strip())
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if dataset and line.startswith("|") and len(cells) == 8 and cells[1].isdigit():
            bn = "true" if cells[0] == "√" else "false"
            rows.append([dataset, bn, cells[1], cells[2], names[cells[3]]] + [c.strip("*") for c in cells[4:]])
    return rows


@pytest.mark.skipif(not SEED_MD.exists(), reason="the seed write-up (../shared/docs/seed.md) is not here")
def test_reference_csv_copies_seed_md_exactly():
    with REFERENCE.open(newline="", encoding="utf-8") as f:
        csv_rows = list(csv.reader(f))[1:]
    assert csv_rows == _seed_md_rows()


def test_full_config_is_the_288_point_product():
    cfg = load_config(CONFIGS / "full.yaml")
    assert len(cfg.runs) == len(set(cfg.runs)) == 288
    product = itertools.product(
        ("mnist", "cifar10"), (False, True), (10, 30, 60, 120, 180, 240), (32, 64, 128, 256), ("none", "basic", "normal")
    )
    assert {_key(r) for r in cfg.runs} == {(d, b, e, bs, t) for d, b, e, bs, t in product}
    assert cfg.experiment == "full"


def test_smoke_config_is_small_and_on_digits():
    cfg = load_config(CONFIGS / "smoke.yaml")
    assert cfg.experiment == "smoke"
    assert len(cfg.runs) == 4 and {r.dataset for r in cfg.runs} == {"digits"}
    assert {r.bn for r in cfg.runs} == {False, True}  # no-BN points kept on purpose
    assert max(r.epochs for r in cfg.runs) <= 5
    assert cfg.resources.workers_per_trial == 1 and cfg.resources.gpus_per_worker == 0


@pytest.mark.parametrize("name", ["seed", "full", "smoke"])
def test_configs_have_header_and_round_trip(name):
    path = CONFIGS / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and "python orchestration/grid.py" in text
    cfg = load_config(path)
    dumped = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert parse_config(dumped, cfg.source) == cfg


def test_config_module_does_not_import_ray():
    code = "import sys, orchestration.config; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- expansion
def test_defaults_and_scalar_axes(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert len(cfg.runs) == 1 and cfg.runs[0].seed == 0
    assert cfg.data == DataOptions() and cfg.resources == Resources() and cfg.failure == Failure()
    assert cfg.training == Training()  # eager, fp32, NCHW: the seed's numerics
    assert cfg.storage.artifacts == "artifacts" and cfg.storage.experiment == "t"
    assert cfg.source == str(tmp_path / "c.yaml")


def test_seeds_multiply_with_seed_outermost(tmp_path):
    text = MINIMAL.replace("bn: true", "bn: [false, true]") + "seeds: [3, 1, 2]\n"
    cfg = load_config(_write(tmp_path, text))
    assert [(r.seed, r.bn) for r in cfg.runs] == [(s, b) for s in (3, 1, 2) for b in (False, True)]
    assert len({r.run_id for r in cfg.runs}) == 6
    assert len(load_config(_write(tmp_path, MINIMAL + "seeds: 7\n")).runs) == 1


def test_limits_propagate_into_runspecs_but_data_dir_does_not(tmp_path):
    text = MINIMAL + "data: {dir: /data, train_limit: 100, val_limit: 50}\n"
    cfg = load_config(_write(tmp_path, text))
    assert all((r.train_limit, r.val_limit) == (100, 50) for r in cfg.runs)
    assert cfg.data.dir == "/data" and "dir" not in cfg.runs[0].to_dict()
    plain = load_config(_write(tmp_path, MINIMAL, "p.yaml"))
    assert cfg.runs[0].run_id != plain.runs[0].run_id


def test_grid_blocks_runs_form_and_optional_axes(tmp_path):
    text = """\
experiment: t
grid:
  - {dataset: mnist, bn: true, batch_size: [32, 64], transforms: none, epochs: 1, lr: [0.1, 0.01]}
  - {dataset: cifar10, bn: false, batch_size: 32, transforms: normal, epochs: 2, weight_decay: 5.0e-4}
"""
    cfg = load_config(_write(tmp_path, text))
    assert [(r.batch_size, r.lr) for r in cfg.runs[:4]] == [(32, 0.1), (32, 0.01), (64, 0.1), (64, 0.01)]
    assert cfg.runs[4].weight_decay == 5.0e-4 and len(cfg.runs) == 5
    runs_text = "experiment: t\nruns:\n  - {dataset: mnist, bn: true, batch_size: 32, transforms: none, epochs: 1, momentum: 0.5}\n"
    runs_cfg = load_config(_write(tmp_path, runs_text, "r.yaml"))
    assert runs_cfg.runs[0].momentum == 0.5


def test_to_dict_rejects_hand_built_runs_that_are_not_a_product():
    cfg = parse_config(yaml.safe_load(MINIMAL), "c.yaml")
    odd = dataclasses.replace(cfg, runs=cfg.runs + (dataclasses.replace(cfg.runs[0], seed=5, bn=False),))
    assert isinstance(odd, GridConfig)
    with pytest.raises(ValueError):
        odd.to_dict()


# ---------------------------------------------------------------- overrides
def test_overrides_apply_and_revalidate():
    cfg = load_config(CONFIGS / "smoke.yaml")
    new = apply_overrides(cfg, Overrides(
        experiment="smoke2", artifacts="s3://bucket/x", workers_per_trial=2, cpus_per_worker=0.5,
        gpus_per_worker=0.25, max_concurrent_trials=1, placement_strategy="SPREAD", data_dir="/d",
        download=True, train_limit=64, val_limit=32, max_retries=0, seeds=(0, 1),
        channels_last=True, bf16_autocast=True, compile="reduce-overhead", train_in_trial=False,
    ))
    assert new.training == Training(channels_last=True, bf16_autocast=True, compile="reduce-overhead")
    assert (new.experiment, new.storage.artifacts) == ("smoke2", "s3://bucket/x")
    assert new.resources == Resources(2, 0.5, 0.25, 1, "SPREAD", train_in_trial=False)
    assert new.data == DataOptions("/d", True, 64, 32) and new.failure == Failure(0)
    assert len(new.runs) == 8 and all((r.train_limit, r.val_limit) == (64, 32) for r in new.runs)
    assert apply_overrides(cfg, Overrides()) == cfg
    assert cfg.experiment == "smoke"  # the original is untouched


def test_epochs_override_merges_runs_that_become_identical():
    cfg = apply_overrides(load_config(CONFIGS / "seed.yaml"), Overrides(epochs=1))
    assert {r.epochs for r in cfg.runs} == {1}
    assert len(cfg.runs) == len(set(cfg.runs)) == 20  # 4 mnist + 16 cifar10 distinct points


@pytest.mark.parametrize("overrides, flag", [
    (Overrides(workers_per_trial=0), "--workers-per-trial"),
    (Overrides(gpus_per_worker=-1), "--gpus-per-worker"),
    (Overrides(cpus_per_worker=0), "--cpus-per-worker"),
    (Overrides(experiment="../x"), "--experiment"),
    (Overrides(epochs=0), "--epochs"),
    (Overrides(seeds=()), "--seeds"),
    (Overrides(train_limit=0), "--train-limit"),
    (Overrides(placement_strategy="pack"), "--placement-strategy"),
    (Overrides(max_retries=-1), "--max-retries"),
    (Overrides(compile="fast"), "--compile"),
    (Overrides(train_in_trial="no"), "--train-in-trial"),
])
def test_bad_overrides_name_the_flag(overrides, flag):
    cfg = load_config(CONFIGS / "smoke.yaml")
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, overrides)
    message = str(info.value)
    assert message.startswith(flag + " ") and "\n" not in message and ", got " in message


# ---------------------------------------------------------------- bad configs
GRID = "grid: {dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 1}\n"
BAD_CONFIGS = [
    # (id, YAML text, fragment the one-line message must contain after the file name)
    ("malformed", "experiment: t\ngrid: {dataset: [mnist\n", "line 3"),
    ("tab", "experiment: t\n\tgrid: 1\n", "line 2"),
    ("duplicate key", MINIMAL + GRID, "duplicate key 'grid'"),
    ("empty file", "", "empty"),
    ("not a mapping", "- 1\n- 2\n", "top level"),
    ("unknown top key", MINIMAL + "epochs: 3\n", "epochs is not a known key"),
    ("unknown nested key", MINIMAL + "resources: {gpus: 1}\n", "resources.gpus"),
    ("wrong type gpus", MINIMAL + "resources: {gpus_per_worker: two}\n", "resources.gpus_per_worker"),
    ("negative gpus", MINIMAL + "resources: {gpus_per_worker: -1}\n", "resources.gpus_per_worker"),
    ("gpus 1.5", MINIMAL + "resources: {gpus_per_worker: 1.5}\n", "resources.gpus_per_worker"),
    ("workers 0", MINIMAL + "resources: {workers_per_trial: 0}\n", "resources.workers_per_trial"),
    ("workers float", MINIMAL + "resources: {workers_per_trial: 1.5}\n", "resources.workers_per_trial"),
    ("bad placement", MINIMAL + "resources: {placement_strategy: spread}\n", "resources.placement_strategy"),
    ("in-trial string", MINIMAL + "resources: {train_in_trial: 'yes'}\n", "resources.train_in_trial"),
    ("section not mapping", MINIMAL + "failure: 3\n", "failure"),
    ("retries negative", MINIMAL + "failure: {max_retries: -1}\n", "failure.max_retries"),
    ("download string", MINIMAL + "data: {download: 'yes'}\n", "data.download"),
    ("train_limit 0", MINIMAL + "data: {train_limit: 0}\n", "data.train_limit"),
    ("bad artifacts", MINIMAL + "storage: {artifacts: ''}\n", "storage.artifacts"),
    ("experiment in storage", MINIMAL + "storage: {experiment: y}\n", "storage.experiment"),
    ("unknown training key", MINIMAL + "training: {amp: true}\n", "training.amp is not a known key"),
    ("bad compile mode", MINIMAL + "training: {compile: fast}\n", "training.compile must be null or one of"),
    ("bf16 string", MINIMAL + "training: {bf16_autocast: 'on'}\n", "training.bf16_autocast"),
    ("eval batch 0", MINIMAL + "training: {eval_batch_size: 0}\n", "training.eval_batch_size"),
    ("missing experiment", GRID, "experiment"),
    ("bad experiment name", MINIMAL.replace("experiment: t", "experiment: ../x"), "experiment"),
    ("hidden experiment name", MINIMAL.replace("experiment: t", "experiment: .x"), "experiment"),
    ("bad seeds type", MINIMAL + "seeds: 'zero'\n", "seeds"),
    ("negative seed", MINIMAL + "seeds: [-1]\n", "seeds"),
    ("repeated seeds", MINIMAL + "seeds: [0, 0]\n", "seeds"),
    ("empty grid", "experiment: t\ngrid: {}\n", "grid"),
    ("empty grid list", "experiment: t\ngrid: []\n", "grid"),
    ("grid not mapping", "experiment: t\ngrid: 3\n", "grid"),
    ("missing axis", "experiment: t\ngrid: {dataset: mnist, bn: true, batch_size: 32, transforms: none}\n", "'epochs'"),
    ("empty axis", MINIMAL.replace("batch_size: 32", "batch_size: []"), "grid.batch_size"),
    ("repeated axis value", MINIMAL.replace("batch_size: 32", "batch_size: [32, 32]"), "grid.batch_size"),
    ("nested axis", MINIMAL.replace("bn: true", "bn: [[true]]"), "grid.bn"),
    ("unknown axis", MINIMAL.replace("epochs: 1", "epochs: 1, dropout: 0.1"), "grid.dropout"),
    ("seed axis", MINIMAL.replace("epochs: 1", "epochs: 1, seed: 1"), "grid.seed"),
    ("limit axis", MINIMAL.replace("epochs: 1", "epochs: 1, train_limit: 9"), "grid.train_limit"),
    ("both grid and runs", MINIMAL + "runs: []\n", "grid/runs"),
    ("neither grid nor runs", "experiment: t\nseeds: [0]\n", "grid/runs"),
    ("batch_size 0", MINIMAL.replace("batch_size: 32", "batch_size: 0"), "batch_size"),
    ("epochs -1", MINIMAL.replace("epochs: 1", "epochs: -1"), "epochs"),
    ("epochs string", MINIMAL.replace("epochs: 1", "epochs: ten"), "epochs"),
    ("unknown dataset", MINIMAL.replace("digits", "svhn"), "dataset"),
    ("unknown transform", MINIMAL.replace("transforms: none", "transforms: fancy"), "transforms"),
    ("bn string", MINIMAL.replace("bn: true", "bn: maybe"), "bn"),
    ("lr 1e-3 text", MINIMAL.replace("epochs: 1", "epochs: 1, lr: 1e-3"), "lr"),
    ("momentum 1", MINIMAL.replace("epochs: 1", "epochs: 1, momentum: 1"), "momentum"),
    ("overlapping blocks", "experiment: t\ngrid:\n  - " + GRID[6:] + "  - " + GRID[6:], "grid[1] repeats run"),
    ("empty runs", "experiment: t\nruns: []\n", "runs"),
    ("run not mapping", "experiment: t\nruns: [3]\n", "runs[0]"),
    ("run missing key", "experiment: t\nruns: [{dataset: mnist}]\n", "runs[0]"),
    ("run with seed", "experiment: t\nruns: [{dataset: mnist, seed: 1}]\n", "runs[0].seed"),
    ("duplicate runs", "experiment: t\nruns:\n" + 2 * "  - {dataset: mnist, bn: true, batch_size: 32, transforms: none, epochs: 1}\n", "runs[1]"),
]


@pytest.mark.parametrize("text, fragment", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_gives_one_line_naming_file_and_key(tmp_path, text, fragment):
    path = _write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message


@pytest.mark.parametrize("target", ["missing.yaml", "."])
def test_unreadable_path_is_one_line(tmp_path, target):
    path = tmp_path / target
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
