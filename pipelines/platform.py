"""Per-task settings every pipeline applies last: caching opt-outs and the cluster's pod settings.

Each pipeline body ends with :func:`finish`, which walks every task it created (inside
conditions and exit handlers too) and, by component name:

- turns caching off for the side-effect tasks in ``kfp_components.UNCACHED``;
- renders ``infra.kubernetes`` into the compiled YAML with kfp-kubernetes: secrets as
  environment variables, image pull secrets, node selectors and tolerations (the IR's
  platform spec), and CPU/memory requests and limits (the container spec);
- copies the compiling machine's ``CTPIPE_ALLOWED_MODULES`` (extra module prefixes the config
  may import estimators and metrics from; docs/security.md) into every task's environment. It
  is fixed when the pipeline is compiled: no run parameter can change it.

kfp.local ignores the Kubernetes settings, so the embedded profile runs the same pipeline.
"""

from __future__ import annotations

from kfp.dsl import pipeline_context
from kfp.dsl.pipeline_task import PipelineTask

from components.common.imports import ALLOWED_MODULES_ENV, extra_prefixes
from pipelines.config import CtpipeConfig, PodSettings
from pipelines.kfp_components import UNCACHED


def component_name(task: PipelineTask) -> str:
    """The component a task runs, as named in ``kfp_components`` and in config (``fetch_features``)."""
    return str(task.component_spec.name).replace("-", "_")


def _apply_pod(task: PipelineTask, pod: PodSettings) -> None:
    from kfp import kubernetes

    if pod.cpu_request:
        task.set_cpu_request(pod.cpu_request)
    if pod.cpu_limit:
        task.set_cpu_limit(pod.cpu_limit)
    if pod.memory_request:
        task.set_memory_request(pod.memory_request)
    if pod.memory_limit:
        task.set_memory_limit(pod.memory_limit)
    for label, value in pod.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in pod.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator, value=toleration.value, effect=toleration.effect
        )


def finish(config: CtpipeConfig) -> list[PipelineTask]:
    """Apply caching opt-outs and ``infra.kubernetes`` to every task of the pipeline being built.

    Call it as the last statement of a pipeline function's body.

    Returns:
        The tasks it configured.
    """
    from kfp import kubernetes

    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if pipeline is None:
        raise RuntimeError("finish() must be called inside a @dsl.pipeline function")
    settings = config.infra.kubernetes
    # Validated here, so a malformed prefix fails the compile rather than every task.
    allowed_modules = ",".join(extra_prefixes())
    tasks = list(pipeline.tasks.values())
    for task in tasks:
        name = component_name(task)
        if allowed_modules:
            task.set_env_variable(ALLOWED_MODULES_ENV, allowed_modules)
        if name in UNCACHED:
            task.set_caching_options(False)
        _apply_pod(task, settings.pod(name))
        for secret in settings.secrets:
            if not secret.components or name in secret.components:
                kubernetes.use_secret_as_env(task, secret_name=secret.secret_name, secret_key_to_env=secret.env)
        if settings.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
    return tasks
