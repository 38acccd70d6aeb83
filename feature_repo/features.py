"""Feast definitions for the Feast CLI (``feast apply``, ``feast materialize``, ``feast ui``).

They are generated from the ``dataset`` and ``feast`` sections of ``ctpipe.yaml`` by the same
function the pipelines use (``components.common.feast.definitions``), so the CLI and the
pipelines always agree. ``CTPIPE_CONFIG`` names another configuration file.
"""

import os
from pathlib import Path

from components.common.feast import definitions
from pipelines.config import load_config

_config = load_config(os.environ.get("CTPIPE_CONFIG") or Path(__file__).resolve().parents[1] / "ctpipe.yaml")
entity, feature_view = definitions(_config.dataset, _config.feast, _config.infra.workspace)
