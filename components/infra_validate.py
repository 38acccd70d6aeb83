"""Infra validation: try a challenger in a sandbox model server before it gets any traffic.

Like TFX's InfraValidator, this answers "does this model actually load and answer in the
server we run?", which evaluation cannot: a model can score well offline and still fail to
unpickle in the serving image, need a package the server lacks, or answer garbage.

:func:`infra_validate` starts ``python -m serving.server`` pinned to the version (it ignores
the registry aliases, so nothing the live server serves changes) on a free 127.0.0.1 port,
waits for readiness within ``serving.infra_validation.timeout_seconds``, then sends

- a V1 request and a V2 request with sample rows from the evaluation data (both must answer
  200 with one finite prediction per row, from this version, and agree with each other), and
- one deliberately bad request (a feature left out), which must get a 4xx,

stops the sandbox and writes the infra blessing (JSON). The verdict is also recorded on the
model version as the tag ``ctpipe.infra_blessed`` (``true``/``false``), which
``components.deploy`` checks: a version whose infra validation failed never gets traffic.

Before the sandbox starts, the version's ONNX model (compiled at registration) is compared
with its sklearn model on every evaluation row (:func:`compiled_model.check_parity`). The
outcome chooses what the model server scores the version with, tag ``ctpipe.serving_runtime``:
``onnx`` when parity holds, ``sklearn`` otherwise, with the reason in ``ctpipe.onnx_parity``. It
is informational (check ``onnx_parity`` always passes): a model without ONNX parity is served by
sklearn, not refused. The sandbox started afterwards already sees the runtime tag.

Given the registry state the pipeline read (:mod:`components.common.registry_state`), a version
that is already infra-blessed (and whose ONNX parity was checked, if it has an ONNX model) is not
validated again: its blessing is written from the tags, nothing is started and MLflow is not
imported (an idempotent skip). A version whose validation failed is always tried again.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from components.common.errors import DataError, DeployError
from components.common.logs import get_logger
from components.common.registry import (
    INFRA_BLESSED_TAG,
    ONNX_ARTIFACT,
    ONNX_PARITY_TAG,
    ONNX_SHA256_TAG,
    ONNX_TAG,
    SERVING_RUNTIME_TAG,
    get_version,
    redact_uri,
)
from components.common.registry_state import RegistryState, renew_epoch
from components.common.skips import log_skip

# pandas, requests, the specs and the storage layer are imported where a validation runs: a task
# that finds the version already blessed starts without them (tests/unit/test_import_budget.py).
if TYPE_CHECKING:
    import pandas as pd

    from components.serving_spec import ServingSpec
    from components.specs import DatasetSpec

logger = get_logger("infra_validate")

REQUEST_TIMEOUT = 30.0
#: Longest parity reason written to the version's ``ctpipe.onnx_parity`` tag.
_PARITY_REASON_CHARS = 300

Runtime = Literal["onnx", "sklearn"]


class InfraCheck(BaseModel):
    """One thing the sandbox was asked to do."""

    name: str
    passed: bool
    detail: str


class InfraValidationResult(BaseModel):
    """The infra blessing of one registered version."""

    model_name: str
    version: str
    blessed: bool
    reason: str
    checks: list[InfraCheck] = Field(default_factory=list)
    ready_seconds: float | None = None
    sample_rows: int = 0
    blessing_path: str = ""
    serving_runtime: Runtime = Field(
        default="sklearn", description="What the model server scores this version with (tag ctpipe.serving_runtime)."
    )
    onnx_parity: str = Field(default="", description="Why: the ONNX parity verdict (tag ctpipe.onnx_parity).")
    skipped: str = Field(default="", description="Why nothing was validated (an idempotent skip); empty otherwise.")


def _sample(frame: pd.DataFrame, eval_set_path: str, dataset: DatasetSpec, rows: int) -> pd.DataFrame:
    missing = [c for c in dataset.feature_columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{eval_set_path}: evaluation data lacks feature column(s) {missing}; "
            f"found {sorted(map(str, frame.columns))}"
        )
    features = frame[dataset.feature_columns].dropna()
    if features.empty:
        raise DataError(f"{eval_set_path}: no evaluation row has every feature set; cannot build sample requests")
    return features.head(rows).reset_index(drop=True)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _v2_body(rows: pd.DataFrame, metadata: dict[str, Any]) -> dict[str, Any]:
    types = {i["name"]: i.get("datatype", "BYTES") for i in metadata.get("inputs", [])}
    return {
        "id": "infra-validation",
        "inputs": [
            {
                "name": column,
                "shape": [len(rows)],
                "datatype": types.get(column, "BYTES"),
                "data": [_plain(v) for v in rows[column]],
            }
            for column in rows.columns
        ],
    }


def _predictions_ok(values: Any, rows: int) -> str:
    if not isinstance(values, list) or len(values) != rows:
        return f"expected {rows} predictions, got {values!r:.80}"
    bad = [v for v in values if not isinstance(v, int | float) or not math.isfinite(v)]
    return f"non-finite or non-numeric predictions: {bad[:3]}" if bad else ""


def _v1_values(body: dict[str, Any], rows: int) -> tuple[list[Any], str]:
    """The numbers a V1 answer holds (a multiclass answer's probabilities, flattened) and what is wrong with it."""
    predictions = body.get("predictions", [])
    probabilities = body.get("probabilities")
    if probabilities is None:
        return predictions, _predictions_ok(predictions, rows)
    # Multiclass: one class per row, and one row of k probabilities summing to 1.
    if not isinstance(predictions, list) or len(predictions) != rows:
        return [], f"expected {rows} predicted classes, got {predictions!r:.80}"
    width = len(body.get("classes") or [])
    if not isinstance(probabilities, list) or any(not isinstance(r, list) or len(r) != width for r in probabilities):
        return [], f"expected {rows} rows of {width} probabilities, got {probabilities!r:.80}"
    flat = [v for row in probabilities for v in row]
    problem = _predictions_ok(flat, rows * width)
    if not problem and any(not math.isclose(sum(row), 1.0, abs_tol=1e-6) for row in probabilities):
        problem = "class probabilities of a row do not sum to 1"
    return flat, problem


def _v2_values(outputs: list[dict[str, Any]], rows: int) -> tuple[Any, str]:
    """The numbers a V2 answer holds (``predict_proba`` of a multiclass model) and what is wrong with it."""
    by_name = {output.get("name"): output for output in outputs}
    proba = by_name.get("predict_proba")
    if proba is None:
        values = outputs[0].get("data")
        return values, _predictions_ok(values, rows)
    values = proba.get("data")
    shape = proba.get("shape") or [rows, 0]
    if len(shape) != 2 or shape[0] != rows:
        return values, f"predict_proba has shape {shape}; expected [{rows}, k]"
    return values, _predictions_ok(values, rows * int(shape[1]))


def _check_requests(endpoint: str, model_name: str, version: str, rows: pd.DataFrame) -> list[InfraCheck]:
    import requests

    from components.common.server_process import client_headers

    session = requests.Session()
    session.headers.update(client_headers())  # the sandbox requires the token when serving.require_token is on
    checks: list[InfraCheck] = []
    base = endpoint.rstrip("/")
    instances = [{k: _plain(v) for k, v in row.items()} for row in rows.to_dict(orient="records")]

    v1 = session.post(f"{base}/v1/models/{model_name}:predict", json={"instances": instances}, timeout=REQUEST_TIMEOUT)
    v1_predictions: list[Any] = []
    if v1.status_code != 200:
        checks.append(InfraCheck(name="v1_predict", passed=False, detail=f"HTTP {v1.status_code}: {v1.text[:300]}"))
    else:
        body = v1.json()
        v1_predictions, problem = _v1_values(body, len(rows))
        if not problem and str(body.get("model_version")) != version:
            problem = f"answered by version {body.get('model_version')}, not {version}"
        checks.append(InfraCheck(name="v1_predict", passed=not problem, detail=problem or f"{len(rows)} rows answered"))

    metadata = session.get(f"{base}/v2/models/{model_name}", timeout=REQUEST_TIMEOUT)
    meta = metadata.json() if metadata.status_code == 200 else {}
    checks.append(
        InfraCheck(
            name="v2_metadata",
            passed=metadata.status_code == 200 and bool(meta.get("inputs")),
            detail=f"HTTP {metadata.status_code}, inputs {[i.get('name') for i in meta.get('inputs', [])]}",
        )
    )
    v2 = session.post(f"{base}/v2/models/{model_name}/infer", json=_v2_body(rows, meta), timeout=REQUEST_TIMEOUT)
    if v2.status_code != 200:
        checks.append(InfraCheck(name="v2_infer", passed=False, detail=f"HTTP {v2.status_code}: {v2.text[:300]}"))
    else:
        values, problem = _v2_values(v2.json().get("outputs") or [{}], len(rows))
        if (
            not problem
            and v1_predictions
            and any(
                not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(values, v1_predictions, strict=True)
            )
        ):
            problem = "V1 and V2 answers differ for the same rows"
        checks.append(InfraCheck(name="v2_infer", passed=not problem, detail=problem or f"{len(rows)} rows answered"))

    dropped = rows.columns[0]
    bad_body = {"instances": [{k: v for k, v in instances[0].items() if k != dropped}]}
    bad = session.post(f"{base}/v1/models/{model_name}:predict", json=bad_body, timeout=REQUEST_TIMEOUT)
    checks.append(
        InfraCheck(
            name="bad_request_rejected",
            passed=400 <= bad.status_code < 500,
            detail=f"request without {dropped!r} -> HTTP {bad.status_code}: {bad.text[:200]}",
        )
    )
    live = session.get(f"{base}/v2/health/live", timeout=REQUEST_TIMEOUT)
    checks.append(
        InfraCheck(name="alive_after_bad_request", passed=live.status_code == 200, detail=f"HTTP {live.status_code}")
    )
    return checks


def _onnx_parity(
    model_name: str, version: str, tracking_uri: str, frame: pd.DataFrame, dataset: DatasetSpec
) -> tuple[Runtime, str]:
    """Compare the version's ONNX model with its sklearn model on every row of ``frame``.

    Returns:
        The runtime to serve with, and why (``passed: ...``, ``failed: ...`` or ``no ONNX: ...``).
    """
    import mlflow.artifacts
    from mlflow.models import Model as MlflowModel

    from components.common import tracking
    from components.common.compiled_model import OnnxScorer, check_parity, output_kind
    from components.common.model_input import features_of, prepare_features

    client = tracking.registry_client(tracking_uri)
    tags = dict(get_version(client, model_name, version).tags or {})
    status = tags.get(ONNX_TAG)
    if status is None:
        return "sklearn", f"no ONNX: the version has no {ONNX_TAG} tag (registered without ONNX compilation)"
    if status != "compiled":
        return "sklearn", f"no ONNX: {status}"
    staging = tempfile.mkdtemp(prefix="ctpipe-parity-")
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=staging)
        )
        # Unpickled only after the SHA-256 that train recorded matched.
        sk_model = tracking.load_downloaded_model(local, f"models:/{model_name}/{version}", client)
        features = features_of(MlflowModel.load(str(local)), sk_model)
        output = output_kind(sk_model)
        scorer = OnnxScorer.from_file(local / ONNX_ARTIFACT, tags.get(ONNX_SHA256_TAG, ""), features, output)
        rows = prepare_features(frame, dataset, [f.name for f in features])
        parity = check_parity(sk_model, scorer, rows, output)
    except Exception as exc:  # an unpickling, artifact or integrity error: the sklearn model serves
        logger.warning(
            "ONNX parity could not be checked; the sklearn model will serve",
            extra={"model": model_name, "version": version, "error": f"{type(exc).__name__}: {exc}"},
        )
        return "sklearn", f"failed: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ("onnx" if parity.passed else "sklearn"), parity.reason


def _record_runtime(model_name: str, version: str, tracking_uri: str, runtime: Runtime, reason: str) -> None:
    from components.common import tracking

    client = tracking.registry_client(tracking_uri)
    # The reason first: a server that sees the runtime change finds why beside it.
    client.set_model_version_tag(model_name, version, ONNX_PARITY_TAG, reason[:_PARITY_REASON_CHARS])
    client.set_model_version_tag(model_name, version, SERVING_RUNTIME_TAG, runtime)


def _record_tag(model_name: str, version: str, tracking_uri: str, blessed: bool) -> None:
    from components.common import tracking

    client = tracking.registry_client(tracking_uri)
    client.set_model_version_tag(model_name, version, INFRA_BLESSED_TAG, "true" if blessed else "false")
    # Last write: the validation changed the registry, so no cached run keyed on the state before it is replayed.
    renew_epoch(client, model_name)


def already_infra_blessed(state: RegistryState, version: str) -> str | None:
    """Why ``version`` needs no infra validation now, per ``state``; None when it must be validated.

    It needs none when its ``ctpipe.infra_blessed`` tag is ``true`` and the serving runtime and the
    ONNX parity verdict are recorded, unless its ONNX model was compiled after parity was last
    checked. A ``false`` tag (or none) means validate: the failure may have been the sandbox's.
    """
    held = state.version(version)
    if held is None or held.status != "READY":
        return None
    tags = held.tags
    runtime, parity = tags.get(SERVING_RUNTIME_TAG), tags.get(ONNX_PARITY_TAG)
    if tags.get(INFRA_BLESSED_TAG) != "true" or runtime not in ("onnx", "sklearn") or parity is None:
        return None
    if tags.get(ONNX_TAG) == "compiled" and parity.startswith("no ONNX"):
        return None
    return f"version {version} is already infra-blessed ({INFRA_BLESSED_TAG}=true, serving runtime {runtime})"


def infra_validate(
    version: str,
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    eval_set_path: str,
    dataset: DatasetSpec,
    blessing_path: str,
    known_state: RegistryState | None = None,
) -> InfraValidationResult:
    """Start ``version`` in a sandbox server, send sample and bad requests, write the infra blessing.

    With ``known_state`` (the registry as the pipeline last read it), a version that is already
    infra-blessed is not validated again (:func:`already_infra_blessed`): the blessing is written
    from its tags and ``skipped`` says why. A validation that ran renews the registry epoch
    (:mod:`components.common.registry_state`).

    Args:
        version: Registry version to validate (normally the new challenger).
        serving: Model name, batch limit and ``infra_validation`` settings (timeout, sample rows).
        tracking_uri: MLflow tracking/registry URI the sandbox loads the version from.
        workspace: The sandbox's log goes to ``<workspace>/infra_validation/v<version>/`` (empty: a
            private temporary folder, as in a cluster task).
        eval_set_path: Evaluation data (CSV/Parquet) the sample requests are built from.
        dataset: Feature columns of the sample requests.
        blessing_path: Where the infra blessing JSON is written.
        known_state: The model's registry state read earlier in the run; None to validate regardless.

    Returns:
        The verdict; ``blessed`` is False when the model does not load, is not ready in time or
        answers a request wrongly. That is a result, not an exception: it stops the rollout.

    Raises:
        DataError: The evaluation data cannot be read or has no complete row.
    """
    from components.common.io import write_json

    version = str(version)
    settings = serving.infra_validation
    if not settings.enabled:
        off = "infra validation is switched off (serving.infra_validation.enabled: false)"
        result = InfraValidationResult(
            model_name=serving.model_name,
            version=version,
            blessed=True,
            reason=off,
            blessing_path=str(blessing_path),
            serving_runtime="sklearn",
            onnx_parity="not checked: infra validation is switched off",
            skipped=off,
        )
        write_json(blessing_path, result.model_dump(mode="json"))
        log_skip(logger, off, model=serving.model_name, version=version)
        return result
    done = already_infra_blessed(known_state, version) if known_state is not None else None
    if known_state is not None and done is not None:
        tags = known_state.versions[version].tags
        result = InfraValidationResult(
            model_name=serving.model_name,
            version=version,
            blessed=True,
            reason=done,
            checks=[InfraCheck(name="already_infra_blessed", passed=True, detail=done)],
            blessing_path=str(blessing_path),
            serving_runtime="onnx" if tags[SERVING_RUNTIME_TAG] == "onnx" else "sklearn",
            onnx_parity=tags[ONNX_PARITY_TAG],
            skipped=done,
        )
        write_json(blessing_path, {**result.model_dump(mode="json"), "tracking_uri": redact_uri(tracking_uri)})
        log_skip(logger, done, model=serving.model_name, version=version)
        return result
    return _validate(version, serving, tracking_uri, workspace, eval_set_path, dataset, blessing_path)


def _validate(
    version: str,
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    eval_set_path: str,
    dataset: DatasetSpec,
    blessing_path: str,
) -> InfraValidationResult:
    """The validation itself: parity, the sandbox server, its answers, the tags (see :func:`infra_validate`)."""
    import requests

    from components.common.io import scratch_folder, write_json
    from components.common.server_process import start_sandbox_server, stop_sandbox_server
    from components.common.storage import read_table

    settings = serving.infra_validation
    frame = read_table(eval_set_path)
    rows = _sample(frame, eval_set_path, dataset, settings.sample_rows)
    parity_started = time.perf_counter()
    runtime, parity = _onnx_parity(serving.model_name, version, tracking_uri, frame, dataset)
    _record_runtime(serving.model_name, version, tracking_uri, runtime, parity)
    checks: list[InfraCheck] = [
        InfraCheck(
            name="onnx_parity",
            passed=True,  # informational: without parity the sklearn model serves
            detail=f"serving runtime {runtime} ({time.perf_counter() - parity_started:.2f}s): {parity}",
        )
    ]
    folder = scratch_folder(workspace) / "infra_validation" / f"v{version}"
    ready_seconds: float | None = None
    started = time.perf_counter()
    try:
        sandbox = start_sandbox_server(
            serving.model_name, version, tracking_uri, folder, settings.timeout_seconds, serving
        )
    except DeployError as exc:
        checks.append(InfraCheck(name="ready", passed=False, detail=str(exc)))
    else:
        ready_seconds = round(time.perf_counter() - started, 3)
        checks.append(InfraCheck(name="ready", passed=True, detail=f"ready after {ready_seconds}s"))
        try:
            checks += _check_requests(sandbox.endpoint, serving.model_name, version, rows)
        except (requests.RequestException, ValueError) as exc:
            checks.append(InfraCheck(name="requests", passed=False, detail=f"{type(exc).__name__}: {exc}"))
        finally:
            stop_sandbox_server(sandbox)
    failed = [c for c in checks if not c.passed]
    blessed = not failed
    reason = (
        f"version {version} loaded in a sandbox server and answered {len(rows)} sample rows over V1 and V2"
        if blessed
        else "; ".join(f"{c.name}: {c.detail}" for c in failed)
    )
    result = InfraValidationResult(
        model_name=serving.model_name,
        version=version,
        blessed=blessed,
        reason=reason,
        checks=checks,
        ready_seconds=ready_seconds,
        sample_rows=len(rows),
        blessing_path=str(blessing_path),
        serving_runtime=runtime,
        onnx_parity=parity,
    )
    write_json(blessing_path, {**result.model_dump(mode="json"), "tracking_uri": redact_uri(tracking_uri)})
    _record_tag(serving.model_name, version, tracking_uri, blessed)
    (logger.info if blessed else logger.error)(
        "infra validation " + ("passed" if blessed else "failed"), extra=result.model_dump(mode="json")
    )
    return result
