"""batch_predict reading and writing ``s3://`` through Spark's s3a connector, against a real S3 store (SeaweedFS).

Every scenario runs in a fresh Python process. pyspark starts one JVM per process, with the first
session's ``spark.jars``, so a JVM that another test module started in the pytest process would lack
the s3a jars; a fresh process is also how a KFP task runs. The child logs at DEBUG (py4j then logs
every command it sends to the JVM, arguments included), and its whole output, the JVM's included, is
kept so that the tests can check that no secret is in it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.batch_predict import COMMIT_FILE, RUNS_DIR, predictions_path
from components.common import spark_s3, storage
from components.common.errors import ConfigError
from components.specs import DatasetSpec
from tests.data import ENTITY, TIMESTAMP
from tests.unit.test_batch_predict import POISON, _fit, _register

pytestmark = [pytest.mark.server, pytest.mark.slow(seconds=100)]

ROOT = Path(__file__).resolve().parents[2]
# A run id below every real one (abandoned long ago) and one above (a writer that started later).
STALE_RUN = "20000101T000000Z-00000000"
LATER_RUN = "29991231T235959Z-ffffffff"

# The child: runs the calls of a plan in order and writes one outcome per call (a result or an error).
CHILD = """
import json
import logging
import sys

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")

from components.batch_predict import batch_predict
from components.common import spark_s3
from components.specs import DatasetSpec


def spark_read(uri):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
    for key, value in spark_s3.session_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        with spark_s3.s3a_configured(spark, [uri]), spark_s3.spark_errors(uri):
            return {"rows": spark.read.parquet(spark_s3.to_s3a(uri)).count()}
    finally:
        spark.stop()


plan = json.loads(open(sys.argv[1]).read())
outcomes = []
for call in plan["calls"]:
    try:
        if call["kind"] == "spark_read":
            outcomes.append({"ok": spark_read(call["input_path"])})
            continue
        if call["kind"] == "plain_session":
            # A session without the s3a jars, still active: batch_predict reuses it (and its JVM).
            from pyspark.sql import SparkSession

            SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
            outcomes.append({"ok": {}})
            continue
        result = batch_predict(
            call["input_path"],
            DatasetSpec.model_validate(plan["spec"]),
            call["model_uri"],
            plan["tracking_uri"],
            call["output_path"],
            spark_master="local[2]",
        )
        outcomes.append({"ok": result.model_dump(mode="json")})
    except Exception as exc:
        outcomes.append({"error": type(exc).__name__, "message": str(exc)})
with open(sys.argv[2], "w") as handle:
    json.dump(outcomes, handle)
"""


def _run_child(tmp_path: Path, plan: dict[str, Any], env: dict[str, str] | None = None) -> tuple[list[dict], str]:
    """Run ``plan`` in a fresh process; its outcomes and its whole output (stdout and stderr)."""
    work = tmp_path / f"child-{secrets.token_hex(3)}"
    work.mkdir()
    script, plan_file, outcomes_file = work / "child.py", work / "plan.json", work / "outcomes.json"
    script.write_text(CHILD)
    plan_file.write_text(json.dumps(plan))
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    # cwd: whatever Spark or MLflow drop in the working directory lands under tmp_path.
    done = subprocess.run(
        [sys.executable, str(script), str(plan_file), str(outcomes_file)],
        cwd=work,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    (work / "output.log").write_text(output)  # for a failing test's reader
    assert done.returncode == 0, output[-5000:]
    return json.loads(outcomes_file.read_text()), output


def _upload_input(frame: pd.DataFrame, prefix: str, local: Path) -> None:
    """The same rows as two Parquet files, in a local folder and below an s3:// prefix."""
    local.mkdir()
    half = len(frame) // 2
    for index, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        name = f"part-{index}.parquet"
        part.to_parquet(local / name, index=False)
        storage.write_bytes(storage.join(prefix, name), (local / name).read_bytes())


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    """Scored rows in a fixed order, without the scoring time (it differs between runs by construction)."""
    frame = frame.drop(columns=["scored_at"])
    frame["date"] = frame["date"].astype(str)
    return frame.sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)


def _runs(output: str) -> list[str]:
    """The runs below ``output`` that hold any object."""
    return sorted({key.split("/")[0] for key in storage.find(storage.join(output, RUNS_DIR))})


def test_s3_scores_like_local_rerun_commits_a_whole_new_run_and_a_failed_run_changes_nothing(
    s3_prefix: str,
    s3_env: Any,
    churn_frame: pd.DataFrame,
    dataset_spec: DatasetSpec,
    tmp_path: Path,
) -> None:
    source, output = f"{s3_prefix}/input", f"{s3_prefix}/predictions"
    _upload_input(churn_frame, source, tmp_path / "input")
    # Left by earlier writers: a run abandoned long ago (removed by the next commit) and one that started
    # after any run of this test (another writer's: never removed by an earlier-started run).
    for run in (STALE_RUN, LATER_RUN):
        storage.write_bytes(storage.join(output, RUNS_DIR, run, "date=2000-01-01", "part-0.parquet"), b"junk")

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = _fit(churn_frame)

    class Poisoned:
        """The champion, except that it fails on a row with the poison value (pickled by value)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.classes_, self.feature_names_in_ = inner, inner.classes_, inner.feature_names_in_

        def predict_proba(self, frame: pd.DataFrame) -> Any:
            if (frame["marketing_score"] == POISON).any():
                raise ValueError("poisoned row reached the model")
            return self.inner.predict_proba(frame)

    _register(model, tracking_uri, "churn", alias="champion")
    poisoned = _register(Poisoned(model), tracking_uri, "churn")
    poisoned_source = f"{s3_prefix}/poisoned.parquet"
    dirty = churn_frame.copy()
    dirty.loc[len(dirty) - 1, "marketing_score"] = POISON
    storage.write_parquet(poisoned_source, dirty)

    champion = "models:/churn@champion"
    plan = {
        "spec": dataset_spec.model_dump(mode="json"),
        "tracking_uri": tracking_uri,
        "calls": [
            {"kind": "batch_predict", "input_path": source, "model_uri": champion, "output_path": output},
            {"kind": "batch_predict", "input_path": source, "model_uri": champion, "output_path": output},
            {
                "kind": "batch_predict",
                "input_path": poisoned_source,
                "model_uri": f"models:/churn/{poisoned}",
                "output_path": output,
            },
            {
                "kind": "batch_predict",
                "input_path": str(tmp_path / "input"),
                "model_uri": champion,
                "output_path": str(tmp_path / "local-predictions"),
            },
        ],
    }
    outcomes, logs = _run_child(tmp_path, plan)
    first, second, failed, local = outcomes
    assert "ok" in first and "ok" in second and "ok" in local, outcomes

    # Predictions read back from the store are exactly those of the local run, row for row.
    committed = predictions_path(output)
    assert committed == second["ok"]["data_path"] == storage.join(output, RUNS_DIR, Path(committed).name)
    remote = _normalised(storage.read_table(committed))
    expected = _normalised(pd.read_parquet(tmp_path / "local-predictions"))
    assert len(remote) == len(churn_frame) == second["ok"]["rows"]
    pd.testing.assert_frame_equal(remote, expected, check_exact=True, check_categorical=False)
    assert second["ok"]["partitions"] == local["ok"]["partitions"] == sorted(expected["date"].unique())

    # The re-run replaced the output as a whole: the marker names it and the run it replaced; the run it
    # replaced stays for readers that resolved the marker just before, the abandoned run is gone, the
    # later writer's run is untouched.
    first_run, second_run = Path(first["ok"]["data_path"]).name, Path(committed).name
    commit = json.loads(storage.read_text(storage.join(output, COMMIT_FILE)))
    assert (commit["run"], commit["previous"], commit["rows"]) == (second_run, first_run, len(churn_frame))
    # The failed run: the model's own error, unchanged; the marker still names the second run, and the
    # failed run's prefix is gone.
    assert failed.get("error") != "StorageError" and "poisoned row reached the model" in failed["message"], failed
    assert _runs(output) == sorted([first_run, second_run, LATER_RUN])
    assert predictions_path(output) == committed

    # A reader of the bare output prefix finds no Parquet rows (every entry starts with "_"), never a mixture.
    assert [key for key in storage.find(output) if not key.startswith(("_runs/", COMMIT_FILE))] == []

    # The secret never reached the output, although py4j logged every command it sent to the JVM.
    assert "Command to send" in logs
    assert s3_env.secret_key not in logs
    assert s3_env.secret_key not in json.dumps(outcomes)


def test_wrong_secret_is_refused_naming_the_uri_and_is_never_logged(
    s3_prefix: str, s3_env: Any, churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    source, output = f"{s3_prefix}/input.parquet", f"{s3_prefix}/predictions"
    storage.write_parquet(source, churn_frame)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register(_fit(churn_frame), tracking_uri, "churn", alias="champion")
    wrong = "Wrong" + secrets.token_urlsafe(24)

    champion = "models:/churn@champion"
    plan = {
        "spec": dataset_spec.model_dump(mode="json"),
        "tracking_uri": tracking_uri,
        "calls": [
            {"kind": "batch_predict", "input_path": source, "model_uri": champion, "output_path": output},
            # Spark's own request, refused by the store (batch_predict stops before Spark starts).
            {"kind": "spark_read", "input_path": source},
        ],
    }
    outcomes, logs = _run_child(tmp_path, plan, env={"AWS_SECRET_ACCESS_KEY": wrong})

    for outcome in outcomes:
        assert outcome.get("error") == "StorageError", outcomes
        assert storage.redact(source) in outcome["message"]
        assert "access denied" in outcome["message"] and "AWS_SECRET_ACCESS_KEY" in outcome["message"]
    assert "s3a request" in outcomes[1]["message"]  # the message of Spark's failure, not fsspec's
    for secret in (wrong, s3_env.secret_key):
        assert secret not in logs
        assert secret not in json.dumps(outcomes)
    assert not storage.exists(output)  # nothing was written


def test_a_jvm_started_without_the_jars_is_named_not_a_class_error(
    s3_prefix: str, churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    source = f"{s3_prefix}/input.parquet"
    storage.write_parquet(source, churn_frame)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register(_fit(churn_frame), tracking_uri, "churn", alias="champion")
    plan = {
        "spec": dataset_spec.model_dump(mode="json"),
        "tracking_uri": tracking_uri,
        "calls": [
            {"kind": "plain_session"},
            {
                "kind": "batch_predict",
                "input_path": source,
                "model_uri": "models:/churn@champion",
                "output_path": f"{s3_prefix}/predictions",
            },
        ],
    }
    outcomes, _ = _run_child(tmp_path, plan)

    assert outcomes[1].get("error") == "ConfigError", outcomes
    message = outcomes[1]["message"]
    assert "cannot load org.apache.hadoop.fs.s3a.S3AFileSystem" in message
    assert all(jar.filename in message for jar in spark_s3.JARS)
    assert not storage.exists(f"{s3_prefix}/predictions")


def test_hadoop_settings_come_from_the_environment_and_secrets_stay_out_of_the_builder() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "KEYID",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "t0ken-value",
        "AWS_ENDPOINT_URL": "https://store.example:9000/",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }
    settings = spark_s3.hadoop_settings(env)
    assert settings == {
        "fs.s3a.endpoint": "https://store.example:9000",
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "true",
        "fs.s3a.endpoint.region": "eu-west-3",
        "fs.s3a.aws.credentials.provider": spark_s3.TEMPORARY_PROVIDER,
        "fs.s3a.access.key": "KEYID",
        "fs.s3a.secret.key": "s3cr3t-value",
        "fs.s3a.session.token": "t0ken-value",
    }
    public = json.dumps(spark_s3.public_settings(settings))
    assert "s3cr3t-value" not in public and "t0ken-value" not in public and "KEYID" not in public
    # The S3-specific endpoint wins, as in botocore; plain http turns TLS off; no token: the simple provider.
    plain = spark_s3.hadoop_settings({**env, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333", "AWS_SESSION_TOKEN": ""})
    assert plain["fs.s3a.endpoint"] == "http://127.0.0.1:8333"
    assert plain["fs.s3a.connection.ssl.enabled"] == "false"
    assert plain["fs.s3a.aws.credentials.provider"] == spark_s3.SIMPLE_PROVIDER
    assert "fs.s3a.session.token" not in plain
    # No endpoint, no keys: AWS itself with the connector's default chain (web identity, instance role).
    assert spark_s3.hadoop_settings({}) == {}

    with pytest.raises(ConfigError, match=r"AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"):
        spark_s3.hadoop_settings({"AWS_ACCESS_KEY_ID": "KEYID"})
    with pytest.raises(
        ConfigError, match=r"AWS_ENDPOINT_URL: expected an http:// or https:// URL.*found '127\.0\.0\.1:9000'"
    ):
        spark_s3.hadoop_settings({"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def test_bad_locations_are_named_before_any_work(dataset_spec: DatasetSpec, tmp_path: Path) -> None:
    from components.batch_predict import batch_predict

    cases = [
        ("gs://bucket/in.parquet", str(tmp_path / "out"), r"input_path: gs://bucket/in\.parquet: .*found a gs:// URI"),
        (str(tmp_path / "in.parquet"), "s3:///predictions", r"output_path: s3:///predictions names no bucket"),
        ("s3://key:secret@bucket/in.parquet", str(tmp_path / "out"), r"input_path: s3://key:\*\*\*@bucket/in\.parquet"),
    ]
    for source, output, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            batch_predict(source, dataset_spec, "models:/churn@champion", f"sqlite:///{tmp_path}/mlflow.db", output)
        assert "secret@" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_jar_that_does_not_match_its_pins_is_refused(tmp_path: Path) -> None:
    jar = spark_s3.JARS[0]
    damaged = tmp_path / jar.filename
    damaged.write_bytes(b"\0" * jar.size)
    with pytest.raises(ConfigError, match=rf"checksum mismatch for {jar.filename}: expected sha1 {jar.sha1} sha256 "):
        spark_s3.verify_jar(damaged, jar)
    damaged.write_bytes(b"short")
    with pytest.raises(ConfigError, match=rf"5 bytes, expected {jar.size} for {jar.filename}"):
        spark_s3.verify_jar(damaged, jar)
    # The pins are those of the Hadoop that pyspark ships.
    assert spark_s3.pyspark_hadoop_version() == spark_s3.HADOOP_VERSION == jar.version
