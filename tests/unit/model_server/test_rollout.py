"""Rollout on a cluster: the exact InferenceService written for deploy, promote, rollback and canary close.

The object read back from the cluster carries fields others own (an overlay's service account,
a webhook's env var, a platform team's resources and annotations); every write keeps them and
changes only ctpipe's fields. These tests run the pure merge on a recorded object; the same
writes against a real kube-apiserver are in ``tests/cluster``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components.common.errors import DeployError
from components.common.kserve import rollout
from components.common.kserve.traffic import ClusterTarget, render_for_state, traffic_state
from components.serving_spec import ServingSpec
from tests.helpers import followed_alias, kserve_container, kserve_crd_validator

TRACKING = "http://mlflow.ctpipe-system.svc:5000"
TARGET = ClusterTarget(image="registry.example/ctpipe/serving:1.0")
FOREIGN_ENV = {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel.observability:4317"}
FOREIGN_ENV_FROM = {"configMapRef": {"name": "platform-defaults"}}


def _write(current: dict[str, Any] | None, serving: ServingSpec, aliases: dict[str, str]) -> dict[str, Any]:
    """What ctpipe writes for these aliases over ``current`` (as the API server would store it)."""
    desired = render_for_state(serving, traffic_state(serving, aliases), TRACKING, TARGET)
    written = rollout.merge(copy.deepcopy(current) if current else None, desired)
    errors = [f"{list(e.path)}: {e.message}" for e in kserve_crd_validator().iter_errors(written)]
    assert not errors, errors
    return written


def _platform_team_edits(isvc: dict[str, Any]) -> dict[str, Any]:
    """What others add after ctpipe's first write: none of it is ctpipe's to change."""
    edited = copy.deepcopy(isvc)
    edited["metadata"]["annotations"]["team.example/owner"] = "ml-platform"
    edited["metadata"]["resourceVersion"] = "42"
    predictor = edited["spec"]["predictor"]
    predictor["serviceAccountName"] = "ctpipe-predictor"
    predictor["minReplicas"] = 2
    container = predictor["containers"][0]
    container["env"].append(FOREIGN_ENV)
    container["envFrom"] = [*(container.get("envFrom") or []), FOREIGN_ENV_FROM]
    container["resources"] = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    edited["status"] = {"url": "http://churn.ml.example.com"}
    return edited


def _assert_foreign_fields_kept(isvc: dict[str, Any], canary: bool = False) -> None:
    assert isvc["metadata"]["annotations"]["team.example/owner"] == "ml-platform"
    assert isvc["metadata"]["resourceVersion"] == "42", "the write carries the version it read (precondition)"
    predictor = isvc["spec"]["canary"][0]["predictor"] if canary else isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "ctpipe-predictor"
    assert predictor["minReplicas"] == 2
    container = kserve_container(isvc, canary)
    assert FOREIGN_ENV in container["env"]
    assert FOREIGN_ENV_FROM in container["envFrom"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert "status" not in isvc, "status is the controller's: never written back"


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_deploy_promote_rollback_and_canary_close_write_exactly_this(mode: str) -> None:
    serving = ServingSpec(model_name="churn", namespace="ml", deployment_mode=mode, canary_percent=20)

    # First deployment: no champion yet, so the one target follows the challenger.
    first = _write(None, serving, {"challenger": "1"})
    assert followed_alias(kserve_container(first)) == "challenger"
    assert "canary" not in first["spec"] and "canaryTrafficPercent" not in first["spec"]["predictor"]
    current = _platform_team_edits(first)

    # Promote v1: one target following the champion.
    promoted = _write(current, serving, {"champion": "1"})
    assert followed_alias(kserve_container(promoted)) == "champion"
    _assert_foreign_fields_kept(promoted)

    # Deploy v2 as a canary: 20% to the challenger target.
    canary = _write(promoted, serving, {"champion": "1", "challenger": "2"})
    _assert_foreign_fields_kept(canary)
    if mode == "Serverless":  # a new revision following the challenger gets 20%; the last one keeps 80%
        assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert followed_alias(kserve_container(canary)) == "challenger"
        assert "canary" not in canary["spec"]
    else:  # spec.predictor keeps following the champion; spec.canary follows the challenger with 20%
        assert "canaryTrafficPercent" not in canary["spec"]["predictor"]
        assert followed_alias(kserve_container(canary)) == "champion"
        (entry,) = canary["spec"]["canary"]
        assert entry["trafficPercent"] == 20
        assert followed_alias(kserve_container(canary, canary=True)) == "challenger"
        _assert_foreign_fields_kept(canary, canary=True)  # the canary pods run like the stable ones
    assert canary["metadata"]["annotations"]["ctpipe.io/model-version"] == "2"

    # Promote v2: all traffic to the champion target, the canary gone.
    promoted2 = _write(canary, serving, {"champion": "2"})
    assert "canary" not in promoted2["spec"] and "canaryTrafficPercent" not in promoted2["spec"]["predictor"]
    assert followed_alias(kserve_container(promoted2)) == "champion"
    _assert_foreign_fields_kept(promoted2)

    # Rollback to v1: the champion alias moved back, and one write gives the champion target all traffic.
    rolled_back = _write(promoted2, serving, {"champion": "1"})
    assert rolled_back["spec"] == promoted2["spec"]  # the pods follow the alias back to v1
    assert rolled_back["metadata"]["annotations"]["ctpipe.io/model-version"] == "1"

    # A canary closed by canary analysis: the challenger alias is gone, and so is its traffic.
    closed = _write(canary, serving, {"champion": "1"})
    assert "canary" not in closed["spec"] and "canaryTrafficPercent" not in closed["spec"]["predictor"]
    _assert_foreign_fields_kept(closed)
    assert rollout.foreign_changes(closed) == []


def test_a_variable_ctpipe_no_longer_renders_is_removed_but_a_foreign_one_stays() -> None:
    serving = ServingSpec(model_name="churn", namespace="ml")
    current = _platform_team_edits(_write(None, serving, {"champion": "1"}))
    # An earlier ctpipe rendered CTPIPE_MODEL_VERSION and recorded it as its own.
    container = current["spec"]["predictor"]["containers"][0]
    container["env"].append({"name": "CTPIPE_MODEL_VERSION", "value": "1"})
    recorded = json.loads(current["metadata"]["annotations"][rollout.OWNED_ANNOTATION])
    recorded.append(
        [
            ["spec", "predictor", "containers", "[name=kserve-container]", "env", "[name=CTPIPE_MODEL_VERSION]"],
            {"name": "CTPIPE_MODEL_VERSION", "value": "1"},
        ]
    )
    current["metadata"]["annotations"][rollout.OWNED_ANNOTATION] = json.dumps(recorded)

    written = _write(current, serving, {"champion": "1"})
    names = [item["name"] for item in kserve_container(written)["env"]]
    assert "CTPIPE_MODEL_VERSION" not in names
    assert FOREIGN_ENV["name"] in names


def test_a_changed_field_that_ctpipe_owns_stops_the_write_naming_field_and_manager() -> None:
    serving = ServingSpec(model_name="churn", namespace="ml")
    current = _platform_team_edits(_write(None, serving, {"champion": "1", "challenger": "2"}))
    # Someone set the canary share to 100% by hand; managedFields say who.
    current["spec"]["predictor"]["canaryTrafficPercent"] = 100
    current["metadata"]["managedFields"] = [
        {"manager": "ctpipe", "operation": "Update", "time": "2026-12-07T01:00:00Z", "fieldsV1": {"f:spec": {}}},
        {
            "manager": "kubectl-edit",
            "operation": "Update",
            "time": "2026-12-07T02:00:00Z",
            "fieldsV1": {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}},
        },
    ]
    with pytest.raises(DeployError) as raised:
        rollout.check_foreign_changes(current, force=False)
    message = str(raised.value)
    assert "spec.predictor.canaryTrafficPercent" in message and "'kubectl-edit'" in message
    assert "ctpipe wrote 20, found 100" in message

    (change,) = rollout.check_foreign_changes(current, force=True)  # --force: overwritten, and said
    assert (change.field, change.manager) == ("spec.predictor.canaryTrafficPercent", "kubectl-edit")
    assert (
        _write(current, serving, {"champion": "1", "challenger": "2"})["spec"]["predictor"]["canaryTrafficPercent"]
        == 20
    )


def test_foreign_additions_inside_the_container_are_not_a_conflict() -> None:
    serving = ServingSpec(model_name="churn", namespace="ml")
    current = _platform_team_edits(_write(None, serving, {"champion": "1"}))
    # The predictor's containers list is atomic: whoever added the env var now "owns" the whole list.
    current["metadata"]["managedFields"] = [
        {
            "manager": "env-injector",
            "operation": "Update",
            "fieldsV1": {"f:spec": {"f:predictor": {"f:containers": {}}}},
        }
    ]
    assert rollout.check_foreign_changes(current, force=False) == []
    # But a change to ctpipe's args inside it is, and the list's manager is named.
    current["spec"]["predictor"]["containers"][0]["args"][-1] = "challenger"
    with pytest.raises(
        DeployError, match=r"containers\[name=kserve-container\]\.args was changed by field manager 'env-injector'"
    ):
        rollout.check_foreign_changes(current, force=False)
