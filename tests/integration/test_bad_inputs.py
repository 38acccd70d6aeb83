"""Bad input through ``ctpipe run training``: blocking cases stop before train, warnings are shown.

A champion (trained on a clean window, with its suite logged to MLflow) exists first, so new
data is validated against the champion's suite, as in production. Each blocking case must
exit non-zero before ``train`` runs and leave the registry with the champion only; the
warning cases (one run carrying several of them) must complete and show every warning in
the run summary, in the HTML report and in GX's Data Docs page.
"""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from components.common import tracking
from components.common.registry import promote
from components.common.suites import infer_suite, save_suite
from components.fetch_features import build_training_set
from components.ingest import ingest
from components.register import register
from components.train import train
from pipelines.runner import window_params
from tests.helpers import data_docs_sections, small_config

pytestmark = pytest.mark.slow(seconds=160)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A workspace with a champion trained on clean window 1, and the window-1 rows to corrupt."""
    workspace = tmp_path_factory.mktemp("bad_inputs")
    config = small_config(workspace, rows=300)
    config_path = workspace / "ctpipe.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    bounds = window_params(config, 1)
    spec = config.dataset
    snapshot = ingest(spec.source, spec, str(workspace / "w1"), bounds["window_start"], bounds["window_end"])
    clean = pd.read_parquet(snapshot.path)
    suite = infer_suite(clean, spec)
    digest = save_suite(suite, str(workspace / "suite.json"))
    build_training_set(snapshot.path, spec, config.feast, str(workspace), str(workspace / "ts"))
    trained = train(
        str(workspace / "ts"),
        spec,
        config.model,
        config.tracking_uri,
        config.serving.model_name,
        str(workspace / "eval"),
        str(workspace / "suite.json"),
    )
    registered = register(trained.model_uri, trained.run_id, config.serving.model_name, True, config.tracking_uri)
    promote(config.serving.model_name, config.tracking_uri, registered.version)
    return {"config": config, "path": config_path, "clean": clean, "suite_hash": digest, "dir": workspace}


def _versions(config):
    tracking.configure(config.tracking_uri)
    return sorted(v.version for v in MlflowClient().search_model_versions(f"name='{config.serving.model_name}'"))


def _run(setup, source):
    """``ctpipe run training`` as a real process (in-process invocations share kfp.local's logging)."""
    args = ["--config", str(setup["path"]), "run", "training", "--param", f"source={source}", "--param", "dry_run=true"]
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=1200)
    return SimpleNamespace(exit_code=done.returncode, output=done.stdout + done.stderr)


def _parquet(frame, folder, name):
    path = folder / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return path


def _bytes(content, folder, name):
    path = folder / name
    path.write_bytes(content)
    return path


CLEAN_CSV_HEADER = "customer_id,event_timestamp,churned\n"

# (id, how to write the bad source from the clean rows, text the error must contain)
BLOCKING = [
    (
        "missing-column",
        lambda f, d: _parquet(f.drop(columns=["support_calls"]), d, "missing"),
        "column 'support_calls' is missing (expect_column_to_exist)",
    ),
    (
        "numbers-as-strings",
        lambda f, d: _parquet(f.assign(tenure_months=f.tenure_months.map(lambda v: f"{v:.1f} months")), d, "strings"),
        "column 'tenure_months' has type object, expected numeric",
    ),
    (
        "all-null-column",
        lambda f, d: _parquet(f.assign(plan=None), d, "allnull"),
        "column 'plan' is entirely null",
    ),
    (
        "duplicate-keys",
        lambda f, d: _parquet(pd.concat([f, f.head(4)]), d, "dupes"),
        "8 rows share a ('customer_id', 'event_timestamp') key",
    ),
    ("empty-file", lambda f, d: _bytes(b"", d, "empty.csv"), "file is empty (0 bytes)"),
    ("header-only", lambda f, d: _bytes(CLEAN_CSV_HEADER.encode(), d, "header.csv"), "the source has no rows at all"),
    (
        "ragged-csv",
        lambda f, d: _bytes(b"customer_id,event_timestamp\n1,2026-01-05\n2,2026-01-05,oops,extra\n", d, "ragged.csv"),
        "not a readable csv table: Error tokenizing data",
    ),
    (
        "bad-quoting",
        lambda f, d: _bytes(b'customer_id,event_timestamp\n1,"2026-01-05\n2,2026-01-06\n', d, "quote.csv"),
        "EOF inside string",
    ),
    ("not-tabular", lambda f, d: _bytes(b"\x89PNG\r\n\x1a\n\x00\x00", d, "image.parquet"), "not a readable parquet"),
    ("no-such-path", lambda f, d: d / "absent.parquet", "source data not found"),
]


@pytest.mark.parametrize(("case", "write", "message"), BLOCKING, ids=[case for case, _, _ in BLOCKING])
def test_blocking_input_stops_before_train_and_registers_nothing(setup, tmp_path, case, write, message):
    before = _versions(setup["config"])
    source = write(setup["clean"].copy(), tmp_path)

    result = _run(setup, source)

    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert source.name in result.output
    tasks = dict(re.findall(r"^  ([a-z-]+)\s+(ran|cached|failed|skipped)\b", result.output, re.M))
    assert tasks.get("train") in (None, "skipped"), tasks
    if case in {"missing-column", "numbers-as-strings", "all-null-column", "duplicate-keys"}:
        assert tasks["validate"] == "failed" and "ValidationFailed" in result.output
    assert _versions(setup["config"]) == before == [1]


def test_warnings_let_the_run_finish_and_are_shown_in_the_summary_and_report(setup, tmp_path):
    frame = setup["clean"].copy()
    frame.loc[0, "tenure_months"] = 10_000.0  # out of range
    frame.loc[1, "region"] = "mars"  # unseen category
    frame.loc[frame.index[::3], "satisfaction_score"] = np.nan  # null rate up (none in training)
    frame.loc[2, "event_timestamp"] = pd.Timestamp("2099-01-01", tz="UTC")  # in the future
    frame["coupon_code"] = "X"  # a column the config does not name
    source = _parquet(frame, tmp_path, "warnings")

    result = _run(setup, source)

    assert result.exit_code == 0, result.output
    assert re.search(r"^  train\s+ran\b", result.output, re.M), result.output
    expected = [
        "column 'tenure_months' has 1 values",
        "column 'region' has 1 values (0.33%) in unseen categories ['mars']",
        "column 'satisfaction_score' has 100 nulls (33.33%)",
        "column 'event_timestamp' has 1 timestamps after the time of validation",
        "columns not in the dataset config: extra ['coupon_code']",
    ]
    summary = result.output[result.output.index("\ntraining succeeded") :]
    assert "validation_report: 5 warning(s)" in summary
    for text in expected:
        assert f"warning: warnings.parquet: {text}" in summary, text

    report = re.search(r"output validation_report: (\S+)", summary).group(1)
    page = Path(report).read_text()
    assert "PASSED WITH 5 WARNINGS" in page
    for text in expected:
        assert text.replace("'", "&#x27;") in page, text
    # Validated against the champion's suite, not one inferred from this data.
    assert f"suite {setup['suite_hash']}" in page
    # GX's Data Docs page of the same run: GX shows each failed expectation in its column's section.
    docs_path = re.search(r"output validation_data_docs: (\S+)", summary).group(1)
    docs = data_docs_sections(Path(docs_path).read_text())
    assert "10000" in docs["tenure_months"] and "mars" in docs["region"]
    assert "100 unexpected values found" in docs["satisfaction_score"]
    for column in ("tenure_months", "region", "event_timestamp"):
        assert "1 unexpected values found" in docs[column], column
    for column in ("tenure_months", "region", "satisfaction_score", "event_timestamp"):
        assert "fa-times text-danger" in docs[column], column
    assert "fa-times" not in docs["plan"]
    for text in expected:
        assert text.replace("'", "&#x27;") in docs["ctpipe"], text
    assert len(_versions(setup["config"])) == 2
