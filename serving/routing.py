"""Which loaded version answers a request: every rollout strategy of ``serving.rollout`` in one place.

The model server holds the champion and, during a rollout, the challenger (:mod:`serving.model`).
:class:`RoutingState` is what is served right now, replaced as a whole by the registry watcher;
:meth:`RoutingState.pick` chooses the answering version of one request by the strategy:

``canary``
    The challenger answers with probability ``canary_percent / 100``, at random per request.
``ab``
    Sticky assignment: the SHA-256 of ``model name, salt, key`` (never Python's ``hash()``, which
    is salted per process) puts each key in one of 10,000 buckets, and the first
    ``canary_percent x 100`` buckets go to the challenger. The same key therefore gets the same
    version on every replica and after every restart. The key is the ``sticky_header`` value,
    else the request's first entity id; a request without a key goes to the champion
    (``unkeyed: champion``, the default) or is split at random (``unkeyed: random``).
``shadow``
    The champion answers every request; the challenger is the *shadow*: :class:`ShadowScorer`
    scores a copy on its own thread, after the answer was computed, through a bounded queue whose
    overflow is dropped and counted. Its answers reach only the inference log (``model_alias``
    ``shadow``, same ``request_id``), so canary analysis can compare both on the same requests.
``blue_green``
    All traffic to one version. The challenger takes all of it at once when the registry tag
    ``ctpipe.live_version`` names it and infra validation blessed it (``ctpipe.infra_blessed``);
    otherwise the champion does. Both stay loaded, so switching back is one reference swap.
"""

from __future__ import annotations

import hashlib
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kserve.errors import InferenceError, InvalidInput
from prometheus_client import Counter

from components.common.logs import get_logger
from components.common.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from components.serving_spec import RolloutSpec

if TYPE_CHECKING:
    from serving.model import LoadedVersion

logger = get_logger("serving.routing")

#: The alias the inference log records for a shadow answer (never returned to a client).
SHADOW_ALIAS = "shadow"
#: Buckets of the sticky hash: percent x 100, so a share is exact to 0.01 %.
BUCKETS = 10_000
#: Longest sticky key accepted; a longer header is a client bug, answered 400.
MAX_KEY_CHARS = 256

SHADOW_DROPPED = Counter("ctpipe_shadow_dropped", "Shadow copies dropped because the shadow queue was full.", ["model"])
SHADOW_SCORED = Counter(
    "ctpipe_shadow_scored", "Shadow copies scored by the challenger, by outcome.", ["model", "status"]
)


def sticky_bucket(model_name: str, salt: str, key: str) -> int:
    """The bucket (0 to ``BUCKETS - 1``) of one key: stable across processes, replicas and restarts."""
    digest = hashlib.sha256(f"{model_name}\x00{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def checked_key(value: Any, what: str) -> str | None:
    """A sticky key as text, or None when there is none.

    Raises:
        InvalidInput: The key is longer than :data:`MAX_KEY_CHARS`.
    """
    if value is None:
        return None
    key = str(value).strip()
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInput(
            f"{what} is {len(key)} characters long; a sticky routing key may have at most {MAX_KEY_CHARS}"
        )
    return key or None


@dataclass(frozen=True)
class Route:
    """The outcome of :meth:`RoutingState.pick`: who answers, and who scores a shadow copy."""

    alias: str
    version: LoadedVersion
    shadow: LoadedVersion | None = None


@dataclass(frozen=True)
class RoutingState:
    """What is served right now; replaced as a whole, never mutated.

    ``live_challenger`` is the blue-green switch: True sends every request to the challenger.
    """

    champion: LoadedVersion | None = None
    challenger: LoadedVersion | None = None
    canary_percent: int = 0
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    live_challenger: bool = False

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

    def effective_percent(self) -> int:
        """Share of requests the challenger answers (the status route's ``canary_percent``)."""
        if self.challenger is None:
            return 0
        if self.champion is None:
            return 100
        strategy = self.rollout.strategy
        if strategy == "shadow":
            return 0
        if strategy == "blue_green":
            return 100 if self.live_challenger else 0
        return self.canary_percent

    def pick(self, rng: random.Random, model_name: str, sticky_key: str | None = None) -> Route:
        """Choose the version that answers one request, and the shadow that scores a copy.

        Args:
            rng: Random numbers of the ``canary`` split (and of unkeyed ``ab`` requests).
            model_name: Part of the sticky hash, so two models do not share their assignments.
            sticky_key: The request's ``ab`` key, if any.

        Raises:
            InferenceError: No version is loaded (503).
        """
        champion, challenger = self.champion, self.challenger
        if champion is None:
            if challenger is None:
                raise InferenceError("no model version is loaded yet", status="503")
            return Route(CHALLENGER_ALIAS, challenger)
        if challenger is None:
            return Route(CHAMPION_ALIAS, champion)
        strategy = self.rollout.strategy
        if strategy == "shadow":
            copy = rng.random() * 100 < self.rollout.shadow_percent
            return Route(CHAMPION_ALIAS, champion, challenger if copy else None)
        if strategy == "blue_green":
            return Route(CHALLENGER_ALIAS, challenger) if self.live_challenger else Route(CHAMPION_ALIAS, champion)
        if strategy == "ab" and (sticky_key is not None or self.rollout.unkeyed == "champion"):
            if sticky_key is None:
                return Route(CHAMPION_ALIAS, champion)
            bucket = sticky_bucket(model_name, self.rollout.salt, sticky_key)
            to_challenger = bucket < self.canary_percent * (BUCKETS // 100)
            return Route(CHALLENGER_ALIAS, challenger) if to_challenger else Route(CHAMPION_ALIAS, champion)
        if rng.random() * 100 < self.canary_percent:
            return Route(CHALLENGER_ALIAS, challenger)
        return Route(CHAMPION_ALIAS, champion)


class ShadowScorer:
    """Runs shadow work on one background thread, through a bounded queue that never blocks a request.

    Args:
        model_name: For the metrics and the log lines.
        max_queued: Copies that may wait; :meth:`submit` drops (and counts) any beyond.
    """

    def __init__(self, model_name: str, max_queued: int) -> None:
        self.model_name = model_name
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.submitted = 0
        self.dropped = 0
        self.scored = 0
        self.failed = 0

    def submit(self, work: Callable[[], None]) -> bool:
        """Queue one shadow copy without waiting; False (and counted) when the queue is full."""
        self._start()
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            SHADOW_DROPPED.labels(self.model_name).inc()
            return False
        with self._lock:
            self.submitted += 1
        return True

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"ctpipe-shadow-{self.model_name}", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                work()
            except Exception as exc:  # a failing shadow is recorded, never raised into anything that serves
                with self._lock:
                    self.failed += 1
                SHADOW_SCORED.labels(self.model_name, "error").inc()
                logger.warning("shadow scoring failed", extra={"model": self.model_name, "error": str(exc)[:300]})
            else:
                with self._lock:
                    self.scored += 1
                SHADOW_SCORED.labels(self.model_name, "ok").inc()

    def stop(self, timeout: float = 5.0) -> None:
        """Score what is queued (up to ``timeout``), then end the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def status(self) -> dict[str, int]:
        """Counts for the status route."""
        with self._lock:
            return {
                "submitted": self.submitted,
                "scored": self.scored,
                "failed": self.failed,
                "dropped": self.dropped,
                "queued": self._queue.qsize(),
            }
