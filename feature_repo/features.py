"""Feast definitions for the Feast CLI, generated from ctpipe.yaml (the pipelines use the same function)."""

from pathlib import Path

from components.fetch_features import definitions
from pipelines.config import load_config

_config = load_config(Path(__file__).resolve().parents[1] / "ctpipe.yaml")
entity, feature_view = definitions(_config.dataset, _config.feast, str(_config.workspace))
