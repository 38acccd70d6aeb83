"""Typed specifications of serving: how the model is served, rolled out and logged.

``ServingSpec`` is the ``serving`` section of the configuration file; the sections inside it
(infra validation, canary analysis, the rollout strategy, the inference log) are here too. The
deploy, infra validation and canary analysis steps and the model server take these; the other
steps' specs are in ``components/specs.py``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.common.storage import check_location
from components.specs import StrictModel

# Where a cluster deployment goes when the config names no namespace: the CronJob sets it to its
# own namespace (the downward API), so each kustomize overlay deploys into the namespace it names.
NAMESPACE_ENV = "CTPIPE_NAMESPACE"


class InfraValidationSpec(StrictModel):
    """How a challenger is tried in a sandbox model server before it gets traffic (TFX InfraValidator)."""

    enabled: bool = Field(
        default=True, description="Run infra validation before deploy; off deploys on blessing alone."
    )
    timeout_seconds: float = Field(default=90.0, gt=0, description="Longest wait for the sandbox server to be ready.")
    sample_rows: int = Field(default=20, ge=1, description="Evaluation rows sent to the sandbox as sample requests.")


class CanaryAnalysisSpec(StrictModel):
    """Thresholds that turn a canary's live traffic into promote or roll back."""

    window_minutes: float = Field(default=60.0, gt=0, description="Inference-log window (ending now) that is compared.")
    min_requests: int = Field(
        default=50, ge=1, description="Fewer logged rows than this for either version: no decision yet."
    )
    max_error_rate_increase: float = Field(
        default=0.01, ge=0, description="Challenger error rate may exceed the champion's by at most this."
    )
    max_latency_p95_ratio: float = Field(
        default=1.5, gt=0, description="Challenger latency p95 may be at most this multiple of the champion's."
    )
    latency_slack_ms: float = Field(
        default=5.0, ge=0, description="Latency p95 differences below this many ms never fail the canary."
    )
    max_prediction_psi: float = Field(
        default=0.25, gt=0, description="Largest PSI between challenger and champion prediction distributions."
    )
    max_accuracy_drop: float = Field(
        default=0.02,
        ge=0,
        description="Where labels arrived: challenger accuracy may be lower than the champion's by at most this.",
    )
    min_labeled: int = Field(default=30, ge=1, description="Labeled rows per version needed to compare accuracy.")
    significance_level: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="p-value below which the report calls a difference between the versions significant "
        "(two-proportion z-tests on error rate and accuracy, Mann-Whitney U on scores, Wilcoxon on paired "
        "shadow scores).",
    )


RolloutStrategy = Literal["canary", "ab", "shadow", "blue_green"]
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


class RolloutSpec(StrictModel):
    """How the model server splits traffic between champion and challenger (docs/serving.md, rollout strategies).

    Every strategy is routed inside ctpipe's model server, which holds both versions, so it works
    the same on the local server and in a cluster pod.
    """

    strategy: RolloutStrategy = Field(
        default="canary",
        description="canary: each request goes to the challenger at random with serving.canary_percent. "
        "ab: a SHA-256 hash of the request's key (sticky_header, else its first entity id) sends the same key "
        "to the same version, serving.canary_percent of keys to the challenger. shadow: the champion answers "
        "every request; the challenger scores a copy off the request path and its answers are only logged "
        "(model_alias 'shadow'). blue_green: all traffic to one version; 'ctpipe switch' moves it to an "
        "infra-blessed challenger at once and 'ctpipe switch --back' returns it, both loaded throughout.",
    )
    sticky_header: str | None = Field(
        default=None,
        pattern=_HEADER_NAME,
        description="ab: the request header whose value is the assignment key (e.g. x-user-id); without it, or "
        "when a request lacks it, the request's first entity id is the key.",
    )
    unkeyed: Literal["champion", "random"] = Field(
        default="champion",
        description="ab: where a request with no key goes: always the champion (no anonymous user enters the "
        "experiment), or at random with serving.canary_percent.",
    )
    salt: str = Field(
        default="",
        max_length=200,
        description="ab: mixed into the hash; a new salt reshuffles which keys see the challenger.",
    )
    shadow_percent: int = Field(
        default=100, ge=1, le=100, description="shadow: share of requests copied to the challenger."
    )
    shadow_queue: int = Field(
        default=1000,
        ge=1,
        description="shadow: copies waiting to be scored; when full further copies are dropped and counted "
        "(ctpipe_shadow_dropped_total), never waited for.",
    )


INFERENCE_LOG_HASH_KEY_ENV = "CTPIPE_INFERENCE_LOG_HASH_KEY"


class InferenceLogSpec(StrictModel):
    """The serving inference log: on or off, how long it is kept, and which columns never reach it raw.

    ``serving.inference_log: true`` / ``false`` is accepted as ``{enabled: true}`` / ``{enabled: false}``,
    and the model is truthy exactly when the log is enabled, so ``if serving.inference_log:`` keeps working.
    """

    enabled: bool = Field(default=True, description="Log every answered request.")
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days of log kept by 'ctpipe inference-log maintain' and the monitoring pipeline's "
        "maintenance step: date partitions older than this are deleted. Empty keeps everything.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Request columns never stored (personal data the log must not hold); monitoring skips the "
        "drift of an excluded (or hashed) feature and lists it as not measured.",
    )
    hash: list[str] = Field(
        default_factory=list,
        description="Request columns stored as HMAC-SHA256 hex digests under a key from the environment "
        "(hash_key_env), never the raw value: still joinable and countable, not readable.",
    )
    hash_key_env: str = Field(
        default=INFERENCE_LOG_HASH_KEY_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the hash key (a Kubernetes Secret on a cluster; never in the "
        "config). The model server refuses to start when hash is set and this variable is empty.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _disjoint(self) -> InferenceLogSpec:
        both = sorted(set(self.exclude) & set(self.hash))
        if both:
            raise ValueError(f"column(s) {both} are both excluded and hashed; name each in one list only")
        protected = {"request_id", "row", "timestamp", "model_name", "model_version", "model_alias", "prediction"}
        protected |= {"latency_ms", "status"}
        reserved = sorted(protected & (set(self.exclude) | set(self.hash)))
        if reserved:
            raise ValueError(f"column(s) {reserved} are the log's own columns; only request columns can be protected")
        return self

    def __bool__(self) -> bool:
        return self.enabled

    @classmethod
    def of(cls, value: InferenceLogSpec | bool) -> InferenceLogSpec:
        """The settings of ``serving.inference_log`` whether it holds the model or a plain bool."""
        return value if isinstance(value, cls) else cls(enabled=bool(value))


class ServingSpec(StrictModel):
    """How the model is served and rolled out."""

    model_name: str = Field(default="ctpipe-model", description="Registered model name in MLflow.")
    canary_percent: int = Field(default=20, ge=1, le=100, description="Traffic share for a new challenger.")
    host: str = Field(default="127.0.0.1", description="Address the local model server binds.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port of the local model server.")
    deployment_mode: Literal["Serverless", "Standard"] = Field(
        default="Serverless", description="KServe mode for InferenceServices in the cluster profile."
    )
    namespace: str = Field(
        default_factory=lambda: os.environ.get(NAMESPACE_ENV) or "ctpipe",
        description="Kubernetes namespace of the InferenceService; default the CTPIPE_NAMESPACE variable (the "
        "CronJob sets it to its own namespace, the overlay's), else 'ctpipe'.",
    )
    environment: Literal["dev", "staging", "prod"] | None = Field(
        default=None,
        description="The environment this configuration serves (docs/operations.md, environments): its "
        "InferenceService follows that environment's aliases (dev-/staging-champion and -challenger; prod's are "
        "champion and challenger), goes to environments.ENV.namespace unless serving.namespace is set, and its "
        "canary analysis records its verdict for that environment. Empty: prod's aliases, as before environments.",
    )
    max_batch_rows: int = Field(
        default=10_000,
        ge=1,
        description="Most rows (instances or entity ids) one request may carry; more get HTTP 413.",
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; a larger one is answered 413 from its Content-Length (or "
        "while a chunked body is read), before any of it is parsed.",
    )
    worker_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads of the model server that decode, validate and score requests; the event loop only "
        "reads and writes sockets, so health checks answer while a large request is scored.",
    )
    require_token: bool = Field(
        default=False,
        description="Inference routes require 'Authorization: Bearer <token>', the token taken from the "
        "CTPIPE_SERVING_TOKEN variable (a Kubernetes Secret on the cluster). Off by default: the local server "
        "binds 127.0.0.1; on a cluster, put KServe's or Istio's auth in front (docs/serving.md) or switch this on.",
    )
    model_repository_api: bool = Field(
        default=False,
        description="Enable the model-repository routes (POST /v2/repository/models/NAME/load and /unload). They "
        "require 'Authorization: Bearer <token>' with the CTPIPE_SERVING_ADMIN_TOKEN variable, and the server "
        "refuses to start when that variable is empty. Off: those routes answer 404.",
    )
    inference_log: InferenceLogSpec = Field(
        default_factory=InferenceLogSpec,
        description="Log every answered request (features, prediction, version, request id) to partitioned "
        "parquet under inference_log_dir, written by a background thread. true / false, or a mapping with "
        "enabled, retention_days, exclude, hash and hash_key_env (docs/monitoring.md, personal data).",
    )
    inference_log_dir: str | None = Field(
        default=None,
        description="Where the inference log lives, a folder or a URI (s3://bucket/inference_log; credentials "
        "from the environment): the local model server writes it, monitoring and canary analysis read it. "
        "Empty means <workspace>/inference_log.",
    )
    inference_log_flush_seconds: float = Field(
        default=2.0, gt=0, description="Longest time a logged request waits in memory before it is written."
    )
    inference_log_queue_rows: int = Field(
        default=100_000,
        ge=1,
        description="Rows the inference log may hold in memory; when the writer falls behind, further rows "
        'are dropped (counted in ctpipe_inference_log_dropped_rows_total{reason="queue_full"} and logged) rather '
        "than slowing requests.",
    )
    credentials_secret: str | None = Field(
        default=None,
        description="Cluster profile: the Kubernetes Secret whose keys become the predictor pods' environment "
        "(object-store keys for the inference log, MLflow credentials); never the keys themselves.",
    )
    egress: list[str] = Field(
        default_factory=list,
        description="Cluster profile: what the predictor pods may connect to besides DNS, infra.tracking_uri and "
        "Feast's Redis, as host:port (e.g. the object store of the models and the inference log, "
        "minio.ctpipe-system.svc:9000). The predictor's NetworkPolicy (python -m pipelines.network_policy) "
        "allows only these.",
    )
    infra_validation: InfraValidationSpec = Field(default_factory=InfraValidationSpec)
    canary_analysis: CanaryAnalysisSpec = Field(default_factory=CanaryAnalysisSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @field_validator("inference_log_dir")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return None if value is None else check_location(value, "inference_log_dir")

    @field_validator("egress")
    @classmethod
    def _host_and_port(cls, value: list[str]) -> list[str]:
        for index, destination in enumerate(value):
            host, _, port = destination.rpartition(":")
            if not host or "/" in host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"egress[{index}]: expected host:port (port 1-65535), found {destination!r}")
        return value

    @model_validator(mode="after")
    def _routing_follows_prod(self) -> ServingSpec:
        # ab, shadow and blue_green route inside the model server, which holds prod's champion and challenger.
        if self.environment not in (None, "prod") and self.rollout.strategy != "canary":
            raise ValueError(
                f"rollout.strategy: expected 'canary' with environment {self.environment!r} (the server routes "
                f"ab, shadow and blue_green between prod's aliases only), found {self.rollout.strategy!r}"
            )
        return self
