"""Environments dev → staging → prod on a real sqlite registry: aliases, the gate (with an injected
clock), backward compatibility with a registry made before environments, and the status table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.common import registry
from components.common.environments import (
    EnvironmentSpec,
    EnvironmentsSpec,
    GateRefused,
    GateSpec,
    canary_decision_tag,
    environment_status,
    promote_to,
    record_canary_verdict,
    serving_alias,
    since_tag,
    until_tag,
)
from components.common.errors import CtpipeError, ModelNotFound
from components.register import lineage

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


class Clock:
    """An injected clock the test moves by hand: the gate's hours without sleeping."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, hours: float) -> None:
        self.now += dt.timedelta(hours=hours)


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def make_model(uri: str, name: str, blessed: list[str], aliases: dict[str, int]) -> MlflowClient:
    """A registered model made the old way: versions with a blessing tag, champion/challenger aliases."""
    client = MlflowClient(uri)
    client.create_registered_model(name)
    for index, flag in enumerate(blessed, start=1):
        client.create_model_version(name, source=f"/nowhere/{name}/{index}", tags={registry.BLESSED_TAG: flag})
    for alias, version in aliases.items():
        client.set_registered_model_alias(name, alias, str(version))
    return client


def with_gate(**requires: object) -> EnvironmentsSpec:
    return EnvironmentsSpec(
        prod=EnvironmentSpec(namespace="ctpipe-production", requires=GateSpec.model_validate(requires))
    )


def test_prod_keeps_the_old_aliases_and_other_environments_get_their_own():
    assert serving_alias("prod") == registry.CHAMPION_ALIAS == "champion"
    assert serving_alias("staging") == "staging-champion"
    assert serving_alias("dev") == "dev-champion"
    with pytest.raises(CtpipeError, match="unknown environment 'qa'; expected one of dev, staging, prod"):
        serving_alias("qa")


def test_a_registry_made_before_environments_reads_as_prod(uri: str):
    make_model(uri, "old", ["true", "true"], {"champion": 1, "challenger": 2})
    rows = {row.environment: row for row in environment_status("old", uri)}
    assert (rows["prod"].version, rows["prod"].alias, rows["prod"].challenger) == ("1", "champion", "2")
    assert rows["prod"].since == "unrecorded"  # set before environments: said so, not guessed
    assert rows["prod"].blessed == "true"
    assert rows["staging"].version is None and rows["dev"].version is None
    # The old promotion and rollback work unchanged on it, and nothing was renamed or added.
    change = registry.promote("old", uri)
    assert (change.previous, change.current) == ("1", "2")
    assert registry.aliases_of(MlflowClient(uri), "old") == {"champion": "2"}
    registry.rollback("old", uri)
    assert registry.aliases_of(MlflowClient(uri), "old") == {"champion": "1"}


def test_prod_refuses_a_version_that_has_not_passed_staging(uri: str):
    make_model(uri, "churn", ["true", "true"], {"champion": 1, "challenger": 2})
    with pytest.raises(GateRefused) as refused:
        promote_to("churn", uri, "prod", version="2")
    message = str(refused.value)
    assert "version 2" in message and "to prod" in message
    assert "never promoted to staging: expected tag ctpipe.env.staging.since, found none" in message
    assert "expected ctpipe.env.staging.canary_decision='promote', found None" in message
    assert registry.aliases_of(MlflowClient(uri), "churn")["champion"] == "1"  # nothing moved


def test_staging_then_prod_with_the_canary_and_hours_gate(uri: str):
    client = make_model(uri, "churn", ["true", "true"], {"champion": 1, "challenger": 2})
    clock = Clock()
    environments = with_gate(passed_previous=True, canary_passed=True, min_hours=24)
    to_staging = promote_to("churn", uri, "staging", environments, now=clock)  # default: the challenger
    assert (to_staging.alias, to_staging.previous, to_staging.current) == ("staging-champion", None, "2")
    assert client.get_model_version("churn", "2").tags[since_tag("staging")] == T0.isoformat()

    clock.advance(30)
    with pytest.raises(GateRefused, match=r"canary_decision='promote', found None") as refused:
        promote_to("churn", uri, "prod", environments, now=clock)
    assert "hours" not in str(refused.value)  # 30 h in staging meets the 24 h

    record_canary_verdict(client, "churn", "2", "staging", "rollback", "error rate")
    with pytest.raises(GateRefused, match=r"found 'rollback'"):
        promote_to("churn", uri, "prod", environments, now=clock)
    record_canary_verdict(client, "churn", "2", "staging", "promote", "all checks passed")

    change = promote_to("churn", uri, "prod", environments, now=clock)
    assert (change.alias, change.previous, change.current) == ("champion", "1", "2")
    aliases = registry.aliases_of(client, "churn")
    # prod's move is the old promotion: challenger dropped, history kept, so rollback still works.
    assert aliases == {"champion": "2", "staging-champion": "2"}
    assert client.get_model_version("churn", "2").tags[since_tag("prod")] == clock.now.isoformat()
    assert client.get_model_version("churn", "1").tags[until_tag("prod")] == clock.now.isoformat()
    assert registry.rollback("churn", uri).current == "1"


def test_min_hours_counts_with_the_injected_clock(uri: str):
    client = make_model(uri, "churn", ["true", "true"], {"challenger": 2})
    clock = Clock()
    environments = with_gate(min_hours=24)
    promote_to("churn", uri, "staging", environments, now=clock)
    clock.advance(23.5)
    with pytest.raises(GateRefused) as refused:
        promote_to("churn", uri, "prod", environments, now=clock)
    assert "version 2 has been in staging for 23.50 h since 2026-03-02T09:00:00+00:00: expected at least 24 h" in str(
        refused.value
    )
    clock.advance(0.5)
    assert promote_to("churn", uri, "prod", environments, now=clock).current == "2"
    assert registry.aliases_of(client, "churn")["champion"] == "2"


def test_time_in_staging_stops_counting_when_the_version_leaves_it(uri: str):
    make_model(uri, "churn", ["true", "true", "true"], {})
    clock = Clock()
    environments = with_gate(min_hours=10)
    promote_to("churn", uri, "staging", environments, version="1", now=clock)
    clock.advance(2)
    promote_to("churn", uri, "staging", environments, version="2", now=clock)  # 1 leaves staging after 2 h
    clock.advance(100)
    with pytest.raises(GateRefused, match=r"version 1 has been in staging for 2\.00 h"):
        promote_to("churn", uri, "prod", environments, version="1", now=clock)
    assert promote_to("churn", uri, "prod", environments, version="2", now=clock).current == "2"


def test_unblessed_and_missing_versions_are_refused(uri: str):
    make_model(uri, "churn", ["true", "false"], {})
    with pytest.raises(CtpipeError, match=r"version 2 to staging: its ctpipe\.blessed tag is 'false'"):
        promote_to("churn", uri, "staging", version="2")
    with pytest.raises(ModelNotFound, match="no version 9"):
        promote_to("churn", uri, "staging", version="9")
    with pytest.raises(ModelNotFound, match="alias 'staging-champion' points at no version"):
        promote_to("churn", uri, "prod")
    with pytest.raises(ModelNotFound, match="no registered model named 'other'"):
        promote_to("other", uri, "staging")


def test_status_and_lineage_show_where_each_version_serves(uri: str):
    client = make_model(uri, "churn", ["true", "true", "true"], {"champion": 1, "challenger": 3})
    clock = Clock()
    promote_to("churn", uri, "dev", version="3", now=clock)
    promote_to("churn", uri, "staging", version="2", now=clock)
    record_canary_verdict(client, "churn", "2", "staging", "promote", "ok")
    client.set_model_version_tag("churn", "2", registry.INFRA_BLESSED_TAG, "true")
    registry.set_traffic("churn", uri, 20)
    rows = {row.environment: row for row in environment_status("churn", uri)}
    assert (rows["dev"].version, rows["dev"].alias, rows["dev"].since) == ("3", "dev-champion", T0.isoformat())
    staging = rows["staging"]
    assert (staging.version, staging.infra_blessed, staging.canary) == ("2", "true", "v2: promote")
    assert rows["prod"].canary == "challenger 3 at 20%"
    assert (rows["prod"].namespace, rows["staging"].overlay) == ("ctpipe-production", "manifests/overlays/staging")
    details = lineage("churn", "2", uri).chain[0].details
    assert details["serves_in"] == "staging" and details["staging_since"] == T0.isoformat()
    assert lineage("churn", "1", uri).chain[0].details["serves_in"] == "prod"
    assert client.get_model_version("churn", "2").tags[canary_decision_tag("staging")] == "promote"


def test_environments_config_names_field_expected_and_found():
    with pytest.raises(ValueError, match=r"unknown environment\(s\) \['qa'\]; expected only dev, staging, prod"):
        EnvironmentsSpec.model_validate({"qa": {"namespace": "x"}})
    with pytest.raises(ValueError, match="min_hours"):
        EnvironmentsSpec.model_validate({"prod": {"namespace": "p", "requires": {"min_hours": -1}}})
    with pytest.raises(ValueError, match="min_hour"):
        EnvironmentsSpec.model_validate({"prod": {"namespace": "p", "requires": {"min_hour": 3}}})
    with pytest.raises(ValueError, match="namespace"):
        EnvironmentsSpec.model_validate({"staging": {"namespace": "Not_A_Namespace"}})
    # A configured environment is merged over its defaults: the rest of prod's gate and namespace stay.
    merged = EnvironmentsSpec.model_validate({"prod": {"requires": {"min_hours": 24}}})
    assert merged.prod.requires == GateSpec(passed_previous=True, canary_passed=True, min_hours=24)
    assert (merged.prod.namespace, merged.prod.overlay) == ("ctpipe-production", "manifests/overlays/production")
    relaxed = EnvironmentsSpec.model_validate({"prod": {"requires": {"canary_passed": False}}})
    assert relaxed.prod.requires == GateSpec(passed_previous=True)
    defaults = EnvironmentsSpec()
    assert defaults.prod.requires == GateSpec(passed_previous=True, canary_passed=True, min_hours=0)
    assert defaults.staging.requires == GateSpec()


def _log(log_dir: Path, model: str, shifts: dict[str, float], end: dt.datetime) -> None:
    """An inference log of 60 answered requests per version in the ten minutes before ``end``."""
    import numpy as np
    import pandas as pd

    from components.common.inference_log import append_batch

    frames = []
    for version, shift in shifts.items():
        rng = np.random.default_rng(3)  # the same scores for each version, moved by its shift: no sampling noise
        stamps = [end - dt.timedelta(seconds=10 * i + 1) for i in range(60)]
        frames.append(
            pd.DataFrame(
                {
                    "request_id": [f"{version}-{i}" for i in range(60)],
                    "row": 0,
                    "timestamp": pd.to_datetime(stamps, utc=True),
                    "model_name": model,
                    "model_version": version,
                    "prediction": np.clip(rng.uniform(0, 1, 60) * 0.3 + shift, 0, 1),
                    "status": "ok",
                    "latency_ms": 2.0,
                }
            )
        )
    append_batch(log_dir, pd.concat(frames, ignore_index=True))


@pytest.mark.parametrize(("shift", "decision"), [(0.0, "promote"), (0.6, "rollback")])
def test_the_staging_canary_decides_in_staging_and_the_prod_gate_reads_it(
    uri: str, tmp_path: Path, shift: float, decision: str
):
    from components.canary_analysis import canary_analysis
    from components.serving_spec import CanaryAnalysisSpec, ServingSpec

    client = make_model(uri, "churn", ["true", "true", "true"], {"champion": 1})
    clock = Clock()
    promote_to("churn", uri, "staging", version="2", now=clock)
    change = promote_to("churn", uri, "staging", version="3", now=clock, canary=True)
    assert (change.alias, change.current) == ("staging-challenger", "3")
    _log(tmp_path / "log", "churn", {"2": 0.0, "3": shift}, T0)
    spec = ServingSpec(model_name="churn", environment="staging", canary_analysis=CanaryAnalysisSpec(min_requests=30))
    result = canary_analysis(
        spec, uri, str(tmp_path / "log"), str(tmp_path / "r.json"), str(tmp_path / "r.md"), now=T0.isoformat()
    )
    assert (result.champion_version, result.challenger_version, result.decision) == ("2", "3", decision)
    tags = client.get_model_version("churn", "3").tags
    assert tags[canary_decision_tag("staging")] == decision
    aliases = registry.aliases_of(client, "churn")
    assert aliases["champion"] == "1", "a staging canary never moves prod"
    clock.advance(1)
    if decision == "promote":
        assert aliases == {"champion": "1", "staging-champion": "3"}
        assert promote_to("churn", uri, "prod", now=clock).current == "3"
    else:
        assert aliases == {"champion": "1", "staging-champion": "2"}
        with pytest.raises(GateRefused, match="never promoted to staging"):
            promote_to("churn", uri, "prod", version="3", now=clock)


def test_an_environment_chooses_the_namespace_aliases_and_manifest_folder_of_deploy(uri: str, tmp_path: Path):
    import yaml

    from components.deploy import deploy
    from pipelines.config import load_config, parse_config
    from tests.helpers import ROOT

    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    unchanged = load_config(ROOT / "ctpipe.yaml")
    assert unchanged.serving.environment is None and unchanged.environments == EnvironmentsSpec()
    staging = parse_config({**raw, "serving": {**raw.get("serving", {}), "environment": "staging"}}, ROOT)
    assert staging.serving.namespace == "ctpipe-staging"
    pinned = {**raw.get("serving", {}), "environment": "staging", "namespace": "mine"}
    assert parse_config({**raw, "serving": pinned}, ROOT).serving.namespace == "mine"

    make_model(uri, "churn", ["true", "true"], {"champion": 1})
    promote_to("churn", uri, "staging", version="2")
    serving = staging.serving.model_copy(update={"model_name": "churn"})
    result = deploy("2", serving, uri, str(tmp_path / "ws"), profile="cluster", image="img:1", dry_run=True)
    assert (result.environment, result.namespace, result.champion_version) == ("staging", "ctpipe-staging", "2")
    assert Path(result.manifest_path or "") == tmp_path / "ws" / "manifests" / "staging" / "churn.yaml"
    manifest = yaml.safe_load(Path(result.manifest_path or "").read_text())
    assert manifest["metadata"]["namespace"] == "ctpipe-staging"
    assert manifest["spec"]["predictor"]["containers"][0]["args"][-2:] == ["--alias", "staging-champion"]
    with pytest.raises(CtpipeError, match=r"neither staging's challenger \(staging-challenger: None\)"):
        deploy("1", serving, uri, str(tmp_path / "ws"), profile="cluster", image="img:1", dry_run=True)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"serving": {"environment": "qa"}},
            "serving.environment: Input should be 'dev', 'staging' or 'prod' (found 'qa')",
        ),
        (
            {"environments": {"prod": {"requires": {"min_hours": "soon"}}}},
            "environments.prod.requires.min_hours: Input should be a valid number",
        ),
        ({"environments": {"qa": {}}}, "unknown environment(s) ['qa']; expected only dev, staging, prod"),
        ({"environments": {"prod": 3}}, "environments.prod: Input should be a valid dictionary"),
    ],
)
def test_a_wrong_configuration_names_the_field_and_what_was_found(section: dict[str, object], expected: str):
    import yaml

    from components.common.errors import ConfigError
    from pipelines.config import parse_config
    from tests.helpers import ROOT

    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    for key, value in section.items():
        raw[key] = {**raw.get(key, {}), **value}  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as error:
        parse_config(raw, ROOT)
    assert expected in str(error.value)
