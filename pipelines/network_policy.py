"""The predictor's NetworkPolicy, rendered from the configuration: who may reach it, and what it may reach.

Ingress: only the serving path (Knative's activator and the mesh gateway, by namespace) and pods
labelled ``ctpipe.io/predict-client: "true"``, on the predictor's port and Knative's queue-proxy.

Egress: DNS, and exactly the servers the configuration says the predictor talks to:

- the MLflow tracking server (``infra.tracking_uri``), which it polls for the alias it follows;
- Feast's Redis (``feast.redis_connection_string``) when the online store is Redis (requests by entity id);
- every ``host:port`` of ``serving.egress`` (the object store of the model artifacts and the inference log).

A NetworkPolicy selects pods, not host names, so each destination becomes a peer by its form:
``name.namespace.svc[.cluster.local]`` -> that namespace; a bare ``name`` -> this namespace; an IPv4
address -> that address; any other host name (outside the cluster) -> every address except the
private ranges, on that port only.

``python -m pipelines.network_policy --config manifests/base/ctpipe.yaml`` prints it;
``manifests/base/networkpolicy.yaml`` is that output, and a test fails when it differs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from pipelines.config import CtpipeConfig, load_config
from pipelines.generated_manifest import dump_yaml, manifest_arguments, run

NAME = "ctpipe-predictor"
# The pods of an InferenceService carry its name under this label (KServe sets it on every revision).
ISVC_LABEL = "serving.kserve.io/inferenceservice"
CLIENT_LABEL = "ctpipe.io/predict-client"
SERVING_NAMESPACES = ("knative-serving", "istio-system")
PREDICTOR_PORT, QUEUE_PROXY_PORT = 8080, 8012
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
REGENERATE = (
    "python -m pipelines.network_policy --config manifests/base/ctpipe.yaml --out manifests/base/networkpolicy.yaml"
)
HEADER = (
    "# Generated from manifests/base/ctpipe.yaml by pipelines/network_policy.py; do not edit. Regenerate with\n"
    f"#   {REGENERATE}\n"
    "# Only the serving path and labelled clients reach the predictor; it reaches only DNS, the tracking\n"
    "# server, Feast's Redis and serving.egress (docs/security.md, 'Network').\n"
)


def destinations(config: CtpipeConfig) -> list[tuple[str, int]]:
    """``(host, port)`` of every server the predictor connects to, in the configuration's order, without repeats."""
    found: list[tuple[str, int]] = []
    tracking = config.infra.tracking_uri
    if tracking and urlsplit(tracking).scheme in ("http", "https"):
        parts = urlsplit(tracking)
        if parts.hostname:
            found.append((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    if config.feast.online_store == "redis":
        host, _, port = config.feast.redis_connection_string.split(",", 1)[0].rpartition(":")
        found.append((host, int(port)))
    for destination in config.serving.egress:
        host, _, port = destination.rpartition(":")
        found.append((host, int(port)))
    return list(dict.fromkeys(found))


def peer(host: str) -> dict[str, Any]:
    """The NetworkPolicy peer that stands for ``host`` (see the module's docstring)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return {"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}
    labels = host.split(".")
    if len(labels) == 1:
        return {"podSelector": {}}
    if len(labels) >= 3 and labels[2] == "svc":
        return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: labels[1]}}}
    return {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}


def render_network_policy(config: CtpipeConfig) -> dict[str, Any]:
    """The predictor's NetworkPolicy for ``config`` (its namespace is the overlay's, as for all of manifests/base)."""
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    egress = [dns]
    for host, port in destinations(config):
        egress.append({"to": [peer(host)], "ports": [{"protocol": "TCP", "port": port}]})
    ingress_from: list[dict[str, Any]] = [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}} for namespace in SERVING_NAMESPACES
    ]
    ingress_from.append({"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NAME},
        "spec": {
            "podSelector": {"matchLabels": {ISVC_LABEL: config.serving.model_name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": ingress_from,
                    "ports": [
                        {"protocol": "TCP", "port": PREDICTOR_PORT},  # the predictor (raw deployment mode)
                        {"protocol": "TCP", "port": QUEUE_PROXY_PORT},  # Knative's queue-proxy (serverless mode)
                    ],
                }
            ],
            "egress": egress,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write, or check) the rendered NetworkPolicy."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.network_policy",
        description="Render the predictor's NetworkPolicy of a cluster configuration (YAML on stdout, or --out FILE).",
    )
    manifest_arguments(parser)
    return run(
        parser, argv, lambda args: dump_yaml(render_network_policy(load_config(args.config)), HEADER), REGENERATE
    )


if __name__ == "__main__":
    sys.exit(main())
