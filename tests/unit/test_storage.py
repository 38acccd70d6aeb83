"""Storage by URI (components/common/storage.py): the same calls on local paths and on a real S3 server.

The S3 tests run against SeaweedFS on 127.0.0.1 (``s3_server`` in tests/conftest.py) with real
keys: no S3 mocks. Credentials reach ctpipe only through the environment, as on a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import requests
import s3fs
import yaml

from components.common import storage
from components.common.errors import ConfigError, DataError, StorageError
from components.common.inference_log import append_batch, read_window
from components.common.registry import redact_uri
from components.ingest import ingest, source_fingerprint
from components.notify import run_summary
from pipelines.config import parse_config
from pipelines.windows import Window, load_windows, write_manifest
from tests.data import churn_spec
from tests.helpers import ROOT

s3 = pytest.mark.server  # these start (once per session) the SeaweedFS server


@pytest.fixture(params=["local", pytest.param("s3", marks=s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder to work in: a local path, or a fresh prefix in the test S3 bucket."""
    if request.param == "s3":
        return request.getfixturevalue("s3_prefix")
    return str(tmp_path / "store")


# --- locations: no credentials in them, none in a message -----------------------------------------


def test_redact_hides_passwords_and_query_strings_and_keeps_the_rest():
    assert storage.redact("s3://bucket/a/b.parquet") == "s3://bucket/a/b.parquet"
    assert storage.redact("/data/churn.parquet") == "/data/churn.parquet"
    assert storage.redact("s3://AKIAX:topsecret@bucket/key") == "s3://AKIAX:***@bucket/key"
    shown = storage.redact("abfs://container@acct.dfs.core.windows.net/p.parquet?sv=1&sig=topsecret")
    assert shown == "abfs://container@acct.dfs.core.windows.net/p.parquet?***"
    assert "topsecret" not in storage.redact("gs://b/k#topsecret")

    # Tracking URIs go through the same function (registry.redact_uri): the sqlite form keeps its slashes.
    assert redact_uri("sqlite:////srv/ws/mlflow.db") == "sqlite:////srv/ws/mlflow.db"
    assert redact_uri("postgresql://mlflow:topsecret@127.0.0.1:5432/db") == "postgresql://mlflow:***@127.0.0.1:5432/db"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_locations_with_credentials_are_refused_without_repeating_them(tmp_path):
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["dataset"]["source"] = "s3://AKIAX:topsecret@bucket/churn.parquet"
    raw["infra"]["reports_dir"] = "abfs://c@acct.dfs.core.windows.net/reports?sig=topsecret"
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path)
    message = str(caught.value)
    assert "dataset.source" in message and "infra.reports_dir" in message and "credentials" in message
    assert "topsecret" not in message


def test_the_workspace_stays_local_and_other_locations_may_be_uris(tmp_path):
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["infra"]["workspace"] = "s3://bucket/workspace"
    with pytest.raises(ConfigError, match=r"infra.workspace: .*not a local folder"):
        parse_config(raw, tmp_path)

    raw["infra"].update(workspace=f"file://{tmp_path}/ws", reports_dir="reports", pipeline_root="s3://b/root")
    raw["dataset"]["source"] = "s3://bucket/churn.parquet"
    raw["serving"]["inference_log_dir"] = "s3://bucket/inference_log"
    config = parse_config(raw, tmp_path)
    assert config.workspace == tmp_path / "ws"
    assert config.reports_dir == str(tmp_path.resolve() / "reports")  # relative paths resolve as before
    assert config.inference_log_dir == "s3://bucket/inference_log"
    assert config.dataset.source == "s3://bucket/churn.parquet"


def test_the_embedded_default_keeps_local_paths(tmp_path):
    config = parse_config(yaml.safe_load((ROOT / "ctpipe.yaml").read_text()), tmp_path)
    assert config.infra.pipeline_root is None
    assert config.reports_dir == str(config.workspace / "reports")
    assert config.inference_log_dir == str(config.workspace / "inference_log")
    assert not storage.is_remote(config.dataset.source)


def test_a_missing_driver_names_the_uri_and_the_package():
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(StorageError, match=r"gs://bucket/churn.parquet: .*install the 'gcsfs' package"):
        storage.read_table("gs://bucket/churn.parquet")
    with pytest.raises(StorageError, match=r"unknown storage protocol 'nosuch'"):
        storage.exists("nosuch://bucket/key")


def test_file_uris_are_local_paths(tmp_path):
    storage.write_text(f"file://{tmp_path}/a/b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert storage.read_text(tmp_path / "a" / "b.txt") == "hello"
    with pytest.raises(StorageError, match="not a host"):
        storage.local_path("file://otherhost/a")


# --- the same calls on a local folder and on S3 ----------------------------------------------------


def test_tables_round_trip_and_fingerprint_alike_locally_and_on_s3(root, churn_frame, tmp_path):
    frame = churn_frame.head(200)
    parquet, csv = storage.join(root, "t", "churn.parquet"), storage.join(root, "t", "churn.csv")
    assert not storage.exists(parquet)

    storage.write_parquet(parquet, frame)
    storage.write_bytes(csv, frame.to_csv(index=False).encode())

    assert storage.exists(parquet) and not storage.is_dir(parquet) and storage.is_dir(storage.join(root, "t"))
    pd.testing.assert_frame_equal(storage.read_table(parquet), frame)
    back = storage.read_table(csv)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    # The same bytes give the same fingerprint wherever they are.
    local = tmp_path / "copy.parquet"
    local.write_bytes(storage.read_bytes(parquet))
    assert storage.fingerprint(parquet) == storage.fingerprint(local)
    assert storage.find(storage.join(root, "t")) == ["churn.csv", "churn.parquet"]


def test_a_folder_of_parquet_files_reads_and_fingerprints_alike(root, churn_frame, tmp_path):
    folder = storage.join(root, "parts")
    local = tmp_path / "parts"
    for index, part in enumerate([churn_frame.iloc[:100], churn_frame.iloc[100:250]]):
        for base in (folder, str(local)):
            storage.write_parquet(storage.join(base, f"day={index}", "part-0.parquet"), part)
    table = storage.read_table(folder)
    assert len(table) == 250
    assert storage.fingerprint(folder) == storage.fingerprint(local)
    assert source_fingerprint(folder) == f"sha256:{storage.fingerprint(local)}"


def test_missing_empty_and_unreadable_tables_are_named(root):
    with pytest.raises(DataError, match=r"churn.parquet: no such file or folder"):
        storage.read_table(storage.join(root, "churn.parquet"))
    with pytest.raises(DataError, match=r"source data not found"):
        source_fingerprint(storage.join(root, "churn.parquet"))
    storage.write_bytes(storage.join(root, "empty.csv"), b"")
    with pytest.raises(DataError, match=r"empty.csv: file is empty"):
        storage.read_table(storage.join(root, "empty.csv"))
    storage.write_bytes(storage.join(root, "bad.parquet"), b"not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable parquet table"):
        storage.read_table(storage.join(root, "bad.parquet"))


def test_the_window_manifest_lives_beside_the_source(root):
    source = storage.join(root, "churn.parquet")
    windows = [Window(1, "2026-01-05T00:00:00+00:00", "2026-01-12T00:00:00+00:00", 10)]
    assert write_manifest(source, windows) == storage.join(root, "churn.windows.json")
    assert load_windows(source) == windows


# --- S3 only: refused keys, ingest, the inference log, reports, logs --------------------------------


@s3
def test_wrong_or_missing_keys_are_refused(s3_prefix, s3_env, monkeypatch):
    storage.write_text(storage.join(s3_prefix, "x.txt"), "x")
    # Unsigned requests: the bucket is not public.
    assert requests.get(f"{s3_env.endpoint}/{s3_env.bucket}/", timeout=10).status_code == 403
    anonymous = s3fs.S3FileSystem(anon=True, endpoint_url=s3_env.endpoint, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        anonymous.ls(s3_env.bucket)
    # A wrong secret and an unknown key id: refused with an error that names the location.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env.secret_key[:8])
    with pytest.raises(StorageError, match=r"s3://.*x.txt: access denied by the object store") as caught:
        storage.read_table(storage.join(s3_prefix, "x.txt"))
    assert s3_env.secret_key not in str(caught.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
    with pytest.raises(StorageError, match="access denied"):
        storage.write_text(storage.join(s3_prefix, "y.txt"), "y")
    # The right keys again: the seam follows the environment, nothing stale is kept.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    assert storage.read_text(storage.join(s3_prefix, "x.txt")) == "x"


@s3
def test_ingest_from_s3_gives_the_snapshot_it_gives_from_the_same_local_file(s3_prefix, churn_data, tmp_path):
    path, windows = churn_data
    remote = storage.join(s3_prefix, "churn.parquet")
    storage.write_bytes(remote, path.read_bytes())
    window = windows[1]

    local = ingest(str(path), churn_spec(path), str(tmp_path / "local"), window.start, window.end)
    from_s3 = ingest(remote, churn_spec(remote), str(tmp_path / "s3"), window.start, window.end)

    assert from_s3.content_hash == local.content_hash and from_s3.rows == local.rows == window.rows
    assert from_s3.source == remote
    assert (tmp_path / "s3").read_bytes() == (tmp_path / "local").read_bytes()
    assert source_fingerprint(remote) == source_fingerprint(str(path))


def _batch(stamps: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(stamps))],
            "timestamp": pd.to_datetime(stamps, utc=True),
            "model_name": "churn",
            "model_version": "1",
            "tenure_months": range(len(stamps)),
            "prediction": [0.1 * i for i in range(len(stamps))],
        }
    )


@s3
def test_the_inference_log_round_trips_through_s3(s3_prefix, s3_env, tmp_path):
    log_dir = storage.join(s3_prefix, "inference_log")
    with pytest.raises(DataError, match="no inference log here"):
        read_window(log_dir)
    written = append_batch(log_dir, _batch(["2026-01-01T23:59:00Z", "2026-01-02T00:01:00Z"]))
    append_batch(log_dir, _batch(["2026-01-02T05:00:00Z"]))
    storage.write_text(storage.join(log_dir, "date=2026-01-02", "notes.txt"), "not a batch")

    assert all(w.startswith(f"{log_dir}/date=2026-01-0") and w.endswith(".parquet") for w in written)
    assert len(read_window(log_dir)) == 3
    # Another writer (here a client of its own) adds a batch: the next read sees it, no listing is cached.
    other = s3_env.client()
    local = tmp_path / "part.parquet"
    _batch(["2026-01-03T00:00:00Z"]).to_parquet(local, index=False)
    other.put_file(str(local), f"{log_dir.removeprefix('s3://')}/date=2026-01-03/part-other.parquet")
    assert len(read_window(log_dir)) == 4
    window = read_window(log_dir, "2026-01-02", "2026-01-03")
    assert list(window["request_id"]) == ["r1", "r0"]
    assert str(window["timestamp"].dtype) == "datetime64[ns, UTC]"


@s3
def test_the_run_summary_is_copied_to_an_s3_reports_folder(s3_prefix, tmp_path):
    reports = storage.join(s3_prefix, "reports")
    summary = run_summary("continuous_training", "SUCCEEDED", "job-1", "", str(tmp_path / "summary.md"), reports)
    assert summary.written[1] == f"{reports}/continuous_training-last-run.md"
    assert storage.read_text(summary.written[1]) == summary.markdown


@s3
def test_no_log_line_or_error_carries_the_secret_key(s3_prefix, s3_env, churn_data, tmp_path, caplog, capfd):
    secret = s3_env.secret_key
    ctpipe_logger = logging.getLogger("ctpipe")
    ctpipe_logger.addHandler(caplog.handler)  # ctpipe's loggers do not propagate to the root
    errors = []
    try:
        with caplog.at_level(logging.DEBUG):  # botocore, s3fs and aiobotocore log requests at DEBUG
            ctpipe_logger.setLevel(logging.DEBUG)
            path, windows = churn_data
            remote = storage.join(s3_prefix, "churn.parquet")
            storage.write_bytes(remote, path.read_bytes())
            ingest(remote, churn_spec(remote), str(tmp_path / "snapshot"), windows[0].start, windows[0].end)
            source_fingerprint(remote)
            append_batch(storage.join(s3_prefix, "log"), _batch(["2026-01-01T00:00:00Z"]))
            read_window(storage.join(s3_prefix, "log"))
            run_summary("training", "FAILED", "job-2", "boom", str(tmp_path / "s.md"), storage.join(s3_prefix, "r"))
            for key, value in (("AWS_SECRET_ACCESS_KEY", secret[::-1]), ("AWS_ACCESS_KEY_ID", "NOSUCHKEY")):
                with pytest.MonkeyPatch.context() as patch, pytest.raises(StorageError) as caught:
                    patch.setenv(key, value)
                    storage.read_table(remote)
                errors.append(f"{caught.value} {caught.value.hint} {caught.value.__cause__!r}")
    finally:
        ctpipe_logger.removeHandler(caplog.handler)
        ctpipe_logger.setLevel(logging.INFO)
    captured = capfd.readouterr()
    assert caplog.records, "the debug logs were captured"
    assert any(record.name.startswith(("botocore", "s3fs", "aiobotocore")) for record in caplog.records)
    for text in [
        caplog.text,
        captured.out,
        captured.err,
        *errors,
        json.dumps([r.__dict__ for r in caplog.records], default=str),
    ]:
        assert secret not in text
