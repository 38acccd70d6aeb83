"""The KServe seam: what ctpipe sends to a cluster that runs KServe, and the one client that sends it.

- ``manifests``: the ``InferenceService`` a deploy renders (the serving image running
  ``python -m serving.server``), in Serverless or Standard mode.
- ``cluster``: :class:`~components.common.kserve.cluster.KServeSeam`, the only code that
  talks to the cluster, with a dry-run mode that records what would be sent.

The model server itself is the ``serving`` package; nothing here imports it.
"""
