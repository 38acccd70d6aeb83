"""Batch scoring on Kubernetes: a spark-operator ``ScheduledSparkApplication`` rendered from the configuration.

The Kubeflow Spark operator runs :func:`components.batch_predict.batch_predict` on a schedule: its
spark-submit starts a driver pod from the components image, which runs
``components/batch_predict.py`` of the installed package as the application file (the command-line
entry, :func:`components.batch_predict.main`) and starts executor pods of the same image. Nothing
besides the image is needed: no extra file, no code in a ConfigMap.

Everything the job needs comes from the configuration (``manifests/base/ctpipe.yaml``):

- the image (``infra.images.components``) and its pull secrets;
- the dataset spec, read by the driver from the mounted ``ctpipe-config`` ConfigMap (``--config``);
- the input (``dataset.source``) and the output (``s3://<its bucket>/predictions/<model>``), both in the
  object store, read and written through s3a with the keys of ``infra.kubernetes.secrets``, mapped into
  the driver's and the executors' environment by ``secretKeyRef`` (names only, never a value);
- the model, ``models:/<serving.model_name>@champion``, from the MLflow server at ``infra.tracking_uri``.

``python -m pipelines.spark_application --config manifests/base/ctpipe.yaml`` prints it as YAML;
``manifests/base/scheduledsparkapplication.yaml`` is that output, and a test fails when it differs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from components.common import spark_s3, storage
from components.common.errors import ConfigError
from pipelines.config import CtpipeConfig, load_config
from pipelines.generated_manifest import dump_yaml, manifest_arguments, run

API_VERSION = "sparkoperator.k8s.io/v1beta2"
KIND = "ScheduledSparkApplication"
NAME = "ctpipe-batch-scoring"
# The continuous-training CronJob's schedule (manifests/base/cronjob.yaml; a test keeps them equal): the job
# scores with whatever model is champion when it starts.
DEFAULT_SCHEDULE = "0 3 * * *"
# The alias the job scores with, resolved once to a version by batch_predict.
MODEL_ALIAS = "champion"
# Where the components image has ctpipe (containers/Dockerfile: `python3 -m venv /opt/ctpipe` on a python:3.11
# base; a test reads both from the Dockerfile). The application file is the installed module itself.
IMAGE_PYTHON = "/opt/ctpipe/bin/python"
IMAGE_SITE_PACKAGES = "/opt/ctpipe/lib/python3.11/site-packages"
MAIN_APPLICATION_FILE = f"local://{IMAGE_SITE_PACKAGES}/components/batch_predict.py"
# The ConfigMap manifests/base/kustomization.yaml generates from ctpipe.yaml, mounted where the CronJob mounts it.
CONFIG_MAP = "ctpipe-config"
CONFIG_DIR = "/etc/ctpipe"
CONFIG_FILE = f"{CONFIG_DIR}/ctpipe.yaml"
# The driver creates and watches its executor pods (manifests/base/rbac.yaml); executors call no API, so their
# account has no Role and mounts no token (manifests/base/serviceaccounts.yaml).
DRIVER_SERVICE_ACCOUNT = "ctpipe-spark"
EXECUTOR_SERVICE_ACCOUNT = "ctpipe-spark-executor"
# The component name that SecretEnv.components may list to give a Secret to this job only.
COMPONENT = "batch_predict"
UID = 1000  # the image's non-root user (containers/Dockerfile), as in every other manifest
# Spark sizes the pods: CPU from cores (request coreRequest, limit coreLimit); memory request and limit are both
# memory (the JVM heap) + memoryOverhead, which also holds the Python workers that score (pandas, the model).
DRIVER_RESOURCES: dict[str, Any] = {
    "cores": 1,
    "coreRequest": "500m",
    "coreLimit": "1",
    "memory": "1g",
    "memoryOverhead": "1g",
}
EXECUTOR_RESOURCES: dict[str, Any] = {
    "instances": 2,
    "cores": 1,
    "coreRequest": "500m",
    "coreLimit": "1",
    "memory": "2g",
    "memoryOverhead": "1g",
}
# A failed run is retried: its output is committed with a marker in one PUT, so a retry replaces it whole.
RESTART_POLICY: dict[str, Any] = {
    "type": "OnFailure",
    "onFailureRetries": 2,
    "onFailureRetryInterval": 300,
    "onSubmissionFailureRetries": 2,
    "onSubmissionFailureRetryInterval": 60,
}
# Five cron fields, or a macro (@daily, @every 6h) as the operator's cron parser reads them.
_CRON = re.compile(r"^(@\w+( \S+)?|\S+( \S+){4})$")
MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "base" / "scheduledsparkapplication.yaml"
REGENERATE = (
    "python -m pipelines.spark_application --config manifests/base/ctpipe.yaml "
    "--out manifests/base/scheduledsparkapplication.yaml"
)
HEADER = (
    "# Generated from manifests/base/ctpipe.yaml by pipelines/spark_application.py; do not edit. Regenerate with\n"
    f"#   {REGENERATE}\n"
    "# Batch scoring on Kubernetes with the Kubeflow Spark operator: docs/cluster.md, 'Batch scoring on Kubernetes'.\n"
)


def spark_version() -> str:
    """The Spark version the job runs: pyspark's, as installed here and pinned in ``containers/components.lock``."""
    return metadata.version("pyspark")


def _s3_location(location: str, field: str) -> str:
    """``location`` if the Spark pods reach it (an ``s3://`` or ``s3a://`` URI); else a ConfigError naming ``field``."""
    if not spark_s3.is_s3(location):
        raise ConfigError(
            f"{field}: expected an s3:// (or s3a://) URI that the Spark pods read and write through s3a (no folder "
            f"is shared between pods), found {storage.redact(location)!r}"
        )
    return spark_s3.check_s3_location(location, field)


def _tracking_uri(config: CtpipeConfig) -> str:
    uri = config.infra.tracking_uri
    if not uri or "://" not in uri or uri.startswith(("sqlite:", "file:")):
        raise ConfigError(
            "infra.tracking_uri: expected the URL of an MLflow server every pod reaches "
            f"(http://mlflow.NAMESPACE.svc:5000), found {uri or 'nothing (sqlite in the workspace)'!r}"
        )
    return uri


def _check_schedule(schedule: str) -> str:
    if not _CRON.match(schedule.strip()):
        raise ConfigError(
            "schedule: expected a cron expression of five fields such as '0 3 * * *', or a macro such as "
            f"'@daily', found {schedule!r}"
        )
    return schedule.strip()


def default_output(config: CtpipeConfig) -> str:
    """Where the job writes by default: ``predictions/<model>`` in the bucket of ``dataset.source``."""
    source = _s3_location(config.dataset.source, "dataset.source")
    scheme = storage.protocol(source)
    return f"{scheme}://{spark_s3.bucket_of(source)}/predictions/{config.serving.model_name}"


def _secret_env(config: CtpipeConfig) -> list[dict[str, Any]]:
    """The Secrets of ``infra.kubernetes.secrets`` given to this job, as ``secretKeyRef`` variables.

    Each Secret key becomes the variable the configuration maps it to (as the pipelines' tasks get
    it through ``secretAsEnv``), rather than ``envFrom``, which would take every key under its own name.
    """
    env = []
    for secret in config.infra.kubernetes.secrets:
        if secret.components and COMPONENT not in secret.components:
            continue
        for key, variable in secret.env.items():
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.secret_name, "key": key}}})
    return env


def _env(variables: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in variables.items()]


def _pod(config: CtpipeConfig, labels: dict[str, str]) -> dict[str, Any]:
    """What driver and executor pods share: labels, placement and security (uid 1000, no root, no privileges).

    A new mapping on every call, so the two roles share no object (and the YAML no anchor).
    """
    pod: dict[str, Any] = {
        "labels": dict(labels),
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    # Placement follows the configuration's pod settings of batch_predict; its CPU and memory do not, because
    # Spark sizes its pods from its own fields (DRIVER_RESOURCES, EXECUTOR_RESOURCES).
    placement = config.infra.kubernetes.pod(COMPONENT)
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = [toleration.model_dump(exclude_none=True) for toleration in placement.tolerations]
    return pod


def render_scheduled_spark_application(
    config: CtpipeConfig,
    schedule: str = DEFAULT_SCHEDULE,
    input_uri: str | None = None,
    output_uri: str | None = None,
) -> dict[str, Any]:
    """The batch scoring job of ``config`` as a ``ScheduledSparkApplication`` (``sparkoperator.k8s.io/v1beta2``).

    No namespace: the overlays set it, as for every object of ``manifests/base``.

    Args:
        config: A cluster configuration: ``dataset.source`` in the object store, an MLflow server.
        schedule: When to run, a cron expression (in UTC); default the continuous-training CronJob's.
        input_uri: What to score; default ``dataset.source``.
        output_uri: Where to write; default ``s3://<bucket of dataset.source>/predictions/<model>``.

    Returns:
        The object, as a JSON-compatible mapping.

    Raises:
        ConfigError: The input or output is not an ``s3://`` URI (or names no bucket, or carries credentials),
            ``infra.tracking_uri`` names no MLflow server, or the schedule is not a cron expression.
    """
    schedule = _check_schedule(schedule)
    source = _s3_location(input_uri or config.dataset.source, "input_uri" if input_uri else "dataset.source")
    target = _s3_location(output_uri, "output_uri") if output_uri else default_output(config)
    tracking_uri = _tracking_uri(config)
    model_uri = f"models:/{config.serving.model_name}@{MODEL_ALIAS}"
    labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "batch-scoring"}
    driver = {
        **DRIVER_RESOURCES,
        "serviceAccount": DRIVER_SERVICE_ACCOUNT,
        **_pod(config, labels),
        "env": [
            *_env(
                {
                    "PYSPARK_PYTHON": IMAGE_PYTHON,
                    "PYSPARK_DRIVER_PYTHON": IMAGE_PYTHON,
                    "MLFLOW_TRACKING_URI": tracking_uri,
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    # The root filesystem is read-only: what MLflow and Python keep under $HOME goes to the emptyDir.
                    "HOME": "/tmp",
                }
            ),
            *_secret_env(config),
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    executor = {
        **EXECUTOR_RESOURCES,
        "serviceAccount": EXECUTOR_SERVICE_ACCOUNT,
        **_pod(config, labels),
        "env": [*_env({"PYSPARK_PYTHON": IMAGE_PYTHON, "HOME": "/tmp"}), *_secret_env(config)],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    template: dict[str, Any] = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "sparkVersion": spark_version(),
        "image": config.infra.images.components,
        "imagePullPolicy": "IfNotPresent",
    }
    if config.infra.kubernetes.image_pull_secrets:
        template["imagePullSecrets"] = list(config.infra.kubernetes.image_pull_secrets)
    template.update(
        {
            "mainApplicationFile": MAIN_APPLICATION_FILE,
            # No --spark-master: the driver takes spark-submit's (the operator's); no --tracking-uri: the
            # driver's MLFLOW_TRACKING_URI.
            "arguments": [
                "--config",
                CONFIG_FILE,
                "--input-path",
                source,
                "--output-path",
                target,
                "--model-uri",
                model_uri,
            ],
            "restartPolicy": dict(RESTART_POLICY),
            "volumes": [
                {"name": "config", "configMap": {"name": CONFIG_MAP}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
            ],
            "driver": driver,
            "executor": executor,
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME, "labels": dict(labels)},
        "spec": {
            "schedule": schedule,
            "timeZone": "UTC",  # ctpipe's windows are UTC; the operator's default is its own pod's zone
            "concurrencyPolicy": "Forbid",  # never two runs writing the same output at once
            "successfulRunHistoryLimit": 3,
            "failedRunHistoryLimit": 3,
            "template": template,
        },
    }


def to_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as the YAML text committed in ``manifests/base`` (with its header)."""
    return dump_yaml(manifest, HEADER)


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write, or check) the rendered ScheduledSparkApplication."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.spark_application",
        description="Render the batch scoring job of a cluster configuration as a spark-operator "
        "ScheduledSparkApplication (YAML on stdout, or --out FILE).",
    )
    parser.add_argument(
        "--schedule",
        default=DEFAULT_SCHEDULE,
        metavar="CRON",
        help=f"Cron expression in UTC (default: {DEFAULT_SCHEDULE!r}, the continuous-training CronJob's).",
    )
    parser.add_argument("--input-uri", default=None, metavar="URI", help="What to score (default: dataset.source).")
    parser.add_argument(
        "--output-uri",
        default=None,
        metavar="URI",
        help="Where to write (default: s3://<bucket of dataset.source>/predictions/<serving.model_name>).",
    )
    manifest_arguments(parser)

    def render(args: argparse.Namespace) -> str:
        config = load_config(args.config)
        return to_yaml(render_scheduled_spark_application(config, args.schedule, args.input_uri, args.output_uri))

    return run(parser, argv, render, REGENERATE)


if __name__ == "__main__":
    sys.exit(main())
