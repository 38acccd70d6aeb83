"""Model serving: a KServe model server that follows the MLflow registry aliases.

- ``serving.model``: ``CtpipeModel``, a ``kserve.Model`` that serves the versions behind the
  ``champion`` and ``challenger`` aliases, splits traffic by the canary percent and swaps
  versions atomically when the aliases move.
- ``serving.server``: runs kserve's REST app on a chosen host (127.0.0.1 by default), the
  ``python -m serving.server`` entry point, and a detached local server for the embedded profile.
- ``serving.manifests``: KServe ``InferenceService`` manifests for the cluster profile.
- ``serving.cluster``: the one seam that talks to a cluster, with a dry-run mode.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# Registry conventions shared by the server, deploy and register (kept here so importing them
# does not import kserve).
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
# Registered-model tag with the share of requests (0-100) the challenger gets; absent means 0.
CANARY_TAG = "ctpipe.canary_percent"
# Registered-model tag naming the challenger version the canary percent was set for. When the
# challenger alias moves to another version, the old percent does not apply to it (it gets 0)
# until deploy opens traffic for it.
CANARY_VERSION_TAG = "ctpipe.canary_version"
# JSON route of the model server that reports what it serves.
STATUS_ROUTE = "/ctpipe/status"


def redact_uri(uri: str) -> str:
    """Drop a password from a URI so it can be logged or reported."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
