"""``CtpipeModel``: a ``kserve.Model`` that serves the MLflow champion and challenger.

The model follows the registry instead of a fixed artifact. It serves the version behind the
alias ``champion`` and, when present, the one behind ``challenger``. Which of them answers a
request is the rollout strategy's choice (``serving.rollout``, :mod:`serving.routing`): a random
canary with ``canary_percent`` (tag ``ctpipe.canary_percent`` on the registered model, 0 when
absent) by default, sticky A/B, shadow or blue-green. With a challenger and no champion the
challenger serves every request.

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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest

from components.common import tracking
from components.common.feast import EntityLookup
from components.common.logs import get_logger
from components.common.registry import (
    CANARY_TAG,
    CANARY_VERSION_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    INFRA_BLESSED_TAG,
    LIVE_VERSION_TAG,
    SERVING_RUNTIME_TAG,
    redact_uri,
)
from components.serving_spec import RolloutSpec
from serving.answers import output_types, served_values, v1_answer, v2_outputs
from serving.decoding import (
    ENTITY_IDS_KEY,
    MAX_BATCH_ROWS,
    OIP_DATATYPE,
    Columns,
    Tensor,
    checked_request_id,
    columns_from_v1,
    columns_from_v2,
    decode_json,
    entity_rows,
    tensors_from_json,
    tensors_from_request,
)
from serving.observability import BODIES_DECODED, InferenceLogWriter, LoggedRequest, observe
from serving.routing import SHADOW_ALIAS, Route, RoutingState, ShadowScorer, checked_key
from serving.versions import LoadedVersion, load_version

logger = get_logger("serving.model")


@dataclass(frozen=True)
class _Wanted:
    champion: str | None
    challenger: str | None
    canary_percent: int
    canary_version: str | None
    live_version: str | None = None
    live_blessed: bool = False


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
        rollout: The rollout strategy (:mod:`serving.routing`); default a random canary.
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
        rollout: RolloutSpec | None = None,
    ) -> None:
        super().__init__(name)
        self.rollout = rollout or RolloutSpec()
        if followed_alias is not None and self.rollout.strategy != "canary":
            raise ValueError(
                f"rollout strategy {self.rollout.strategy!r} routes between champion and challenger in one server; "
                "a server following one alias (followed_alias) can only take part in a canary"
            )
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
        self._state = RoutingState(rollout=self.rollout)
        self._shadow = ShadowScorer(name, self.rollout.shadow_queue)
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
        champion, challenger = aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS)
        live, blessed = tags.get(LIVE_VERSION_TAG), False
        if self.rollout.strategy == "blue_green" and challenger is not None and live == challenger:
            # Checked here as well as by switch_live: a tag set by hand never routes to an unvalidated version.
            version_tags = self.client.get_model_version(self.name, challenger).tags or {}
            blessed = version_tags.get(INFRA_BLESSED_TAG) == "true"
            if not blessed:
                self._record_error(
                    CHALLENGER_ALIAS,
                    challenger,
                    f"{LIVE_VERSION_TAG} names version {challenger}, which is not "
                    f"infra-blessed ({INFRA_BLESSED_TAG} is not 'true'); the champion keeps all traffic",
                )
        return _Wanted(champion, challenger, canary, tags.get(CANARY_VERSION_TAG), live, blessed)

    def load_version(self, version: str) -> LoadedVersion:
        """Download, load and smoke-test one version, no traffic change (:func:`serving.versions.load_version`)."""
        return load_version(self.client, self.name, version)

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
            live = challenger is not None and wanted.live_blessed and wanted.live_version == challenger.version
            new = RoutingState(champion, challenger, canary, self.rollout, live)
            # _resolve hands back the very object it was given when nothing changed for an alias.
            changed = (
                new.champion is not current.champion
                or new.challenger is not current.challenger
                or new.canary_percent != current.canary_percent
                or new.live_challenger != current.live_challenger
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
                        "strategy": self.rollout.strategy,
                        "live_challenger": new.live_challenger,
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
        self.stop_shadow()  # its rows go to the inference log, which stops after it
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
            self._state = RoutingState(rollout=self.rollout)
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
        """``score`` (binary classifiers) or ``prediction``; ``predict`` and ``predict_proba`` (multiclass)."""
        serving = self._state.champion or self._state.challenger
        if serving is None:
            return []
        return output_types(serving)

    def _rows_for_entities(self, ids: Any, what: str) -> tuple[dict[str, Any], list[Any]]:
        """Fetch the online features of ``ids`` from Feast in one call, as a V1 body (:func:`entity_rows`)."""
        return entity_rows(self.entity_lookup, ids, what, self.max_batch_rows)

    def _entity_tensor(self, tensors: list[Tensor]) -> Tensor | None:
        """The one input of a V2 request that names entities instead of features, else None."""
        lookup = self.entity_lookup
        id_names = {ENTITY_IDS_KEY} | ({lookup.dataset.entity_column} if lookup is not None else set())
        return tensors[0] if len(tensors) == 1 and tensors[0].name in id_names else None

    # -- inference (runs on the server's worker threads, never on the event loop) ---------------

    def infer_v1(
        self,
        body: bytes,
        content_type: str | None = None,
        request_id: str | None = None,
        route_key: str | None = None,
    ) -> dict[str, Any]:
        """Answer a V1 ``:predict`` body: decode, validate, score, log.

        Args:
            body: The raw request body.
            content_type: Its ``Content-Type`` header.
            request_id: The checked ``x-request-id`` header, if any.
            route_key: The ``serving.rollout.sticky_header`` value, if any (``ab``); else the
                first entity id is the key.

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

        sticky = self.rollout.strategy == "ab"
        if sticky and route_key is None and isinstance(payload, dict) and isinstance(payload.get(ENTITY_IDS_KEY), list):
            route_key = payload[ENTITY_IDS_KEY][0] if payload[ENTITY_IDS_KEY] else None
        alias, serving, scores, request_id = self._score(columns, request_id, route_key)
        return {
            **v1_answer(serving, scores),
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
        route_key: str | None = None,
    ) -> dict[str, Any]:
        """Answer a V2 ``/infer`` body (JSON, or JSON plus binary tensor data).

        Args:
            body: The raw request body.
            content_type: Its ``Content-Type`` header (ignored for binary data).
            request_id: The checked ``x-request-id`` header; else the body's ``id`` (checked the same way).
            binary_json_length: ``Inference-Header-Content-Length``: the body is that many bytes of
                JSON followed by binary tensor data.
            route_key: The ``serving.rollout.sticky_header`` value, if any; else the first entity id.

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

        if route_key is None and self.rollout.strategy == "ab":
            ids = self._entity_tensor(tensors)
            values_of_ids = ids.values() if ids is not None else None
            route_key = values_of_ids[0] if isinstance(values_of_ids, list) and values_of_ids else None
        alias, serving, scores, request_id = self._score(columns, request_id, route_key)
        return {
            "model_name": self.name,
            "model_version": serving.version,
            "id": request_id,
            "parameters": {"model_alias": alias, "model_version": serving.version},
            "outputs": v2_outputs(serving, scores),
        }

    def _score(
        self,
        columns_for: Callable[[LoadedVersion], tuple[Columns, list[Any] | None]],
        request_id: str | None,
        route_key: Any = None,
    ) -> tuple[str, LoadedVersion, np.ndarray, str]:
        """Route one request (:mod:`serving.routing`), score it, count it and log it; queue its shadow copy.

        Returns:
            The answering alias and version, the scores and the request id.
        """
        started = time.perf_counter()
        state = self._state  # one read: the whole request uses the same version
        route = state.pick(self._rng, self.name, checked_key(route_key, "the sticky routing key"))
        alias, serving = route.alias, route.version
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
                self._log(request_id, serving, alias, columns, None, seconds, "error", entity_ids)
            if isinstance(exc, InferenceError):
                raise
            raise InferenceError(f"model version {serving.version} failed: {type(exc).__name__}: {exc}") from None
        self._served[serving.version] += 1
        seconds = time.perf_counter() - started
        observe(self.name, serving.version, alias, "ok", seconds, served_values(serving, scores))
        self._log(request_id, serving, alias, columns, scores, seconds, "ok", entity_ids)
        if route.shadow is not None:
            self._queue_shadow(route, columns_for, columns, entity_ids, request_id)
        return alias, serving, scores, request_id

    def _queue_shadow(
        self,
        route: Route,
        columns_for: Callable[[LoadedVersion], tuple[Columns, list[Any] | None]],
        columns: Columns,
        entity_ids: list[Any] | None,
        request_id: str,
    ) -> None:
        """Hand the shadow a copy of this request; it is scored and logged on the shadow thread only."""
        shadow, served = route.shadow, route.version
        assert shadow is not None

        def work() -> None:
            started = time.perf_counter()
            ids = entity_ids
            # The answered columns fit the shadow when it has the same features; else decode for it (off the path).
            own = columns if shadow.features == served.features else None
            status, scores = "ok", None
            try:
                if own is None:
                    own, ids = columns_for(shadow)
                scores = shadow.score(own)
            except Exception:
                status = "error"
                raise
            finally:
                if own is not None:
                    self._log(
                        request_id,
                        shadow,
                        SHADOW_ALIAS,
                        own,
                        scores,
                        time.perf_counter() - started,
                        status,
                        ids,
                    )

        self._shadow.submit(work)

    def stop_shadow(self, timeout: float = 5.0) -> None:
        """Score the queued shadow copies (up to ``timeout``) and end the shadow thread."""
        self._shadow.stop(timeout)

    def _log(
        self,
        request_id: str,
        serving: LoadedVersion,
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
                model_version=serving.version,
                model_alias=alias,
                features=columns,
                predictions=None if scores is None else np.asarray(scores, dtype="float64"),
                classes=serving.classes,
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
        champion, challenger, _ = state.key()
        primary = state.champion or state.challenger
        return {
            "model_name": self.name,
            "ready": state.ready,
            "champion_version": champion,
            "challenger_version": challenger,
            "canary_percent": 100 if champion is None and challenger is not None else state.canary_percent,
            # What the strategy makes of it: shadow answers nothing, blue-green all or nothing.
            "challenger_share": state.effective_percent(),
            "rollout": {
                "strategy": self.rollout.strategy,
                "live_version": challenger if state.live_challenger else champion or challenger,
                "shadow": self._shadow.status(),
            },
            "pinned_version": self.pinned_version,
            "followed_alias": self.followed_alias,
            "registry": {
                "champion": self._wanted.champion,
                "challenger": self._wanted.challenger,
                "canary_percent": self._wanted.canary_percent,
                "canary_version": self._wanted.canary_version,
                "live_version": self._wanted.live_version,
            },
            "features": primary.feature_names if primary is not None else [],
            "runtimes": {
                v.version: {"runtime": v.runtime, "reason": v.runtime_reason, "loaded_at": v.loaded_at}
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
