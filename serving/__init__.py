"""Model serving: the KServe model server that follows the MLflow registry aliases.

Everything here runs inside the model server process (``python -m serving.server``), in the
embedded profile and in the serving image alike:

- ``serving.model``: ``CtpipeModel``, a ``kserve.Model`` that serves the versions behind the
  ``champion`` and ``challenger`` aliases, splits traffic by the canary percent and swaps
  versions atomically when the aliases move.
- ``serving.decoding``: turns V1 and V2 request bodies into the validated columns a version
  scores, and rejects what does not fit its features with a message that names the problem.
- ``serving.http``: what ctpipe puts in front of kserve's app: the body-size limit, the
  inference routes that score on worker threads, bearer tokens, and the model-repository routes
  (off unless configured).
- ``serving.server``: runs kserve's REST app on a chosen host (127.0.0.1 by default); the
  ``python -m serving.server`` entry point.
- ``serving.observability``: Prometheus metrics and the inference log writer.

What starts and stops a server process (``components.common.server_process``), renders its
InferenceService and talks to KServe (``components.common.kserve``) lives in ``components``:
imports run one way, components <- serving <- pipelines, and this package imports only
``components.common`` and ``components.specs``.
"""
