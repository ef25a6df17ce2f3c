"""The store on an object store: a local S3-compatible endpoint (moto) through pyarrow's S3 filesystem.

The server listens on 127.0.0.1 only and lives for this module; credentials are dummies.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestration.artifacts import main
from orchestration.records import StoreError
from orchestration.store import ArtifactStore
from tests.test_store import make_record, weights_for, write
from toynet.errors import WeightsError
from toynet.model import ToyNet

import moto.server as moto_server  # noqa: E402  (a test dependency: the [test] extra)
import pyarrow.fs as pafs  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint: str, request: pytest.FixtureRequest) -> tuple[pafs.S3FileSystem, str]:
    """A fresh bucket per test, and the filesystem that reaches it."""
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:50]
    fs.create_dir(bucket)
    return fs, bucket


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_round_trip_through_s3(s3: tuple[pafs.S3FileSystem, str]) -> None:
    fs, bucket = s3
    store = ArtifactStore(f"{bucket}/artifacts", filesystem=fs)
    assert store.root == f"s3://{bucket}/artifacts"
    store.check_writable()
    ok = write(store, make_record(seed=1, final_val_acc=0.8))
    failed = write(store, make_record(seed=2, status="failed"))
    write(store, make_record(seed=1, final_val_acc=0.9))  # rewrite: replaces, never duplicates
    table = store.runs("exp")
    assert sorted(table["run_id"].to_pylist()) == sorted([ok.run_id, failed.run_id])
    assert store.runs("exp", {"status": "complete"})["val_acc"].to_pylist() == [pytest.approx(0.9)]
    assert store.epochs("exp").num_rows == 3 + 2
    assert store.is_complete("exp", ok.run_id) and not store.is_complete("exp", failed.run_id)
    run = store.get_run("exp", ok.run_id)
    assert run.weights_path.startswith(f"s3://{bucket}/artifacts/exp/runs/{ok.run_id}/")
    model = store.load_model("exp", ok.run_id)
    assert isinstance(model, ToyNet) and not model.training
    events = [i for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/artifacts/exp", recursive=True))
              if "tfevents" in i.base_name]
    assert len(events) == 2  # TensorBoard files were copied into the bucket, one per stored run


def test_concurrent_writers_on_s3_lose_nothing(s3: tuple[pafs.S3FileSystem, str]) -> None:
    fs, bucket = s3
    recs = [make_record(seed=i) for i in range(8)]
    states = [weights_for(r.spec) for r in recs]
    barrier = threading.Barrier(len(recs))

    def writer(i: int) -> None:
        barrier.wait()
        ArtifactStore(f"{bucket}/a", filesystem=fs, tensorboard=False).write_run(recs[i], states[i])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(recs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store = ArtifactStore(f"{bucket}/a", filesystem=fs)
    assert sorted(store.run_ids("exp")) == sorted(r.run_id for r in recs)
    assert store.runs("exp").num_rows == 8 and store.epochs("exp").num_rows == 24


def test_tampered_and_missing_objects_are_refused(s3: tuple[pafs.S3FileSystem, str]) -> None:
    fs, bucket = s3
    store = ArtifactStore(f"{bucket}/a", filesystem=fs, tensorboard=False)
    a, b = write(store, make_record(seed=1)), write(store, make_record(seed=2))
    key = store.get_run("exp", a.run_id).weights_path.removeprefix("s3://")
    with fs.open_output_stream(key) as out:
        out.write(b"tampered")
    with pytest.raises(WeightsError, match="fails verification"):
        store.load_weights("exp", a.run_id)
    fs.delete_file(store.get_run("exp", b.run_id).weights_path.removeprefix("s3://"))
    with pytest.raises(WeightsError, match="is missing"):
        store.load_weights("exp", b.run_id)


def test_a_missing_bucket_fails_the_writability_check(endpoint: str) -> None:
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=endpoint, scheme="http")  # may not create buckets
    with pytest.raises(StoreError, match="is not writable") as err:
        ArtifactStore("no-such-bucket/a", filesystem=fs).check_writable()
    assert "\n" not in str(err.value)


def test_cli_with_an_s3_uri_root(s3: tuple[pafs.S3FileSystem, str], endpoint: str, aws_env: None,
                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The URI form another node would use: every option in the URI, credentials from the environment."""
    fs, bucket = s3
    uri = f"s3://{bucket}/artifacts?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    store = ArtifactStore(uri)
    assert store.root == uri
    rec = write(store, make_record("grid", seed=0))
    write(store, make_record("grid", seed=1))
    assert main(["--root", uri, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["grid", "2", "2"]
    assert main(["--root", uri, "show", rec.run_id]) == 0
    shown = capsys.readouterr().out
    assert f"s3://{bucket}/artifacts/grid/runs/{rec.run_id}/" in shown and "(verified)" in shown
    assert main(["--root", uri, "compare", "grid"]) == 0
    assert "| MNIST | √ | 3 | 32 | None |" in capsys.readouterr().out
    assert main(["--root", uri, "export", "grid", "--out", str(tmp_path / "g.parquet")]) == 0
    assert main(["--root", uri, "runs", "gird"]) == 2
    assert "closest: grid" in capsys.readouterr().err


def test_a_malformed_uri_is_a_one_line_error() -> None:
    with pytest.raises(StoreError, match="is not a usable URI"):
        ArtifactStore("nosuchscheme://bucket/x")


def test_in_trial_checkpoints_on_s3(s3: tuple[pafs.S3FileSystem, str], endpoint: str, aws_env: None) -> None:
    """A run trained in its Tune trial keeps its checkpoints where the grid's Ray storage is:
    here an S3 URI, as another node would reach it. A rerun resumes from the latest."""
    from orchestration.in_trial import INDEX_FILE, Checkpoints, fit_in_trial
    from tests.test_in_trial import _epochs

    fs, bucket = s3
    uri = f"s3://{bucket}/.ray/exp/run?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    with pytest.raises(RuntimeError, match="epoch 3"):
        fit_in_trial("run", _epochs(4, fail_at=3), Checkpoints(uri), lambda row: None, max_failures=0)
    seen: list[int] = []
    metrics, last = fit_in_trial("run", _epochs(4, log=seen), Checkpoints(uri), lambda row: None, max_failures=0)
    assert seen == [3, 4] and metrics == {"epoch": 4}
    listed = {info.base_name for info in fs.get_file_info(pafs.FileSelector(f"{bucket}/.ray/exp/run"))}
    assert INDEX_FILE in listed and sum(name.startswith("checkpoint_") for name in listed) == 2
    with last.as_directory() as directory:
        assert (Path(directory) / "state.json").read_text() == '{"epoch": 4}'
