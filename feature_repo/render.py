"""Write ``feature_store.yaml`` for the Feast CLI from a ctpipe configuration.

Usage: ``python feature_repo/render.py [CONFIG] > feature_repo/feature_store.yaml``; CONFIG
defaults to ``ctpipe.yaml`` (or ``CTPIPE_CONFIG``). Paths are written relative to this
folder, where the Feast CLI runs. The pipelines never read the file: they build the same
settings in code (``components.common.feast.store_settings``).
"""

import os
import sys
from pathlib import Path

from components.common.feast import feature_store_yaml
from pipelines.config import load_config

HERE = Path(__file__).resolve().parent


def render(config_path: str | os.PathLike[str]) -> str:
    """The ``feature_store.yaml`` text for the configuration at ``config_path``."""
    config = load_config(config_path)
    return feature_store_yaml(config.feast, config.infra.workspace, relative_to=str(HERE))


if __name__ == "__main__":
    default = os.environ.get("CTPIPE_CONFIG") or HERE.parent / "ctpipe.yaml"
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else default))
