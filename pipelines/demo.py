"""``ctpipe demo``: the whole continuous-training loop on the embedded default.

The story: generate data; train a first model on window 1 and make it the champion;
serve it; score window 2 with Spark; monitor window 2 and detect the drift injected
there; retrain on window 2; evaluate against the champion; roll the new model out as a
canary; promote it.

Each step is a real pipeline run on kfp.local (or a registry call), so a second demo
run is served from the kfp.local cache wherever inputs did not change. The story
starts from the beginning each time: the demo clears the demo model's aliases first.
Registered versions are kept, and registration is idempotent per training run, so a
replay adds no versions.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from components.common.errors import CtpipeError
from components.common.server_process import client_headers
from components.common.storage import read_table
from pipelines.config import CtpipeConfig
from pipelines.demo_data import DriftSpec, generate
from pipelines.runner import RunReport, run_pipeline, window_params

STEPS = 8


class DemoFailed(CtpipeError):
    """A demo step did not tell the story it should (for example no drift was detected)."""

    hint = "See the task log named above; 'ctpipe run PIPELINE --window N' reruns one step."


def _step(number: int, title: str) -> None:
    print(f"\n[{number}/{STEPS}] {title}", flush=True)


def _say(text: str) -> None:
    print(f"      {text}", flush=True)


def _require(report: RunReport) -> RunReport:
    cached = len(report.cache_hits)
    ran = sum(t.status == "ran" for t in report.tasks)
    _say(f"{report.pipeline}: {ran} tasks ran, {cached} from cache, {report.seconds:.1f}s")
    if not report.succeeded:
        raise DemoFailed(f"{report.pipeline} failed: {report.error} (log: {report.log_path})")
    return report


def _output_path(report: RunReport, key: str) -> Path:
    return Path(report.outputs[key]["path"])


def _keep_report(report: RunReport, key: str, reports: Path, name: str) -> Path:
    """Copy an HTML report to a stable path in the workspace."""
    target = reports / f"{name}.html"
    shutil.copyfile(_output_path(report, key), target)
    return target


def _reset_story(config: CtpipeConfig) -> None:
    """Start the story with no champion: stop the demo's server, clear aliases, traffic and history."""
    from mlflow.exceptions import MlflowException

    from components.common import registry, server_process, tracking

    server_process.stop_local_server(str(config.workspace))
    client = tracking.registry_client(config.tracking_uri)
    name = config.serving.model_name
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return  # first run: nothing registered yet
    for alias in model.aliases or {}:
        client.delete_registered_model_alias(name, alias)
    for tag in model.tags or {}:
        if tag.startswith("ctpipe.") and tag != registry.BLESSED_TAG:
            client.delete_registered_model_tag(name, tag)


def _observe_traffic(endpoint: str, model_name: str, rows: list[dict[str, Any]], requests_count: int) -> Counter[str]:
    """Send single-row V1 requests and count which model version answered each."""
    seen: Counter[str] = Counter()
    url = f"{endpoint}/v1/models/{model_name}:predict"
    with requests.Session() as session:
        session.headers.update(client_headers())  # serving.require_token: the token from the environment
        for index in range(requests_count):
            response = session.post(url, json={"instances": [rows[index % len(rows)]]}, timeout=10)
            response.raise_for_status()
            seen[str(response.json().get("model_version"))] += 1
    return seen


def run_demo(config: CtpipeConfig, rows_per_window: int = 5000, keep_serving: bool = True) -> dict[str, Any]:
    """Run the story and print a short summary of each step.

    Args:
        config: The configuration (the embedded default in ``ctpipe.yaml``).
        rows_per_window: Rows per generated window.
        keep_serving: Leave the local model server running at the end.

    Returns:
        What the demo produced: versions, decision, paths and the endpoint.
    """
    from components.common import registry, server_process
    from components.deploy import wait_for_serving

    workspace = config.workspace
    reports = workspace / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    name = config.serving.model_name
    endpoint = f"http://{config.serving.host}:{config.serving.port}"
    started = time.monotonic()
    progress = sys.stderr

    _step(1, "Generate data")
    windows = generate(config.dataset.source, windows=4, rows_per_window=rows_per_window, drift=DriftSpec(2))
    _say(f"{sum(w.rows for w in windows)} rows in {len(windows)} weekly windows, drift from window 2")
    _say(f"→ {config.dataset.source}")
    _reset_story(config)

    _step(2, "Train the first model on window 1 (no champion yet: value thresholds only)")
    first = _require(run_pipeline("training", config, window_params(config, 1), progress=progress))
    first_version = str(first.outputs["version"])
    blessing = json.loads(_output_path(first, "blessing").read_text())
    _say(f"candidate version {first_version}: blessed={blessing['blessed']}; " + _metrics_line(blessing))
    if not blessing["blessed"]:
        raise DemoFailed(f"the first model was not blessed: {_failed_checks(blessing)}")
    _keep_report(first, "validation_report", reports, "window1-validation")
    _keep_report(first, "validation_data_docs", reports, "window1-validation-data-docs")
    _keep_report(first, "evaluation_report", reports, "window1-evaluation")

    _step(3, "Promote it to champion and serve it")
    change = registry.promote(name, config.tracking_uri)
    wait_for_serving(endpoint, name, first_version, None, timeout=30)
    _say(f"{name}@champion: {change.previous or '-'} → {change.current}; serving at {endpoint}")

    _step(4, "Score window 2 with Spark (batch predictions with the champion)")
    scored = _require(run_pipeline("batch_scoring", config, window_params(config, 2), progress=progress))
    predictions = _output_path(scored, "Output")
    scored_rows = int(scored.outputs["Output"]["metadata"].get("rows", 0))  # KFP metadata numbers are floats
    _say(f"{scored_rows} rows scored by version {first_version} → {predictions}")

    _step(5, "Monitor window 2 against the champion's training data")
    monitored = _require(run_pipeline("monitoring", config, window_params(config, 2), progress=progress))
    decision = str(monitored.outputs["decision"])
    result = json.loads(_output_path(monitored, "result").read_text())
    _keep_report(monitored, "report", reports, "window2-monitoring")
    _say(f"decision: {decision.upper()}")
    for reason in result.get("reasons", [])[:4]:
        _say(f"  - {reason}")
    if decision != "retrain":
        raise DemoFailed(f"monitoring did not detect the drift injected in window 2 (decision {decision})")

    _step(6, "Retrain on the newer data (window 2) and evaluate against the champion")
    second = _require(run_pipeline("training", config, window_params(config, 2), progress=progress))
    second_version = str(second.outputs["version"])
    blessing = json.loads(_output_path(second, "blessing").read_text())
    _say(f"candidate version {second_version} vs champion {first_version}: blessed={blessing['blessed']}")
    _say(_metrics_line(blessing))
    _keep_report(second, "validation_report", reports, "window2-validation")
    _keep_report(second, "validation_data_docs", reports, "window2-validation-data-docs")
    _keep_report(second, "evaluation_report", reports, "window2-evaluation")
    if not blessing["blessed"]:
        raise DemoFailed(f"the retrained model was not blessed: {_failed_checks(blessing)}")

    _step(7, f"Canary: version {second_version} takes {config.serving.canary_percent}% of traffic")
    sample = read_table(config.dataset.source).head(50)[config.dataset.feature_columns]
    seen = _observe_traffic(endpoint, name, json.loads(sample.to_json(orient="records")), 400)
    share = 100.0 * seen.get(second_version, 0) / sum(seen.values())
    _say(f"400 live requests: {dict(seen)} → challenger answered {share:.0f}%")

    _step(8, f"Promote version {second_version} to champion")
    change = registry.promote(name, config.tracking_uri)
    wait_for_serving(endpoint, name, second_version, None, timeout=30)
    _say(f"{name}@champion: {change.previous} → {change.current}; it now serves 100%")

    if not keep_serving:
        server_process.stop_local_server(str(workspace))
    summary = {
        "champion": second_version,
        "previous_champion": first_version,
        "monitoring_decision": decision,
        "canary_share_percent": round(share, 1),
        "mlflow": config.tracking_uri,
        "reports": str(reports),
        "predictions": str(predictions),
        "endpoint": f"{endpoint}/v1/models/{name}:predict" if keep_serving else "(stopped)",
        "seconds": round(time.monotonic() - started, 1),
    }
    print("\nDone in {seconds}s. Where things are:".format(**summary))
    print(f"  MLflow            {summary['mlflow']}  (mlflow ui --backend-store-uri {config.tracking_uri})")
    print(f"  reports           {summary['reports']}/*.html")
    print(f"  predictions       {summary['predictions']}")
    print(f"  serving endpoint  {summary['endpoint']}")
    if keep_serving:
        print("  stop the server   ctpipe serve --stop")
    return summary


def _metrics_line(blessing: dict[str, Any]) -> str:
    candidate = blessing.get("candidate", {})
    champion = blessing.get("champion") or {}
    parts = []
    for metric, value in candidate.items():
        text = f"{metric} {value:.3f}"
        if metric in champion:
            text += f" (champion {champion[metric]:.3f})"
        parts.append(text)
    return ", ".join(parts)


def _failed_checks(blessing: dict[str, Any]) -> str:
    return "; ".join(c["reason"] for c in blessing.get("checks", []) if not c["passed"]) or "no failed check recorded"
