"""serving.rollout: validation with clear errors, the default unchanged, and the flags that carry it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from components.common.server_process import serving_args
from components.serving_spec import RolloutSpec, ServingSpec
from tests.helpers import ROOT


def test_existing_configs_keep_the_random_canary_and_the_same_command() -> None:
    serving = ServingSpec.model_validate({"model_name": "churn", "canary_percent": 10})
    assert serving.rollout == RolloutSpec() and serving.rollout.strategy == "canary"
    assert "--rollout" not in serving_args(serving), "the default adds nothing to the server's command line"
    ab = ServingSpec.model_validate({"rollout": {"strategy": "ab", "sticky_header": "x-user-id"}})
    args = serving_args(ab)
    assert RolloutSpec.model_validate_json(args[args.index("--rollout") + 1]) == ab.rollout


@pytest.mark.parametrize(
    ("rollout", "field", "found"),
    [
        ({"strategy": "random"}, "rollout.strategy", "'canary', 'ab', 'shadow' or 'blue_green'"),
        ({"strategy": "ab", "sticky_header": "x user"}, "rollout.sticky_header", "x user"),
        ({"strategy": "shadow", "shadow_percent": 0}, "rollout.shadow_percent", "greater than or equal to 1"),
        ({"strategy": "shadow", "shadow_queue": 0}, "rollout.shadow_queue", "greater than or equal to 1"),
        ({"strategy": "ab", "unkeyed": "challenger"}, "rollout.unkeyed", "'champion' or 'random'"),
        ({"strategy": "ab", "stikcy_header": "x"}, "rollout.stikcy_header", "Extra inputs are not permitted"),
    ],
)
def test_bad_rollout_settings_name_the_field_and_what_was_expected(rollout: dict, field: str, found: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ServingSpec.model_validate({"rollout": rollout})
    message = str(caught.value)
    assert field in message and found in message, message


@pytest.mark.parametrize("strategy", ["ab", "shadow", "blue_green"])
def test_routing_in_the_server_is_refused_outside_prod(strategy: str) -> None:
    """The server routes between prod's aliases only; staging's config must say canary, and is told so."""
    with pytest.raises(ValidationError) as caught:
        ServingSpec.model_validate({"environment": "staging", "rollout": {"strategy": strategy}})
    message = str(caught.value)
    assert "rollout.strategy" in message and f"found {strategy!r}" in message and "'staging'" in message, message
    assert (
        ServingSpec.model_validate({"environment": "prod", "rollout": {"strategy": strategy}}).rollout.strategy
        == strategy
    )


def _server_refuses(*extra: str) -> subprocess.CompletedProcess[str]:
    """Start ``python -m serving.server`` for a model with ``extra`` flags; it must exit before serving."""
    return subprocess.run(
        [sys.executable, "-m", "serving.server", "--model-name", "m", "--tracking-uri", "sqlite:///x.db", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_server_command_line_refuses_a_bad_rollout() -> None:
    bad = _server_refuses("--rollout", '{"strategy": "sticky"}')
    assert bad.returncode == 2 and "--rollout is not a valid serving.rollout" in bad.stderr and "strategy" in bad.stderr
    both = _server_refuses("--rollout", '{"strategy": "ab"}', "--alias", "champion")
    assert both.returncode == 2 and "excludes --alias" in both.stderr


def test_a_canary_manifest_is_unchanged_and_other_strategies_need_no_alias() -> None:
    from components.common.errors import DeployError
    from components.common.kserve.manifests import render_inference_service

    canary = render_inference_service(ServingSpec(model_name="m"), "img", "2", "http://mlflow:5000", 20)
    args = canary["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--alias") + 1] == "challenger" and "--rollout" not in args
    with pytest.raises(DeployError, match=r"needs serving\.rollout\.strategy ab, shadow or blue_green"):
        render_inference_service(ServingSpec(model_name="m"), "img", "2", "http://mlflow:5000", None, alias=None)
