"""The artifacts store on local disk: round trips, atomicity, concurrency, bad input.

Helpers here (``make_record``, ``weights_for``, ``write``) are reused by the CLI and
S3 tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from orchestration import records, weights as weights_io
from orchestration.records import RUN_SCHEMA, SCHEMA_VERSION, SPEC_COLUMNS, RunRecord, StoreError
from orchestration.store import MARKER, ArtifactStore, collect_versions
from orchestration.tables import conform
from toynet.errors import ToyNetError, WeightsError
from toynet.model import ToyNet, count_parameters
from toynet.spec import RunSpec

CURVE_KEYS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")


def make_record(experiment: str = "exp", *, status: str = "complete", final_val_acc: float = 0.9,
                **spec: object) -> RunRecord:
    """A plausible record: val_acc rises to ``final_val_acc``; a failed run stops one epoch short."""
    fields = {"dataset": "mnist", "bn": True, "batch_size": 32, "transforms": "none", "epochs": 3, **spec}
    run_spec = RunSpec.from_dict(fields)
    n = run_spec.epochs if status == "complete" else run_spec.epochs - 1
    curve = [
        {"epoch": e, "loss": 1.0 / e, "acc": 0.5 + 0.1 * e, "val_loss": 1.2 / e,
         "val_acc": final_val_acc - 0.05 * (run_spec.epochs - e), "lr": 0.1 / e, "seconds": 1.5}
        for e in range(1, n + 1)
    ]
    return RunRecord(experiment=experiment, spec=run_spec, status=status, curve=curve, wall_seconds=5.0,
                     train_images_per_s=1234.0, device="cpu", num_workers=1, versions=collect_versions(),
                     error="RuntimeError: boom" if status == "failed" else None)


def weights_for(spec: RunSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(spec.seed)
    return ToyNet.for_dataset(spec.dataset, spec.bn).state_dict()


def write(store: ArtifactStore, record: RunRecord) -> RunRecord:
    store.write_run(record, weights_for(record.spec) if record.status == "complete" else None)
    return record


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", tensorboard=False)


def _attempt_dirs(store: ArtifactStore, experiment: str, run_id: str) -> list[Path]:
    return sorted((Path(store.root) / experiment / "runs" / run_id).iterdir())


# ---- round trips -------------------------------------------------------------------

def test_write_then_read_every_field(store: ArtifactStore) -> None:
    rec = write(store, make_record(dataset="cifar10", bn=False, batch_size=64, transforms="basic",
                                   epochs=4, seed=3, weight_decay=5e-4, train_limit=100))
    (row,) = store.runs("exp").to_pylist()
    assert {k: row[k] for k in SPEC_COLUMNS} == rec.spec.to_dict()
    assert row["run_id"] == rec.spec.run_id and row["status"] == "complete" and row["error"] is None
    assert {m: row[m] for m in records.METRICS} == {m: rec.curve[-1][m] for m in records.METRICS}
    assert (row["epochs_done"], row["wall_seconds"], row["train_images_per_s"]) == (4, 5.0, 1234.0)
    assert (row["device"], row["num_workers"]) == ("cpu", 1)
    assert json.loads(row["versions"]) == rec.versions
    assert row["schema_version"] == SCHEMA_VERSION
    curve = store.epochs("exp").to_pylist()
    assert [{k: r[k] for k in CURVE_KEYS} for r in curve] == rec.curve
    got = store.get_run("exp", rec.run_id)
    assert got.spec == rec.spec and got.curve == rec.curve and got.final == rec.final
    assert got.versions == rec.versions and got.finished_at == rec.finished_at
    assert got.train_options == {}  # make_record leaves the execution options at their defaults


def test_execution_options_round_trip_and_old_files_read_as_defaults(store: ArtifactStore) -> None:
    options = {"channels_last": True, "bf16_autocast": True, "compile": "reduce-overhead"}
    rec = write(store, dataclasses.replace(make_record(), train_options=options))
    assert store.get_run("exp", rec.run_id).train_options == options
    # A run.parquet written before the column existed reads as the defaults it ran with.
    (path,) = Path(store.root).glob(f"exp/runs/{rec.run_id}/*/run.parquet")
    old = conform(pq.read_table(path).drop(["train_options"]), RUN_SCHEMA, "old run.parquet")
    (row,) = old.to_pylist()
    assert row["train_options"] is None
    assert records.record_from_rows(row, rec.curve).train_options == {}


def test_weights_file_is_a_plain_state_dict_with_checksum_and_parameter_count(store: ArtifactStore) -> None:
    rec = write(store, make_record())
    run = store.get_run("exp", rec.run_id)
    data = Path(run.weights_path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == run.weights_sha256
    model = ToyNet.for_dataset("mnist", True)
    model.load_state_dict(torch.load(run.weights_path))  # the seed's own loading recipe
    assert run.num_parameters == count_parameters(model)
    for key, value in weights_for(rec.spec).items():
        assert torch.equal(model.state_dict()[key], value)


def test_weights_encoded_elsewhere_store_the_same_files(store: ArtifactStore, tmp_path: Path) -> None:
    """The Train worker encodes the weights into its checkpoint and the torch-free Tune
    driver stores them: the same bytes and facts as storing the state_dict itself."""
    rec = make_record()
    weights_io.encode(weights_for(rec.spec)).save(tmp_path)
    store.write_run(rec, weights_io.Encoded.load(tmp_path))
    direct = ArtifactStore(tmp_path / "direct", tensorboard=False)
    write(direct, rec)
    a, b = store.get_run("exp", rec.run_id), direct.get_run("exp", rec.run_id)
    assert (a.weights_sha256, a.num_parameters) == (b.weights_sha256, b.num_parameters)
    assert Path(a.weights_path).read_bytes() == Path(b.weights_path).read_bytes()


def test_encoded_weights_are_verified_when_read_back(tmp_path: Path) -> None:
    weights_io.encode(weights_for(make_record().spec)).save(tmp_path)
    path = tmp_path / weights_io.WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(WeightsError, match="fail verification"):
        weights_io.Encoded.load(tmp_path)
    path.unlink()
    with pytest.raises(WeightsError, match="unreadable"):
        weights_io.Encoded.load(tmp_path)


def test_load_model_is_verified_toynet_in_eval_mode(store: ArtifactStore) -> None:
    rec = write(store, make_record(bn=True, seed=5))
    model = store.load_model("exp", rec.run_id)
    assert isinstance(model, ToyNet) and not model.training
    reference = ToyNet.for_dataset("mnist", True)
    reference.load_state_dict(weights_for(rec.spec))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), reference.eval()(x))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes tiny nets 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_load_model_reproduces_stored_val_acc_after_real_training(tmp_path: Path, one_thread: None) -> None:
    """Tiny real training on digits; the loaded weights give the stored val_acc again."""
    from toynet import train
    from toynet.data import load_dataset

    spec = RunSpec(dataset="digits", bn=True, batch_size=32, transforms="none", epochs=3, seed=1,
                   train_limit=600, val_limit=200)
    data = load_dataset("digits", train_limit=spec.train_limit, val_limit=spec.val_limit)
    result = train.fit(spec, data, train.TrainOptions(device="cpu"))
    rec = RunRecord(experiment="real", spec=spec, status="complete",
                    curve=[{k: row[k] for k in CURVE_KEYS} for row in result.curve],
                    wall_seconds=result.wall_seconds, train_images_per_s=result.train_images_per_s,
                    device=result.device, num_workers=1, versions=collect_versions())
    store = ArtifactStore(tmp_path / "a", tensorboard=False)
    store.write_run(rec, result.model.state_dict())
    stored = store.runs("real").to_pylist()[0]
    again = train.evaluate(store.load_model("real", spec.run_id), data, spec.transforms)
    assert stored["val_acc"] > 0.3  # it really trained (chance is 0.1)
    assert again["val_acc"] == pytest.approx(stored["val_acc"], abs=1e-9)
    assert again["val_loss"] == pytest.approx(stored["val_loss"], rel=1e-5)


def test_run_file_schema_is_the_declared_one(store: ArtifactStore) -> None:
    rec = write(store, make_record())
    (attempt,) = _attempt_dirs(store, "exp", rec.run_id)
    schema = pq.read_schema(attempt / "run.parquet")
    assert schema.remove_metadata().equals(RUN_SCHEMA.remove_metadata())
    assert schema.metadata[b"toynet.schema_version"] == str(SCHEMA_VERSION).encode()
    assert set(SPEC_COLUMNS) == set(RunSpec.__dataclass_fields__)  # every RunSpec field has a column


def test_experiments_lists_counts_status_and_date(store: ArtifactStore) -> None:
    write(store, make_record("b"))
    write(store, make_record("a", seed=1))
    write(store, make_record("a", seed=2, status="failed"))
    infos = {i.name: i for i in store.experiments()}
    assert list(infos) == ["a", "b"]
    assert (infos["a"].runs, infos["a"].complete, infos["a"].failed) == (2, 1, 1)
    assert infos["a"].last_finished is not None


def test_where_filters_with_typed_or_cli_text_values(store: ArtifactStore) -> None:
    for bn in (True, False):
        for batch in (32, 64):
            write(store, make_record(bn=bn, batch_size=batch))
    assert store.runs("exp", {"bn": True}).num_rows == 2
    assert store.runs("exp", {"bn": "false", "batch_size": "64"}).num_rows == 1
    assert store.runs("exp", {"batch_size": ["32", "64"], "dataset": "mnist"}).num_rows == 4
    assert store.runs("exp", {"dataset": "cifar10"}).num_rows == 0


def test_tensorboard_event_files_hold_the_per_epoch_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = ArtifactStore(tmp_path / "a")  # TensorBoard on, as in production
    rec = write(store, make_record(epochs=3))
    (attempt,) = _attempt_dirs(store, "exp", rec.run_id)
    acc = EventAccumulator(str(attempt))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "acc/train", "acc/val", "lr"} <= tags
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("acc/val")] == [
        (r["epoch"], round(r["val_acc"], 6)) for r in rec.curve]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("final/val_acc")] == [(3, 0.9)]


def test_tensorboard_hparams_view_holds_the_grid_point(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    store = ArtifactStore(tmp_path / "a")
    rec = write(store, make_record(epochs=3, batch_size=64))
    (attempt,) = _attempt_dirs(store, "exp", rec.run_id)
    mux = EventMultiplexer({"run": str(attempt)})
    mux.Reload()
    content = mux.PluginRunToTagToContent("hparams")["run"]
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    experiment = data["_hparams_/experiment"].experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/loss", "final/acc", "final/val_loss", "final/val_acc"}
    values = data["_hparams_/session_start_info"].session_start_info.hparams
    assert (values["batch_size"].number_value, values["bn"].string_value, values["dataset"].string_value) == (
        64, "on", "mnist")


# ---- atomicity, replacement, concurrency ---------------------------------------------

def test_rewriting_a_run_replaces_it_and_a_complete_write_replaces_a_failed_one(store: ArtifactStore) -> None:
    failed = write(store, make_record(status="failed"))
    assert not store.is_complete("exp", failed.run_id)
    assert store.get_run("exp", failed.run_id).error == "RuntimeError: boom"
    write(store, make_record(final_val_acc=0.8))
    final = write(store, make_record(final_val_acc=0.95))
    assert store.runs("exp").num_rows == 1
    assert store.runs("exp").to_pylist()[0]["val_acc"] == pytest.approx(0.95)
    assert store.epochs("exp").num_rows == final.spec.epochs
    assert store.is_complete("exp", final.run_id)
    assert len(_attempt_dirs(store, "exp", final.run_id)) == 1  # older attempts were removed


def test_half_written_runs_are_invisible(store: ArtifactStore) -> None:
    rec = write(store, make_record(final_val_acc=0.9))
    (done,) = _attempt_dirs(store, "exp", rec.run_id)
    # A newer write that died before its commit marker: files present, marker absent.
    newer = done.parent / "29991231T235959999999Z-deadbeef"
    newer.mkdir()
    (newer / "run.parquet").write_bytes(b"partial")
    other = Path(store.root) / "exp" / "runs" / "mnist-half" / "29991231T235959999999Z-deadbeef"
    other.mkdir(parents=True)
    (other / "weights.pt").write_bytes(b"partial")
    assert store.run_ids("exp") == [rec.run_id]
    assert store.runs("exp").to_pylist()[0]["val_acc"] == pytest.approx(0.9)
    assert not store.is_complete("exp", "mnist-half")


def _write_in_child(root: str, record: RunRecord, state: dict, barrier) -> None:  # noqa: ANN001
    # A forked child must not enter the parent's OpenMP pool (it hangs): one thread,
    # as DataLoader workers do.
    torch.set_num_threads(1)
    barrier.wait()  # all writers start at the same moment
    ArtifactStore(root, tensorboard=True).write_run(record, state)


def _run_writers(root: Path, recs: list[RunRecord]) -> None:
    import torch.utils.tensorboard  # noqa: F401  (imported once here, shared by the forked writers)

    ctx = mp.get_context("fork")  # fork: children start without re-importing torch
    barrier = ctx.Barrier(len(recs))
    procs = [ctx.Process(target=_write_in_child, args=(str(root), r, weights_for(r.spec), barrier)) for r in recs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(recs)


def test_sixteen_parallel_writers_lose_nothing(tmp_path: Path) -> None:
    recs = [make_record(seed=i, batch_size=32 * (1 + i % 2)) for i in range(16)]
    _run_writers(tmp_path / "a", recs)
    store = ArtifactStore(tmp_path / "a")
    table = store.runs("exp")
    assert table.num_rows == 16 and sorted(table["run_id"].to_pylist()) == sorted(r.run_id for r in recs)
    assert set(table["status"].to_pylist()) == {"complete"}
    assert store.epochs("exp").num_rows == 16 * 3
    for rec in recs[::5]:
        assert store.load_weights("exp", rec.run_id).keys() == weights_for(rec.spec).keys()


def test_parallel_writers_of_the_same_run_leave_one_row(tmp_path: Path) -> None:
    recs = [make_record(final_val_acc=0.9 - 0.01 * i) for i in range(4)]  # one run id, four versions
    _run_writers(tmp_path / "a", recs)
    store = ArtifactStore(tmp_path / "a")
    (row,) = store.runs("exp").to_pylist()
    assert any(row["val_acc"] == pytest.approx(r.final["val_acc"]) for r in recs)
    assert store.epochs("exp").num_rows == 3
    store.load_weights("exp", row["run_id"])


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "/abs/path", "", "a/b", "a b", ".hidden", "..", "x" * 200, "ü"])
def test_names_that_could_escape_the_root_are_rejected(store: ArtifactStore, tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="invalid experiment name"):
        store.runs(name)
    with pytest.raises(StoreError, match="invalid experiment name"):
        store.write_run(make_record(name), None)
    assert not (tmp_path / "escape").exists()


def test_unknown_experiment_and_run_name_the_closest(store: ArtifactStore) -> None:
    rec = write(store, make_record("seed-grid"))
    with pytest.raises(StoreError, match=r"unknown experiment 'seedgrid'.*closest: seed-grid"):
        store.runs("seedgrid")
    with pytest.raises(StoreError, match=rf"unknown run .*closest: {rec.run_id}"):
        store.get_run("seed-grid", rec.run_id[:-1] + "x")
    with pytest.raises(StoreError, match="unknown column 'bnn'.*closest: bn"):
        store.runs("seed-grid", {"bnn": True})
    with pytest.raises(StoreError, match="where bn='maybe'"):
        store.runs("seed-grid", {"bn": "maybe"})


def test_find_run_accepts_exp_slash_run_and_unique_prefixes(store: ArtifactStore) -> None:
    a = write(store, make_record("e1", seed=1))
    write(store, make_record("e2", seed=1))
    write(store, make_record("e2", seed=2, bn=False))
    assert store.find_run(f"e1/{a.run_id}") == ("e1", a.run_id)
    assert store.find_run(a.run_id, experiment="e2") == ("e2", a.run_id)
    assert store.find_run("mnist-nobn") == ("e2", make_record(seed=2, bn=False).run_id)
    with pytest.raises(StoreError, match="ambiguous"):
        store.find_run(a.run_id)  # in e1 and e2


def test_tampered_weights_are_refused(store: ArtifactStore) -> None:
    rec = write(store, make_record())
    path = Path(store.get_run("exp", rec.run_id).weights_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="fails verification: sha256"):
        store.load_model("exp", rec.run_id)


def test_missing_weights_are_refused(store: ArtifactStore) -> None:
    rec = write(store, make_record())
    Path(store.get_run("exp", rec.run_id).weights_path).unlink()
    with pytest.raises(WeightsError, match="weights.pt is missing"):
        store.load_weights("exp", rec.run_id)


def test_failed_runs_have_no_weights_to_load(store: ArtifactStore) -> None:
    rec = write(store, make_record(status="failed"))
    with pytest.raises(WeightsError, match="has no weights .*failed: RuntimeError: boom"):
        store.load_model("exp", rec.run_id)


def test_weights_never_unpickle_arbitrary_objects() -> None:
    import io

    import pyarrow as pa

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "evil": collect_versions}, buf)  # a function: not a tensor
    data = pa.py_buffer(buf.getvalue())
    with pytest.raises(WeightsError, match="not a loadable state_dict"):
        weights_io.decode(data, hashlib.sha256(buf.getvalue()).hexdigest(), "w.pt")


def test_corrupt_parquet_is_an_error_not_silently_skipped(store: ArtifactStore) -> None:
    rec = write(store, make_record())
    (attempt,) = _attempt_dirs(store, "exp", rec.run_id)
    (attempt / "run.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    with pytest.raises(StoreError, match="run.parquet is corrupt"):
        store.runs("exp")
    # Damage that also fixes up the marker's checksum is caught by the Parquet reader.
    marker = json.loads((attempt / MARKER).read_text())
    marker["files"]["run.parquet"] = hashlib.sha256(b"PAR1 not really parquet PAR1").hexdigest()
    (attempt / MARKER).write_text(json.dumps(marker))
    with pytest.raises(StoreError, match="run.parquet is not readable Parquet"):
        store.runs("exp")


def test_files_from_a_newer_schema_are_refused() -> None:
    table = records.run_row(make_record(), None)
    newer = table.replace_schema_metadata({b"toynet.schema_version": b"99"})
    with pytest.raises(StoreError, match="schema version 99"):
        records.check_schema_version(newer, "run.parquet")


def test_unwritable_root_fails_fast_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = ArtifactStore(blocker / "artifacts")
    with pytest.raises(StoreError) as err:
        store.check_writable()
    assert "is not writable" in str(err.value) and "\n" not in str(err.value)
    ArtifactStore(tmp_path / "fine").check_writable()
    assert list((tmp_path / "fine").iterdir()) == []  # the probe is gone


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no artifacts store at"):
        ArtifactStore(tmp_path / "nothing").experiments()
    assert not ArtifactStore(tmp_path / "nothing").is_complete("exp", "run")  # the grid asks before writing


@pytest.mark.parametrize("change, message", [
    ({"status": "done"}, "status 'done'"),
    ({"curve": []}, "status complete with 0 curve rows; expected 3"),
    ({"curve": [{"epoch": 1}]}, "curve row 1 lacks"),
    ({"status": "failed", "error": None}, "needs an error message"),
    ({"finished_at": "yesterday"}, "not an ISO timestamp"),
])
def test_inconsistent_records_are_refused(change: dict, message: str) -> None:
    import dataclasses

    with pytest.raises(StoreError, match=message):
        dataclasses.replace(make_record(), **change)


def test_store_errors_are_user_errors() -> None:
    assert issubclass(StoreError, ToyNetError) and issubclass(WeightsError, ToyNetError)


def test_complete_run_needs_weights_and_failed_run_stores_none(store: ArtifactStore) -> None:
    with pytest.raises(StoreError, match="needs its state_dict"):
        store.write_run(make_record(), None)
    rec = make_record(status="failed")
    store.write_run(rec, weights_for(rec.spec))  # weights of a failed run are dropped
    assert store.get_run("exp", rec.run_id).weights_path is None


def test_collect_versions_reads_metadata_without_importing_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, json; from orchestration.records import collect_versions; "
            "v = collect_versions(); print(json.dumps([v, 'ray' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "TOYNET_GIT_COMMIT": "abc123"})
    versions, ray_imported = json.loads(out.stdout)
    assert not ray_imported
    assert versions["git_commit"] == "abc123"
    assert {"torch", "torchvision", "ray", "toynet-grid", "python"} <= set(versions)
