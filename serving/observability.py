"""What the model server reports about its traffic: Prometheus metrics and the inference log.

Metrics live in ``prometheus_client``'s default registry, which kserve already exposes on
``GET /metrics``; every series carries the model name and the version that answered, so a
canary's challenger and champion can be compared on one dashboard.

The inference log is written by :class:`InferenceLogWriter`: a request only puts its rows on a
bounded in-memory queue (never blocking), and one background thread writes them in batches with
:func:`components.common.inference_log.append_batch` (partitioned parquet, atomic files) every
``flush_seconds`` and on shutdown. When the writer falls behind and the queue is full, further
rows are dropped rather than slowing requests down; they are counted in
``ctpipe_inference_log_dropped_rows_total{reason="queue_full"}``, rows lost because a write
failed in ``{reason="write_failed"}``, and both are logged as a warning at most every
``DROP_WARNING_SECONDS`` with the count since the last one. Columns the settings exclude
never reach storage, and hashed ones are stored as keyed digests
(:func:`components.common.inference_log.protect`, applied on the writer thread).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import Counter, Histogram

from components.common.inference_log import append_batch, protect
from components.common.logs import get_logger
from components.common.multiclass import probability_columns
from components.common.storage import redact

logger = get_logger("serving.observability")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Scores of binary classifiers are probabilities; tenths show a shifted distribution at a glance.
PREDICTION_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))

REQUESTS = Counter(
    "ctpipe_requests",
    "Prediction requests by the version that answered and outcome (ok, rejected = 4xx, error = 5xx).",
    ["model", "version", "alias", "status"],
)
ROWS = Counter("ctpipe_predicted_rows", "Rows scored, by the version that scored them.", ["model", "version"])
LATENCY = Histogram(
    "ctpipe_request_latency_seconds",
    "Server-side time from routing a request to its answer (validation, feature lookup, scoring).",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Histogram(
    "ctpipe_prediction",
    "Served values (positive-class probability for binary classifiers), one observation per row.",
    ["model", "version"],
    buckets=PREDICTION_BUCKETS,
)
LOG_DROPPED = Counter(
    "ctpipe_inference_log_dropped_rows",
    "Answered rows missing from the inference log: reason=queue_full (the writer fell behind and the queue was "
    "full) or write_failed (the write to the log's storage failed).",
    ["model", "reason"],
)
#: Shortest time between two warnings about dropped inference log rows.
DROP_WARNING_SECONDS = 60.0
LOG_WRITTEN = Counter("ctpipe_inference_log_written_rows", "Rows written to the inference log.", ["model"])
BODIES_DECODED = Counter(
    "ctpipe_request_bodies_decoded",
    "Request bodies parsed as JSON. A body refused for its size (HTTP 413) is never parsed, so it never counts.",
)
BODIES_TOO_LARGE = Counter(
    "ctpipe_request_bodies_too_large",
    "Requests answered 413 because the body exceeded serving.max_request_bytes, before any parsing.",
)
UNAUTHORIZED = Counter(
    "ctpipe_unauthorized_requests", "Requests refused for a missing or wrong bearer token.", ["route"]
)


def observe(
    model: str, version: str, alias: str, status: str, seconds: float, predictions: np.ndarray | None = None
) -> None:
    """Record one request in the Prometheus metrics."""
    REQUESTS.labels(model, version, alias, status).inc()
    LATENCY.labels(model, version).observe(seconds)
    if predictions is not None and predictions.size:
        ROWS.labels(model, version).inc(int(predictions.size))
        histogram = PREDICTIONS.labels(model, version)
        for value in np.asarray(predictions, dtype="float64").reshape(-1):
            histogram.observe(float(value))


@dataclass(frozen=True)
class LoggedRequest:
    """One answered request, as the request handler hands it to the writer."""

    request_id: str
    timestamp: float
    model_name: str
    model_version: str
    model_alias: str
    features: Mapping[str, np.ndarray]
    predictions: np.ndarray | None
    latency_ms: float
    status: str
    entity_column: str | None = None
    entity_ids: list[Any] | None = None
    #: A multiclass version's classes: ``predictions`` is then its ``[n, k]`` probability matrix.
    classes: tuple[Any, ...] = ()

    @property
    def rows(self) -> int:
        """Rows the request carried."""
        return len(next(iter(self.features.values()))) if self.features else 0


def multiclass_columns(group: list[LoggedRequest], classes: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """A multiclass version's logged answer, as columns.

    ``prediction`` (the top probability), ``predicted_class`` (as text) and one ``proba_<class>``
    column per class (``multiclass.probability_columns``); null where the request failed.
    """
    matrix = np.concatenate(
        [
            np.asarray(r.predictions, dtype="float64").reshape(r.rows, len(classes))
            if r.predictions is not None
            else np.full((r.rows, len(classes)), np.nan)
            for r in group
        ]
    )
    answered = ~np.isnan(matrix).any(axis=1)
    top = np.argmax(np.nan_to_num(matrix, nan=-1.0), axis=1)
    names = np.asarray([str(c) for c in classes], dtype=object)
    columns: dict[str, np.ndarray] = {
        "prediction": np.asarray(np.where(answered, matrix.max(axis=1), np.nan)),
        "predicted_class": np.asarray(np.where(answered, names[top], None)),
    }
    for index, name in enumerate(probability_columns(classes)):
        columns[name] = matrix[:, index]
    return columns


def log_frame(records: list[LoggedRequest]) -> pd.DataFrame:
    """Requests in the inference log layout, built column by column with numpy (the writer thread's work).

    Requests answered by versions with different features land in different column groups,
    concatenated once at the end (a missing feature is null for the others' rows).
    """
    groups: dict[tuple[tuple[str, ...], str | None, tuple[Any, ...]], list[LoggedRequest]] = {}
    for record in records:
        entity = record.entity_column if record.entity_ids is not None else None
        groups.setdefault((tuple(record.features), entity, record.classes), []).append(record)
    frames = []
    for (features, entity, classes), group in groups.items():
        counts = np.fromiter((r.rows for r in group), dtype="int64", count=len(group))

        def each(values: list[Any], counts: np.ndarray = counts) -> np.ndarray:
            return np.repeat(np.asarray(values, dtype=object), counts)

        columns: dict[str, Any] = {
            "request_id": each([r.request_id for r in group]),
            # position in the request, to join labels
            "row": np.concatenate([np.arange(n, dtype="int64") for n in counts]),
            "timestamp": pd.to_datetime(np.repeat([r.timestamp for r in group], counts), unit="s", utc=True),
            "model_name": each([r.model_name for r in group]),
            "model_version": each([r.model_version for r in group]),
            "model_alias": each([r.model_alias for r in group]),
        }
        if entity is not None:
            columns[entity] = np.concatenate([np.asarray(r.entity_ids, dtype=object) for r in group])
        for name in features:
            columns[name] = np.concatenate([r.features[name] for r in group])
        if classes:
            columns.update(multiclass_columns(group, classes))
        else:
            columns["prediction"] = np.concatenate(
                [
                    np.asarray(r.predictions, dtype="float64").reshape(-1)
                    if r.predictions is not None
                    else np.full(r.rows, np.nan)
                    for r in group
                ]
            )
        columns["latency_ms"] = np.repeat([r.latency_ms for r in group], counts)
        columns["status"] = each([r.status for r in group])
        frames.append(pd.DataFrame(columns))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


class InferenceLogWriter:
    """Background writer of the inference log.

    Args:
        log_dir: The inference log folder or object-store prefix (``<workspace>/inference_log``,
            ``s3://bucket/inference_log``); credentials come from the environment.
        model_name: Label of the dropped/written counters.
        flush_seconds: Longest time a row waits in memory.
        max_rows: Rows the queue may hold; beyond that rows are dropped, never waited for.
        exclude: Request columns never stored.
        hash_columns: Request columns stored as HMAC-SHA256 hex digests under ``hash_key``.
        hash_key: The key of those digests (from the environment, never the config).

    Raises:
        ValueError: Columns are to be hashed and the key is empty.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        model_name: str,
        flush_seconds: float = 2.0,
        max_rows: int = 100_000,
        exclude: Sequence[str] = (),
        hash_columns: Sequence[str] = (),
        hash_key: bytes = b"",
    ):
        if hash_columns and not hash_key:
            raise ValueError("the inference log hashes columns but the hash key is empty")
        self.log_dir = os.fspath(log_dir)
        self.model_name = model_name
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.exclude = tuple(exclude)
        self.hash_columns = tuple(hash_columns)
        self._hash_key = hash_key
        self._unreported = {"queue_full": 0, "write_failed": 0}
        self._last_warning = float("-inf")
        self._queue: queue.SimpleQueue[LoggedRequest | None] = queue.SimpleQueue()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._flush_now = threading.Event()
        self._stopping = False
        self.written_rows = 0
        self.dropped_rows = 0
        self.files = 0

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="ctpipe-inference-log", daemon=True)
            self._thread.start()

    def submit(self, record: LoggedRequest) -> bool:
        """Queue one request's rows without blocking; False when they were dropped."""
        rows = record.rows
        with self._count_lock:
            if self._stopping or self._queued_rows + rows > self.max_rows:
                self._dropped(rows, "queue_full")
                return False
            self._queued_rows += rows
        self._queue.put(record)
        return True

    def _dropped(self, rows: int, reason: str) -> None:
        """Count dropped rows; warn at most every DROP_WARNING_SECONDS with the count since the last warning."""
        self.dropped_rows += rows
        LOG_DROPPED.labels(self.model_name, reason).inc(rows)
        self._unreported[reason] += rows
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_SECONDS:
            self._last_warning = now
            counts, self._unreported = self._unreported, {"queue_full": 0, "write_failed": 0}
            logger.warning(
                "inference log rows dropped",
                extra={
                    "model": self.model_name,
                    "queue_full_rows": counts["queue_full"],
                    "write_failed_rows": counts["write_failed"],
                    "queue_rows": self.max_rows,
                    "since_seconds": DROP_WARNING_SECONDS,
                },
            )

    def flush(self, timeout: float = 10.0) -> None:
        """Ask the thread to write what is queued now and wait until the queue is empty."""
        self._flush_now.set()
        deadline = time.monotonic() + timeout
        while self._queued_rows and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> bool:
        """Write everything still queued, then end the thread; False when it did not finish in ``timeout``.

        Rows submitted after this are dropped (``queue_full``).
        """
        with self._count_lock:
            self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error(
                    "the inference log writer did not finish before shutdown; queued rows are lost",
                    extra={"model": self.model_name, "queued_rows": self._queued_rows, "timeout_seconds": timeout},
                )
                return False
        return True

    def _run(self) -> None:
        pending: list[LoggedRequest] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            stop = False
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            else:
                stop = item is None
            if item is not None:
                pending.append(item)
            due = time.monotonic() >= deadline or self._flush_now.is_set()
            if pending and (stop or due):
                self._write(pending)
                pending = []
            if due:
                self._flush_now.clear()
                deadline = time.monotonic() + self.flush_seconds
            if stop:
                return

    def _write(self, records: list[LoggedRequest]) -> None:
        rows = sum(r.rows for r in records)
        try:
            batch = protect(log_frame(records), self.exclude, self.hash_columns, self._hash_key)
            self.files += len(append_batch(self.log_dir, batch))
            self.written_rows += rows
            LOG_WRITTEN.labels(self.model_name).inc(rows)
        except Exception:  # a full disk must not stop serving; the rows are lost and counted
            logger.exception("cannot write the inference log", extra={"log_dir": redact(self.log_dir), "rows": rows})
            with self._count_lock:
                self._dropped(rows, "write_failed")
        finally:
            with self._count_lock:
                self._queued_rows -= rows
