"""Release the images by digest: push them to a registry, pin an overlay to the digests, write their SBOMs.

A tag can be moved; a digest cannot. A release therefore names each image by the digest its
registry returned when it was pushed, everywhere an image is named:

- the overlay's containers (the InferenceService, the continuous-training CronJob and the
  batch-scoring ScheduledSparkApplication), through kustomize's ``images`` transformer;
- the pipelines that CronJob compiles and the InferenceService that deploy writes, through
  ``CTPIPE_IMAGE_COMPONENTS`` and ``CTPIPE_IMAGE_SERVING`` in the CronJob (the defaults of
  ``infra.images``, :mod:`pipelines.config`).

``python -m pipelines.release --help`` lists the steps (after ``make images``)::

    python -m pipelines.release push --registry registry.example.com:5000   # -> out/release/images.json
    python -m pipelines.release pin --overlay manifests/overlays/production # -> out/release/production/
    python -m pipelines.release sbom                                        # -> out/release/<kind>.cdx.json

``kubectl apply -k out/release/production`` then installs exactly the pushed images. The SBOM of
each image is CycloneDX JSON made from its lock file (which the build installs with
``--require-hashes``, so the lock is what the image holds), plus the s3a jars of the components image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.common import spark_s3
from components.common.errors import ConfigError
from components.common.io import write_text
from pipelines.config import IMAGE_ENV, load_config, package_version
from pipelines.images import KINDS, LOCK_FILES, REPO_ROOT, Kind, image_tags

RELEASE_DIR = REPO_ROOT / "out" / "release"
RELEASE_FILE = "images.json"
CLUSTER_CONFIG = REPO_ROOT / "manifests" / "base" / "ctpipe.yaml"
# What manifests/base names: the CronJob that compiles the pipelines (and its container), whose
# environment gets the digests, and the custom resource field kustomize does not know as an image.
CRONJOB = ("ctpipe-continuous-training", "submit")
SPARK_IMAGE_FIELD = {"kind": "ScheduledSparkApplication", "path": "spec/template/image"}
_DIGEST_REF = re.compile(r"^(?P<repository>[a-z0-9][a-z0-9._:/-]*)@(?P<digest>sha256:[0-9a-f]{64})$")


def repository(reference: str) -> str:
    """An image reference without tag or digest: ``host:5000/ctpipe/serving:0.1.0`` -> ``host:5000/ctpipe/serving``."""
    name = reference.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _docker(docker: str, env: Mapping[str, str] | None, *args: str) -> str:
    result = subprocess.run([docker, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise ConfigError(f"{docker} {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def push_images(
    tags: Mapping[str, str], registry: str, docker: str = "docker", env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Push each built image to ``registry``; returns the same keys -> ``registry/repository@sha256:...``.

    The digest is the one the registry stored (docker records it in ``RepoDigests`` on push), not
    one computed here.

    Raises:
        ConfigError: A push failed, or docker reports no digest from ``registry`` for the image.
    """
    pushed: dict[str, str] = {}
    for kind, tag in tags.items():
        remote_repository = f"{registry.rstrip('/')}/{repository(tag)}"
        remote = f"{remote_repository}:{tag.split('@', 1)[0].rpartition(':')[2]}"
        _docker(docker, env, "tag", tag, remote)
        _docker(docker, env, "push", "--quiet", remote)
        digests = json.loads(_docker(docker, env, "image", "inspect", "--format", "{{json .RepoDigests}}", remote))
        found = [d for d in digests or [] if d.startswith(f"{remote_repository}@sha256:")]
        if not found:
            raise ConfigError(f"{remote}: pushed, but docker lists no digest from {registry} (found {digests})")
        pushed[kind] = found[0]
    return pushed


def write_release(digests: Mapping[str, str], path: Path) -> Path:
    """Write the pushed images (kind -> reference by digest) as JSON, atomically."""
    write_text(path, json.dumps({"images": dict(digests)}, indent=2) + "\n")
    return path


def read_release(path: Path) -> dict[Kind, str]:
    """The images of a release file: every kind, each ``repository@sha256:<64 hex>``.

    Raises:
        ConfigError: The file is missing or not JSON, a kind is missing, or a reference is not by digest.
    """
    try:
        images = json.loads(path.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a release file ({exc})", hint="Write it with: python -m pipelines.release push"
        ) from None
    out: dict[Kind, str] = {}
    for kind in KINDS:
        reference = images.get(kind) if isinstance(images, dict) else None
        if not isinstance(reference, str) or not _DIGEST_REF.match(reference):
            raise ConfigError(
                f"{path}: images.{kind}: expected 'repository@sha256:<64 hex digits>', found {reference!r}"
            )
        out[kind] = reference
    return out


def pin_overlay(overlay: Path, digests: Mapping[Kind, str], out: Path, tags: Mapping[Kind, str]) -> Path:
    """Write an overlay over ``overlay`` that names every image by digest; returns its folder.

    Args:
        overlay: The overlay to release (e.g. ``manifests/overlays/production``); it is not changed.
        digests: kind -> ``repository@sha256:...`` (:func:`read_release`).
        out: The folder of the new overlay (``kubectl apply -k OUT``).
        tags: kind -> the tag the base manifests name (``infra.images`` of the cluster configuration).
    """
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(
            f"{overlay}: no kustomization.yaml; expected an overlay such as manifests/overlays/production"
        )
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for kind in KINDS:
        match = _DIGEST_REF.match(digests[kind])
        if match is None:
            raise ConfigError(f"images.{kind}: expected 'repository@sha256:<64 hex digits>', found {digests[kind]!r}")
        images.append({"name": repository(tags[kind]), "newName": match["repository"], "digest": match["digest"]})
    name, container = CRONJOB
    patch = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": container,
                                    "env": [{"name": IMAGE_ENV[kind], "value": digests[kind]} for kind in KINDS],
                                }
                            ]
                        }
                    }
                }
            }
        },
    }
    kustomization = {
        "resources": [os.path.relpath(overlay.resolve(), out.resolve())],
        "configurations": ["image-fields.yaml"],
        "images": images,
        "patchesStrategicMerge": ["cronjob-images.yaml"],
    }
    header = (
        f"# Generated by python -m pipelines.release pin from {overlay.name}: every image by digest. Do not edit.\n"
    )
    write_text(out / "image-fields.yaml", header + yaml.safe_dump({"images": [SPARK_IMAGE_FIELD]}, sort_keys=False))
    write_text(out / "cronjob-images.yaml", header + yaml.safe_dump(patch, sort_keys=False))
    write_text(out / "kustomization.yaml", header + yaml.safe_dump(kustomization, sort_keys=False))
    return out


def _jar_components() -> list[dict[str, Any]]:
    components = []
    for jar in spark_s3.JARS:
        group, artifact, version = jar.group, jar.artifact, jar.version
        components.append(
            {
                "type": "library",
                "bom-ref": f"pkg:maven/{group}/{artifact}@{version}",
                "group": group,
                "name": artifact,
                "version": version,
                "purl": f"pkg:maven/{group}/{artifact}@{version}",
                "hashes": [{"alg": "SHA-256", "content": jar.sha256}],
            }
        )
    return components


def write_sbom(kind: Kind, path: Path, reference: str | None = None) -> Path:
    """Write the CycloneDX JSON SBOM of an image: the Python packages of its lock, and the s3a jars.

    Made by ``cyclonedx-py requirements`` from the lock, whose hashes it keeps. The metadata names
    the image (``reference``, by digest once pushed) and ctpipe's version.

    Raises:
        ConfigError: cyclonedx-py is not installed or failed.
    """
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "sbom.json"
        command = [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "requirements",
            str(LOCK_FILES[kind]),
            "--pyproject",
            str(REPO_ROOT / "pyproject.toml"),
            "--of",
            "JSON",
            "--output-reproducible",
            "-o",
            str(raw),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(
                f"cyclonedx-py failed for {LOCK_FILES[kind].name} (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        sbom = json.loads(raw.read_text())
    if kind == "components":
        sbom["components"] = [*sbom.get("components", []), *_jar_components()]
    properties = sbom.setdefault("metadata", {}).setdefault("properties", [])
    properties += [
        {"name": "ctpipe:image", "value": reference or image_tags(load_config(CLUSTER_CONFIG))[kind]},
        {"name": "ctpipe:version", "value": package_version()},
        {"name": "ctpipe:lock", "value": f"containers/{LOCK_FILES[kind].name}"},
    ]
    write_text(path, json.dumps(sbom, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``python -m pipelines.release``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.release",
        description="Push the images built by `make images`, pin an overlay to their digests, write their SBOMs.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=CLUSTER_CONFIG,
        help="Cluster configuration (default: manifests/base/ctpipe.yaml).",
    )
    parser.add_argument(
        "--release",
        type=Path,
        default=RELEASE_DIR / RELEASE_FILE,
        help="The release file (default: out/release/images.json).",
    )
    steps = parser.add_subparsers(dest="step", required=True)
    push = steps.add_parser("push", help="docker push both images; writes the digests the registry returned.")
    push.add_argument("--registry", required=True, help="host[:port][/path] to push to.")
    push.add_argument("--docker", default="docker", help="The docker CLI to run.")
    pin = steps.add_parser("pin", help="Write an overlay over OVERLAY naming every image by its released digest.")
    pin.add_argument("--overlay", type=Path, required=True, help="e.g. manifests/overlays/production")
    pin.add_argument("--out", type=Path, help="The new overlay's folder (default: out/release/<overlay name>).")
    sbom = steps.add_parser("sbom", help="Write out/release/<kind>.cdx.json (CycloneDX) for both images.")
    sbom.add_argument("--out", type=Path, default=RELEASE_DIR, help="Folder (default: out/release).")
    args = parser.parse_args(argv)
    try:
        tags = image_tags(load_config(args.config))
        if args.step == "push":
            print(write_release(push_images(dict(tags.items()), args.registry, args.docker), args.release))
        elif args.step == "pin":
            out = args.out or RELEASE_DIR / args.overlay.resolve().name
            print(pin_overlay(args.overlay, read_release(args.release), out, tags))
        else:
            released = read_release(args.release) if args.release.is_file() else {}
            for kind in KINDS:
                print(write_sbom(kind, args.out / f"{kind}.cdx.json", released.get(kind)))
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
