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
- ``serving.routing``: which loaded version answers a request (canary, sticky A/B, shadow,
  blue-green); ``serving.versions``: loading a registered version; ``serving.answers``: the
  V1 / V2 answer of each task (classes and probabilities for multiclass).

What starts and stops a server process (``components.common.server_process``), renders its
InferenceService and talks to KServe (``components.common.kserve``) lives in ``components``:
imports run one way, components <- serving <- pipelines, and this package imports only
``components.common`` and the specs (``components.specs``, ``components.serving_spec``).
"""

import sys as _sys

# kserve's model_server parses sys.argv with its own argparse parser when kserve is first imported,
# and argparse takes abbreviations: `ctpipe --config ctpipe.yaml serve` read as kserve's
# --configure_logging and exited. Import it once here, before any module of this package does, with
# only the program name in sys.argv; ctpipe passes kserve its settings as arguments, never argv.
# The collector walks the growing heap of a large import again and again with its default thresholds:
# collecting rarely during it makes the server start faster (components.common.process_lifetime).
from components.common.process_lifetime import rare_collections as _rare_collections

_argv, _sys.argv = _sys.argv, _sys.argv[:1]
try:
    with _rare_collections():
        import kserve  # noqa: F401
finally:
    _sys.argv = _argv
