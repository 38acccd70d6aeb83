"""``CtpipeModel``: a ``kserve.Model`` that serves the MLflow champion and challenger.

The model follows the registry instead of a fixed artifact. It serves the version behind the
alias ``champion`` and, when present, the one behind ``challenger``; each request goes to the
challenger with probability ``canary_percent / 100`` (tag ``ctpipe.canary_percent`` on the
registered model, 0 when absent) and otherwise to the champion. With a challenger and no
champion the challenger serves every request.

A watcher thread polls the aliases and the canary tag every ``poll_seconds``. A new version is
downloaded and loaded completely (and scored on its logged input example) before one reference
assignment switches traffic to it, so requests never see a half-loaded model. When a version
cannot be loaded the previous one keeps serving; the failure is logged and reported by
:meth:`CtpipeModel.status`, and that version is retried only after ``retry_seconds``.

Requests reach :meth:`CtpipeModel.infer_v1` and :meth:`CtpipeModel.infer_v2` on a worker
thread (:mod:`serving.http` keeps the event loop free). They are decoded and checked against the
answering version's features by :mod:`serving.decoding` into one array per feature, which the
version's ONNX model scores as they are (no pandas on the request path), or which become a
DataFrame for the scikit-learn model when the version has no proven ONNX model.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest

from components.common import tracking
from components.common.compiled_model import PARITY_TOLERANCE, OnnxScorer, output_kind
from components.common.feast import EntityLookup
from components.common.logs import get_logger
from components.common.model_input import Feature, features_of
from components.common.registry import (
    CANARY_TAG,
    CANARY_VERSION_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    ONNX_ARTIFACT,
    ONNX_PARITY_TAG,
    ONNX_SHA256_TAG,
    SERVING_RUNTIME_TAG,
    redact_uri,
)
from serving.decoding import (
    ENTITY_IDS_KEY,
    MAX_BATCH_ROWS,
    OIP_DATATYPE,
    Columns,
    RequestRejected,
    Tensor,
    check_batch_size,
    checked_request_id,
    columns_from_v1,
    columns_from_v2,
    decode_json,
    describe,
    names,
    tensors_from_json,
    tensors_from_request,
    to_frame,
)
from serving.observability import BODIES_DECODED, InferenceLogWriter, LoggedRequest, observe

logger = get_logger("serving.model")


@dataclass(frozen=True)
class LoadedVersion:
    """A registered model version loaded into memory, ready to score.

    ``runtime`` says what scores requests: ``onnx`` (the version's compiled ``model.onnx``, when
    infra validation proved it gives the scikit-learn model's answers) or ``sklearn``;
    ``runtime_reason`` says why. ``runtime_decided`` is False while infra validation has not
    recorded a verdict yet: the watcher then loads the version again once it has.
    """

    version: str
    model: Any = field(repr=False, compare=False)
    features: tuple[Feature, ...]
    output: Literal["score", "prediction"]
    run_id: str | None = None
    loaded_at: float = 0.0
    onnx: OnnxScorer | None = field(default=None, repr=False, compare=False)
    runtime_reason: str = ""
    runtime_decided: bool = True

    @property
    def runtime(self) -> str:
        """``onnx`` or ``sklearn``."""
        return "sklearn" if self.onnx is None else "onnx"

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the order the model expects them."""
        return [f.name for f in self.features]

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The scikit-learn model's answer for a DataFrame (the reference the ONNX model must match)."""
        if self.output == "score":
            proba = np.asarray(self.model.predict_proba(frame))
            return proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else proba
        return np.asarray(self.model.predict(frame))

    def score(self, columns: Columns) -> np.ndarray:
        """Positive-class probability for binary classifiers, ``predict`` otherwise.

        The ONNX runtime scores the columns as they are; scikit-learn gets a DataFrame.
        """
        if self.onnx is not None:
            return self.onnx.score_columns(columns)
        return self.score_frame(to_frame(columns, self.features))


@dataclass(frozen=True)
class RoutingState:
    """What is served right now; replaced as a whole, never mutated."""

    champion: LoadedVersion | None = None
    challenger: LoadedVersion | None = None
    canary_percent: int = 0

    @property
    def ready(self) -> bool:
        """Whether at least one version can answer."""
        return self.champion is not None or self.challenger is not None

    def key(self) -> tuple[str | None, str | None, int]:
        """Versions and percent, to tell whether a refresh changed anything."""
        return (
            self.champion.version if self.champion else None,
            self.challenger.version if self.challenger else None,
            self.canary_percent,
        )

    def runtimes(self) -> dict[str, str]:
        """What scores each loaded version: ``{"3": "onnx"}``."""
        return {v.version: v.runtime for v in (self.champion, self.challenger) if v is not None}

    def pick(self, rng: random.Random) -> tuple[str, LoadedVersion]:
        """Choose the alias and version that answers one request.

        Raises:
            InferenceError: No version is loaded.
        """
        if self.champion is None:
            if self.challenger is None:
                raise InferenceError("no model version is loaded yet", status="503")
            return CHALLENGER_ALIAS, self.challenger
        if self.challenger is not None and rng.random() * 100 < self.canary_percent:
            return CHALLENGER_ALIAS, self.challenger
        return CHAMPION_ALIAS, self.champion


@dataclass(frozen=True)
class _Wanted:
    champion: str | None
    challenger: str | None
    canary_percent: int
    canary_version: str | None


# ---------------------------------------------------------------------------------------------
# Loading versions


class CtpipeModel(Model):
    """Serves the registry's champion and challenger of one registered model.

    Args:
        name: Registered model name in MLflow; also the name in the inference routes.
        tracking_uri: MLflow tracking (and registry) URI.
        poll_seconds: How often the watcher reads the aliases and the canary tag.
        pinned_version: Serve exactly this version and ignore the aliases.
        followed_alias: Serve only the version behind this one alias and follow it (a cluster
            pod: each KServe traffic target follows one alias, and KServe splits the traffic).
        seed: Seed of the canary routing random numbers.
        retry_seconds: Wait before loading a version that failed again; default
            ``max(30, 10 * poll_seconds)``.
        max_batch_rows: Most rows (instances or entity ids) one request may carry.
        inference_log: Background writer that logs every answered request; None logs nothing.
        entity_lookup: Feast settings to answer requests that carry entity ids.
    """

    def __init__(
        self,
        name: str,
        tracking_uri: str,
        poll_seconds: float = 2.0,
        pinned_version: str | None = None,
        followed_alias: str | None = None,
        seed: int | None = None,
        retry_seconds: float | None = None,
        max_batch_rows: int = MAX_BATCH_ROWS,
        inference_log: InferenceLogWriter | None = None,
        entity_lookup: EntityLookup | None = None,
    ) -> None:
        super().__init__(name)
        self.max_batch_rows = max_batch_rows
        self.inference_log = inference_log
        self.entity_lookup = entity_lookup
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        if pinned_version is not None and followed_alias is not None:
            raise ValueError("pinned_version and followed_alias exclude each other: serve a version or follow an alias")
        self.pinned_version = pinned_version
        self.followed_alias = followed_alias
        self.retry_seconds = retry_seconds if retry_seconds is not None else max(30.0, 10 * poll_seconds)
        self._state = RoutingState()
        self._rng = random.Random(seed)
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._client: Any = None
        self._failed: dict[str, tuple[str, float]] = {}
        self._last_error: dict[str, Any] | None = None
        self._last_logged_at = 0.0
        self._wanted = _Wanted(None, None, 0, None)
        self._last_poll_at: float | None = None
        self._last_poll_ok: bool | None = None
        self._last_change_at: float | None = None
        self._started_at = time.time()
        self._loaded_once = False
        self._served: Counter[str] = Counter()

    # -- registry ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The MLflow client, created on first use."""
        if self._client is None:
            self._client = tracking.registry_client(self.tracking_uri)
        return self._client

    def _read_registry(self) -> _Wanted:
        if self.pinned_version is not None:
            return _Wanted(self.pinned_version, None, 0, None)
        registered = self.client.get_registered_model(self.name)
        aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
        if self.followed_alias is not None:
            # One version, in the first slot; an alias that goes away keeps the last one serving.
            return _Wanted(aliases.get(self.followed_alias), None, 0, None)
        tags = dict(registered.tags or {})
        raw = tags.get(CANARY_TAG)
        canary = 0
        if raw is not None:
            try:
                canary = int(float(raw))
            except ValueError:
                self._record_error(None, None, f"tag {CANARY_TAG}={raw!r} is not a number; using 0")
            if not 0 <= canary <= 100:
                self._record_error(None, None, f"tag {CANARY_TAG}={raw!r} is outside 0-100; using 0")
                canary = 0
        return _Wanted(aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS), canary, tags.get(CANARY_VERSION_TAG))

    def load_version(self, version: str) -> LoadedVersion:
        """Download, load and smoke-test one registered version (no traffic change).

        The version's ``model.onnx`` is loaded as well when infra validation recorded that it
        gives the same answers (tag ``ctpipe.serving_runtime=onnx``); its SHA-256 must match the
        one recorded at registration.

        Raises:
            Exception: Whatever MLflow, unpickling, the ONNX runtime or the smoke test raises.
        """
        import mlflow.artifacts
        from mlflow.models import Model as MlflowModel

        tags = dict(self.client.get_model_version(self.name, version).tags or {})
        staging = tempfile.mkdtemp(prefix="ctpipe-serving-")
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=staging)
            # Unpickled only after the SHA-256 that train recorded matched.
            sk_model = tracking.load_downloaded_model(local, f"models:/{self.name}/{version}", self.client)
            mlflow_model = MlflowModel.load(local)
            features = features_of(mlflow_model, sk_model)
            output = output_kind(sk_model)
            runtime = tags.get(SERVING_RUNTIME_TAG)
            onnx = None
            if runtime == "onnx":
                onnx = OnnxScorer.from_file(
                    os.path.join(local, ONNX_ARTIFACT), tags.get(ONNX_SHA256_TAG, ""), features, output
                )
            reason = tags.get(ONNX_PARITY_TAG) or (
                "infra validation has not checked the ONNX model yet" if runtime is None else f"runtime {runtime}"
            )
            loaded = LoadedVersion(
                version=version,
                model=sk_model,
                features=features,
                output=output,
                run_id=mlflow_model.run_id,
                loaded_at=time.time(),
                onnx=onnx,
                runtime_reason=reason,
                runtime_decided=runtime is not None,
            )
            example = mlflow_model.load_input_example(local) if mlflow_model.saved_input_example_info else None
            if isinstance(example, pd.DataFrame) and len(example):
                smoke = example[loaded.feature_names]
                columns = {f.name: smoke[f.name].to_numpy() for f in features}
                if onnx is not None:
                    # The fast path answers like the model it was compiled from, or it is not used.
                    np.testing.assert_allclose(
                        onnx.score_frame(smoke), loaded.score_frame(smoke), atol=PARITY_TOLERANCE
                    )
                loaded.score(columns)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return loaded

    def _record_error(self, alias: str | None, version: str | None, message: str) -> None:
        now = time.time()
        previous = self._last_error
        self._last_error = {"alias": alias, "version": version, "message": message, "at": now}
        # A registry outage fails every poll; log a repeated message once a minute, not every poll.
        if previous is None or previous["message"] != message or now - self._last_logged_at >= 60:
            self._last_logged_at = now
            logger.error(message, extra={"model": self.name, "alias": alias, "version": version})

    def _resolve(
        self, alias: str, wanted: str | None, current: LoadedVersion | None, keep: bool
    ) -> LoadedVersion | None:
        """The version to serve for one alias; on any failure the current one stays."""
        if wanted is None:
            return current if keep else None
        for loaded in (current, self._state.champion, self._state.challenger):
            if loaded is not None and loaded.version == wanted:
                return self._with_decided_runtime(alias, loaded)
        failed = self._failed.get(wanted)
        if failed is not None and time.time() - failed[1] < self.retry_seconds:
            return current
        started = time.perf_counter()
        try:
            loaded = self.load_version(wanted)
        except Exception as exc:  # any failure must leave the served version in place
            message = f"cannot load {self.name!r} version {wanted} ({alias}): {type(exc).__name__}: {exc}"
            if current is not None:
                message += f"; still serving version {current.version}"
            self._failed[wanted] = (message, time.time())
            self._record_error(alias, wanted, message)
            return current
        self._failed.pop(wanted, None)
        logger.info(
            "loaded version",
            extra={"model": self.name, "alias": alias, "version": wanted, "seconds": time.perf_counter() - started},
        )
        return loaded

    def _with_decided_runtime(self, alias: str, loaded: LoadedVersion) -> LoadedVersion:
        """``loaded``, or the same version loaded again once infra validation chose its runtime.

        Registration makes a version the challenger before infra validation compares its ONNX
        model with scikit-learn, so a server may load it first with scikit-learn; no traffic
        reaches a challenger before infra validation, so it switches before its first request.
        """
        if loaded.runtime_decided:
            return loaded
        try:
            tags = self.client.get_model_version(self.name, loaded.version).tags or {}
            if SERVING_RUNTIME_TAG not in tags:
                return loaded
            return self.load_version(loaded.version)
        except Exception as exc:  # the loaded model keeps serving
            self._record_error(alias, loaded.version, f"cannot switch version {loaded.version}'s runtime: {exc}")
            return loaded

    def refresh(self) -> bool:
        """Read the registry once, load what changed and switch traffic atomically.

        Returns:
            Whether the served versions or the canary percent changed.
        """
        with self._refresh_lock:
            self._last_poll_at = time.time()
            try:
                wanted = self._read_registry()
            except Exception as exc:  # registry down or model missing: keep serving
                self._last_poll_ok = False
                self._record_error(
                    None,
                    None,
                    f"cannot read registered model {self.name!r} from {redact_uri(self.tracking_uri)}: "
                    f"{type(exc).__name__}: {exc}",
                )
                return False
            self._last_poll_ok = True
            self._wanted = wanted
            current = self._state
            champion = self._resolve(CHAMPION_ALIAS, wanted.champion, current.champion, keep=True)
            challenger = self._resolve(CHALLENGER_ALIAS, wanted.challenger, current.challenger, keep=False)
            if challenger is not None and champion is not None and challenger.version == champion.version:
                challenger = None
            canary = 0
            if challenger is not None and wanted.canary_version in (None, challenger.version):
                canary = wanted.canary_percent
            new = RoutingState(champion, challenger, canary)
            # _resolve hands back the very object it was given when nothing changed for an alias.
            changed = (
                new.champion is not current.champion
                or new.challenger is not current.challenger
                or new.canary_percent != current.canary_percent
            )
            if changed:
                self._state = new  # the one atomic switch
                self._last_change_at = time.time()
                logger.info(
                    "serving changed",
                    extra={
                        "model": self.name,
                        "champion": new.key()[0],
                        "challenger": new.key()[1],
                        "canary_percent": new.canary_percent,
                        "runtimes": new.runtimes(),
                        "previous": list(current.key()),
                    },
                )
            self.ready = new.ready
            return changed

    # -- kserve hooks -----------------------------------------------------------------------

    def load(self) -> bool:
        """First call reads the registry and loads the aliased versions; later calls are cheap.

        Returns:
            Whether a version is ready to serve. A server can start before any version exists;
            it answers 503 until the watcher loads one.
        """
        if not self._loaded_once:
            self._loaded_once = True
            self.refresh()
        self.ready = self._state.ready
        return bool(self.ready)

    def start_watcher(self) -> None:
        """Start the background thread that follows the registry (idempotent)."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name=f"ctpipe-watch-{self.name}", daemon=True)
        self._watcher.start()

    def stop_watcher(self, timeout: float = 5.0) -> None:
        """Stop the watcher thread and wait for it."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)

    def stop(self) -> None:
        """Kserve stop hook: stop watching the registry and write what the inference log holds."""
        self.stop_watcher()
        if self.inference_log is not None:
            self.inference_log.stop()
        super().stop()

    def unload(self) -> None:
        """Stop serving (model-repository ``unload``): drop every version and answer not ready.

        The registry is no longer followed until :meth:`reload`; readiness answers 503, so a
        load balancer takes the pod out of rotation.
        """
        self.stop_watcher()
        with self._refresh_lock:
            self._state = RoutingState()
            self.ready = False
            self._last_change_at = time.time()
        logger.warning("model unloaded", extra={"model": self.name})

    def reload(self) -> bool:
        """Serve again after :meth:`unload` (model-repository ``load``): read the registry now and follow it.

        Returns:
            Whether a version is ready.
        """
        self.refresh()
        self.start_watcher()
        logger.info("model loaded", extra={"model": self.name, "ready": self.ready})
        return bool(self.ready)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                logger.exception("watcher refresh failed", extra={"model": self.name})

    def get_input_types(self) -> list[dict[str, Any]]:
        """One input per feature, as the columnar V2 request expects."""
        serving = self._state.champion or self._state.challenger
        if serving is None:
            return []
        return [{"name": f.name, "datatype": OIP_DATATYPE[f.kind], "shape": [-1]} for f in serving.features]

    def get_output_types(self) -> list[dict[str, Any]]:
        """The single output: ``score`` for classifiers, ``prediction`` otherwise."""
        serving = self._state.champion or self._state.challenger
        if serving is None:
            return []
        return [{"name": serving.output, "datatype": "FP64", "shape": [-1]}]

    def _rows_for_entities(self, ids: Any, what: str) -> tuple[dict[str, Any], list[Any]]:
        """Fetch the online features of ``ids`` from Feast in one call, as a V1 body."""
        lookup = self.entity_lookup
        if lookup is None:
            raise InvalidInput(
                f"{what}: this server has no Feast feature store configured, so it cannot look up entity ids; "
                "send feature values in 'instances'"
            )
        if not isinstance(ids, list):
            raise InvalidInput(f"{what} must be a list of entity ids, got {describe(ids)}")
        check_batch_size(len(ids), what, self.max_batch_rows)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int | str)]
        if bad:
            raise InvalidInput(f"{what}: entity ids must be integers or strings; got {describe(bad[0])}")
        from components.common.errors import DataError
        from components.common.feast import online_features

        try:
            found = online_features(list(ids), lookup.dataset, lookup.feast, lookup.workspace)
        except DataError as exc:
            raise InvalidInput(f"{what}: {str(exc)[:500]}") from None
        if found.missing:
            raise RequestRejected(
                f"unknown entity id(s) for {lookup.dataset.entity_column!r}: {names(found.missing)} "
                f"(no online features in Feast); {len(found.rows)} of {len(ids)} ids were found",
                422,
            )
        entity = lookup.dataset.entity_column
        instances = [{k: v for k, v in row.items() if k != entity} for row in found.rows]
        return {"instances": instances}, [row[entity] for row in found.rows]

    def _entity_tensor(self, tensors: list[Tensor]) -> Tensor | None:
        """The one input of a V2 request that names entities instead of features, else None."""
        lookup = self.entity_lookup
        id_names = {ENTITY_IDS_KEY} | ({lookup.dataset.entity_column} if lookup is not None else set())
        return tensors[0] if len(tensors) == 1 and tensors[0].name in id_names else None

    # -- inference (runs on the server's worker threads, never on the event loop) ---------------

    def infer_v1(self, body: bytes, content_type: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """Answer a V1 ``:predict`` body: decode, validate, score, log.

        Args:
            body: The raw request body.
            content_type: Its ``Content-Type`` header.
            request_id: The checked ``x-request-id`` header, if any.

        Returns:
            ``{"predictions", "model_version", "model_alias", "request_id"}``.

        Raises:
            InvalidInput: The body does not fit the model (HTTP 400; :class:`RequestRejected`
                for 413, 415 and 422).
            InferenceError: No version is loaded (503), or the model failed on valid input (500).
        """
        payload = decode_json(body, content_type)

        def columns(serving: LoadedVersion) -> tuple[Columns, list[Any] | None]:
            body = payload
            entity_ids = None
            if isinstance(body, dict) and ENTITY_IDS_KEY in body:
                if "instances" in body:
                    raise InvalidInput(f"send either 'instances' or {ENTITY_IDS_KEY!r}, not both")
                body, entity_ids = self._rows_for_entities(body[ENTITY_IDS_KEY], f"{ENTITY_IDS_KEY!r}")
            return columns_from_v1(body, serving.features, self.max_batch_rows), entity_ids

        alias, serving, scores, request_id = self._score(columns, request_id)
        return {
            "predictions": scores.tolist(),
            "model_version": serving.version,
            "model_alias": alias,
            "request_id": request_id,
        }

    def infer_v2(
        self,
        body: bytes,
        content_type: str | None = None,
        request_id: str | None = None,
        binary_json_length: int | None = None,
    ) -> dict[str, Any]:
        """Answer a V2 ``/infer`` body (JSON, or JSON plus binary tensor data).

        Args:
            body: The raw request body.
            content_type: Its ``Content-Type`` header (ignored for binary data).
            request_id: The checked ``x-request-id`` header; else the body's ``id`` (checked the same way).
            binary_json_length: ``Inference-Header-Content-Length``: the body is that many bytes of
                JSON followed by binary tensor data.

        Returns:
            The Open Inference Protocol response as a dict.

        Raises:
            InvalidInput: The body does not fit the model (4xx).
            InferenceError: No version is loaded (503), or the model failed on valid input (500).
        """
        if binary_json_length is None:
            tensors, body_id = tensors_from_json(decode_json(body, content_type))
        else:
            if not 0 < binary_json_length <= len(body):
                raise InvalidInput(
                    f"header inference-header-content-length is {binary_json_length}, "
                    f"but the body has {len(body)} bytes"
                )
            BODIES_DECODED.inc()
            try:
                request = InferRequest.from_bytes(body, binary_json_length, self.name)
            except Exception as exc:  # kserve's decoder raises several types for malformed binary data
                raise InvalidInput(f"cannot decode the binary tensor request: {str(exc)[:200]}") from None
            tensors, body_id = tensors_from_request(request), request.id
        request_id = request_id or checked_request_id(body_id, "the request's 'id'")

        def columns(serving: LoadedVersion) -> tuple[Columns, list[Any] | None]:
            ids = self._entity_tensor(tensors)
            if ids is None:
                return columns_from_v2(tensors, serving.features, self.max_batch_rows), None
            v1_body, entity_ids = self._rows_for_entities(ids.values(), f"input {ids.name!r}")
            return columns_from_v1(v1_body, serving.features, self.max_batch_rows), entity_ids

        alias, serving, scores, request_id = self._score(columns, request_id)
        values = np.asarray(scores, dtype="float64")
        return {
            "model_name": self.name,
            "model_version": serving.version,
            "id": request_id,
            "parameters": {"model_alias": alias, "model_version": serving.version},
            "outputs": [
                {
                    "name": serving.output,
                    "datatype": "FP64",
                    "shape": list(values.shape),
                    "data": values.ravel().tolist(),
                }
            ],
        }

    def _score(
        self,
        columns_for: Callable[[LoadedVersion], tuple[Columns, list[Any] | None]],
        request_id: str | None,
    ) -> tuple[str, LoadedVersion, np.ndarray, str]:
        """Route one request to the champion or the challenger, score it, count it and log it.

        Returns:
            The answering alias and version, the scores and the request id.
        """
        started = time.perf_counter()
        state = self._state  # one read: the whole request uses the same version
        alias, serving = state.pick(self._rng)
        alias = self.followed_alias or alias  # a pod of one traffic target answers (and logs) as its alias
        request_id = request_id or str(uuid.uuid4())
        columns: Columns | None = None
        entity_ids: list[Any] | None = None
        try:
            columns, entity_ids = columns_for(serving)
            try:
                scores = serving.score(columns)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"model version {serving.version} rejected the input: {str(exc)[:300]}") from None
        except InvalidInput:
            observe(self.name, serving.version, alias, "rejected", time.perf_counter() - started)
            raise
        except Exception as exc:
            seconds = time.perf_counter() - started
            observe(self.name, serving.version, alias, "error", seconds)
            if columns is not None:
                self._log(request_id, serving.version, alias, columns, None, seconds, "error", entity_ids)
            if isinstance(exc, InferenceError):
                raise
            raise InferenceError(f"model version {serving.version} failed: {type(exc).__name__}: {exc}") from None
        self._served[serving.version] += 1
        seconds = time.perf_counter() - started
        observe(self.name, serving.version, alias, "ok", seconds, scores)
        self._log(request_id, serving.version, alias, columns, scores, seconds, "ok", entity_ids)
        return alias, serving, scores, request_id

    def _log(
        self,
        request_id: str,
        version: str,
        alias: str,
        columns: Columns,
        scores: np.ndarray | None,
        seconds: float,
        status: str,
        entity_ids: list[Any] | None,
    ) -> None:
        if self.inference_log is None:
            return
        self.inference_log.submit(
            LoggedRequest(
                request_id=request_id,
                timestamp=time.time(),
                model_name=self.name,
                model_version=version,
                model_alias=alias,
                features=columns,
                predictions=None if scores is None else np.asarray(scores, dtype="float64"),
                latency_ms=seconds * 1000,
                status=status,
                entity_column=self.entity_lookup.dataset.entity_column if self.entity_lookup else None,
                entity_ids=entity_ids,
            )
        )

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the server serves now, what the registry asks for, and the last failure."""
        state = self._state
        champion, challenger, canary = state.key()
        primary = state.champion or state.challenger
        return {
            "model_name": self.name,
            "ready": state.ready,
            "champion_version": champion,
            "challenger_version": challenger,
            "canary_percent": 100 if champion is None and challenger is not None else canary,
            "pinned_version": self.pinned_version,
            "followed_alias": self.followed_alias,
            "registry": {
                "champion": self._wanted.champion,
                "challenger": self._wanted.challenger,
                "canary_percent": self._wanted.canary_percent,
                "canary_version": self._wanted.canary_version,
            },
            "features": primary.feature_names if primary is not None else [],
            "runtimes": {
                v.version: {"runtime": v.runtime, "reason": v.runtime_reason}
                for v in (state.champion, state.challenger)
                if v is not None
            },
            "last_error": self._last_error,
            "failed_versions": {version: message for version, (message, _) in list(self._failed.items())},
            "served": dict(self._served),
            "last_poll_at": self._last_poll_at,
            "last_poll_ok": self._last_poll_ok,
            "last_change_at": self._last_change_at,
            "poll_seconds": self.poll_seconds,
            "tracking_uri": redact_uri(self.tracking_uri),
            "started_at": self._started_at,
            "pid": os.getpid(),
        }
