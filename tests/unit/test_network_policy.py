"""The predictor's NetworkPolicy: rendered from the configuration, both directions, the configured model name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.common.errors import ConfigError
from pipelines import network_policy
from pipelines.config import load_config, parse_config
from pipelines.generated_manifest import dump_yaml
from tests.helpers import ROOT

CLUSTER_CONFIG = ROOT / "manifests" / "base" / "ctpipe.yaml"
COMMITTED = ROOT / "manifests" / "base" / "networkpolicy.yaml"


def _cluster(**serving: object) -> dict:
    raw = yaml.safe_load(CLUSTER_CONFIG.read_text())
    raw["serving"].update(serving)
    return raw


def test_committed_policy_is_the_rendering_and_check_catches_a_stale_file(tmp_path: Path) -> None:
    rendered = network_policy.render_network_policy(load_config(CLUSTER_CONFIG))
    assert COMMITTED.read_text() == dump_yaml(rendered, network_policy.HEADER), (
        f"regenerate: {network_policy.REGENERATE}"
    )
    out = tmp_path / "np.yaml"
    assert network_policy.main(["--config", str(CLUSTER_CONFIG), "--out", str(out)]) == 0
    assert network_policy.main(["--config", str(CLUSTER_CONFIG), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("9000", "9001"))
    assert network_policy.main(["--config", str(CLUSTER_CONFIG), "--out", str(out), "--check"]) == 1


def test_policy_selects_the_configured_model_and_allows_only_its_servers(tmp_path: Path) -> None:
    config = parse_config(
        _cluster(model_name="fraud", egress=["s3.eu-west-1.amazonaws.com:443", "10.1.2.3:9000", "vault:8200"]),
        tmp_path,
    )
    policy = network_policy.render_network_policy(config)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"serving.kserve.io/inferenceservice": "fraud"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, *servers = spec["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    by_port = {rule["ports"][0]["port"]: rule["to"][0] for rule in servers}
    # infra.tracking_uri and feast.redis_connection_string of the cluster config, both in ctpipe-system.
    namespace = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ctpipe-system"}}}
    assert by_port[5000] == namespace and by_port[6379] == namespace
    assert by_port[443] == {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(network_policy.PRIVATE_RANGES)}}
    assert by_port[9000] == {"ipBlock": {"cidr": "10.1.2.3/32"}}
    assert by_port[8200] == {"podSelector": {}}  # a bare service name: this namespace
    assert len(servers) == 5 and all(rule["ports"][0]["protocol"] == "TCP" for rule in servers)


def test_an_https_tracking_server_outside_the_cluster_gets_port_443(tmp_path: Path) -> None:
    raw = _cluster(egress=[])
    raw["infra"]["tracking_uri"] = "https://mlflow.example.com"
    rules = network_policy.render_network_policy(parse_config(raw, tmp_path))["spec"]["egress"]
    assert [(r["ports"][0]["port"], next(iter(r["to"][0]))) for r in rules] == [
        (53, "namespaceSelector"),
        (443, "ipBlock"),
        (6379, "namespaceSelector"),
    ]


@pytest.mark.parametrize("bad", ["minio", "minio:0", "minio:http", "http://minio:9000", ":9000"])
def test_egress_entries_must_be_host_and_port(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_cluster(egress=["ok.ns.svc:1", bad]), tmp_path, "cluster.yaml")
    message = str(caught.value)
    assert "serving.egress" in message and "egress[1]" in message and repr(bad) in message and "host:port" in message
