"""Writing an InferenceService back without losing what others put in it.

ctpipe renders a whole InferenceService (:mod:`components.common.kserve.manifests`), but on a
cluster the object is shared: an overlay adds a service account, a platform team adds
``envFrom`` entries, resources or annotations, an admission webhook injects env vars into the
predictor container. KServe's CRD declares the predictor's ``containers`` list atomic, so a
merge patch or a server-side apply of ctpipe's container would replace the whole container and
drop what others added. Every write is therefore a read-modify-write:

1. read the object (and its ``resourceVersion``);
2. :func:`merge` ctpipe's rendering into it, changing only the fields ctpipe owns
   (:func:`owned_paths`) and keeping every other field as found;
3. replace it with the ``resourceVersion`` as precondition; a 409 Conflict (someone wrote in
   between) starts again from 1.

What ctpipe's fields held after its last write (as the API server stored them, defaults
included) is kept in the annotation ``ctpipe.io/owned``. If one of them differs from that
record when ctpipe reads the object again, someone else changed a field ctpipe owns:
:func:`foreign_changes` names the field and, from ``managedFields``, the field manager that
wrote it, and the write stops unless it is forced.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

from components.common.errors import DeployError

OWNED_ANNOTATION = "ctpipe.io/owned"
FIELD_MANAGER = "ctpipe"
CONTAINER_NAME = "kserve-container"
# The container fields ctpipe renders and owns; every other field of the container (resources,
# volumeMounts, securityContext, ...) is ctpipe's only when it creates the container.
_OWNED_CONTAINER_FIELDS = ("image", "command", "args", "ports", "readinessProbe", "livenessProbe")
_OWNED_ANNOTATION_PREFIXES = ("ctpipe.io/", "serving.kserve.io/deploymentMode")

Path = tuple[str, ...]
"""A field as a path of keys; ``[name=X]`` selects a list entry by its name."""


class ForeignChange(BaseModel):
    """A field ctpipe owns that someone else changed since ctpipe last wrote it."""

    field: str
    manager: str
    written: Any
    found: Any

    def describe(self) -> str:
        """One line for an error message."""
        return (
            f"{self.field} was changed by field manager {self.manager!r} "
            f"(ctpipe wrote {json.dumps(self.written)}, found {json.dumps(self.found)})"
        )


def _entry(items: list[Any], name: str) -> dict[str, Any] | None:
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    return None


def value_at(obj: Any, path: Path) -> Any:
    """The value at ``path`` in ``obj``, or None when any step is missing."""
    for step in path:
        if step.startswith("[name=") and step.endswith("]"):
            obj = _entry(obj if isinstance(obj, list) else [], step[6:-1])
        elif isinstance(obj, dict):
            obj = obj.get(step)
        else:
            return None
        if obj is None:
            return None
    return obj


def _field(path: Path) -> str:
    return ".".join(path).replace(".[", "[")


def _predictor_paths(prefix: Path, predictor: dict[str, Any]) -> list[Path]:
    paths: list[Path] = [(*prefix, "canaryTrafficPercent")]
    container = _entry(predictor.get("containers") or [], CONTAINER_NAME) or {}
    base = (*prefix, "containers", f"[name={CONTAINER_NAME}]")
    paths += [(*base, key) for key in _OWNED_CONTAINER_FIELDS]
    paths += [(*base, "env", f"[name={item['name']}]") for item in container.get("env") or []]
    return paths


def owned_paths(manifest: dict[str, Any]) -> list[Path]:
    """The fields ctpipe owns, read off ctpipe's own rendering: its annotations, traffic, its container's command."""
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    paths: list[Path] = [
        ("metadata", "annotations", key)
        for key in annotations
        if key.startswith(_OWNED_ANNOTATION_PREFIXES) and key != OWNED_ANNOTATION
    ]
    spec = manifest.get("spec") or {}
    paths += _predictor_paths(("spec", "predictor"), spec.get("predictor") or {})
    paths.append(("spec", "canary"))  # present or absent, as a whole: ctpipe's traffic split (Standard mode)
    return paths


def _managers_of(current: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    """(time, manager) of every field manager other than ctpipe whose managed fields cover ``path``'s top."""
    found = []
    for entry in (current.get("metadata") or {}).get("managedFields") or []:
        manager = entry.get("manager") or "?"
        if manager == FIELD_MANAGER:
            continue
        fields = entry.get("fieldsV1") or {}
        # managedFields name a list entry by its key (k:{"name":...}) or, for an atomic list (the
        # predictor's containers), only the list itself: follow the path as deep as it is recorded.
        depth = 0
        for step in path:
            key = f"f:{step}"
            if step.startswith("[name="):
                key = "k:" + json.dumps({"name": step[6:-1]}, separators=(",", ":"))
            if key not in fields:
                break
            fields = fields[key]
            depth += 1
        if depth >= min(3, len(path)):
            found.append((str(entry.get("time") or ""), manager))
    return sorted(found)


def read_record(obj: dict[str, Any]) -> list[tuple[Path, Any]] | None:
    """What ctpipe last wrote to its fields of ``obj`` (its annotation), or None if ctpipe never wrote it."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(OWNED_ANNOTATION)
    if not raw:
        return None
    try:
        return [(tuple(path), value) for path, value in json.loads(raw)]
    except (json.JSONDecodeError, TypeError, ValueError):
        return []  # unreadable: nothing to compare against; the next write records afresh


def record(obj: dict[str, Any], paths: list[Path]) -> str:
    """The ``ctpipe.io/owned`` annotation: each of ctpipe's fields (``paths``) and its value in ``obj``."""
    return json.dumps([[list(path), value_at(obj, path)] for path in paths], separators=(",", ":"))


def foreign_changes(current: dict[str, Any]) -> list[ForeignChange]:
    """Fields ctpipe owns whose value in ``current`` is not what ctpipe last wrote (its annotation says)."""
    written = read_record(current)
    changes = []
    for path, value in written or []:
        found = value_at(current, path)
        if found != value:
            managers = _managers_of(current, path)
            changes.append(
                ForeignChange(
                    field=_field(path), manager=managers[-1][1] if managers else "?", written=value, found=found
                )
            )
    return changes


def _merge_container(current: dict[str, Any], desired: dict[str, Any], owned_env: set[str]) -> dict[str, Any]:
    merged = copy.deepcopy(current)
    for key in _OWNED_CONTAINER_FIELDS:
        if key in desired:
            merged[key] = copy.deepcopy(desired[key])
        else:
            merged.pop(key, None)
    wanted_env = {item["name"]: item for item in desired.get("env") or []}
    env = []
    for item in merged.get("env") or []:
        name = item.get("name")
        if name in wanted_env:
            env.append(copy.deepcopy(wanted_env.pop(name)))
        elif name not in owned_env:  # someone else's variable: kept as it is
            env.append(item)
    env += [copy.deepcopy(item) for item in wanted_env.values()]
    merged["env"] = env
    env_from = list(merged.get("envFrom") or [])
    env_from += [copy.deepcopy(item) for item in desired.get("envFrom") or [] if item not in env_from]
    if env_from:
        merged["envFrom"] = env_from
    for key, value in desired.items():  # what ctpipe renders but does not own: only when missing
        merged.setdefault(key, copy.deepcopy(value))
    return merged


def _merge_predictor(current: dict[str, Any], desired: dict[str, Any], owned_env: set[str]) -> dict[str, Any]:
    merged = copy.deepcopy(current)
    if "canaryTrafficPercent" in desired:
        merged["canaryTrafficPercent"] = desired["canaryTrafficPercent"]
    else:
        merged.pop("canaryTrafficPercent", None)
    (container,) = [c for c in desired.get("containers") or [] if c.get("name") == CONTAINER_NAME]
    containers = list(merged.get("containers") or [])
    for index, existing in enumerate(containers):
        if existing.get("name") == CONTAINER_NAME:
            containers[index] = _merge_container(existing, container, owned_env)
            break
    else:
        containers.append(copy.deepcopy(container))
    merged["containers"] = containers
    for key, value in desired.items():
        merged.setdefault(key, copy.deepcopy(value))
    return merged


def merge(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """The object to write: ``current`` with ctpipe's fields set from ``desired``, everything else kept.

    Args:
        current: The object as read from the API server; None when it does not exist yet.
        desired: ctpipe's rendering (``render_inference_service``).

    Returns:
        The object to create (``desired``) or to replace ``current`` with, carrying the
        ``ctpipe.io/owned`` record of ctpipe's fields and ``current``'s ``resourceVersion``.
    """
    if current is None:
        merged = copy.deepcopy(desired)
    else:
        merged = {key: copy.deepcopy(value) for key, value in current.items() if key != "status"}
        metadata = merged.setdefault("metadata", {})
        metadata.pop("managedFields", None)  # omitted in an update: the server keeps and updates them
        wanted_metadata = desired.get("metadata") or {}
        annotations = {
            key: value
            for key, value in (metadata.get("annotations") or {}).items()
            if not key.startswith(_OWNED_ANNOTATION_PREFIXES)  # ctpipe's own are all rewritten below
        }
        annotations.update(wanted_metadata.get("annotations") or {})
        metadata["annotations"] = annotations
        metadata["labels"] = {**(metadata.get("labels") or {}), **(wanted_metadata.get("labels") or {})}
        # ctpipe's variables of its last write: one ctpipe no longer renders is removed, not kept as foreign.
        owned_env = {path[-1][6:-1] for path, _ in read_record(current) or [] if len(path) > 1 and path[-2] == "env"}
        spec = merged.setdefault("spec", {})
        wanted = desired.get("spec") or {}
        spec["predictor"] = _merge_predictor(spec.get("predictor") or {}, wanted["predictor"], owned_env)
        if wanted.get("canary"):
            # The canary runs like the stable predictor (service account, resources, foreign env).
            spec["canary"] = [
                {
                    **copy.deepcopy(entry),
                    "predictor": _merge_predictor(spec["predictor"], entry["predictor"], owned_env),
                }
                for entry in wanted["canary"]
            ]
        else:
            spec.pop("canary", None)
    # ctpipe's fields are those of its rendering: the env vars others added to the container are not.
    annotations = merged.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[OWNED_ANNOTATION] = record(merged, owned_paths(desired))
    return merged


def check_foreign_changes(current: dict[str, Any] | None, force: bool) -> list[ForeignChange]:
    """Stop (unless ``force``) when someone else changed a field ctpipe owns.

    Returns:
        The changes found (overwritten when ``force``).

    Raises:
        DeployError: There are changes and ``force`` is False; the message names each field and manager.
    """
    if current is None:
        return []
    changes = foreign_changes(current)
    if changes and not force:
        metadata = current.get("metadata") or {}
        name = f"{metadata.get('namespace')}/{metadata.get('name')}"
        raise DeployError(
            f"InferenceService {name}: fields ctpipe owns were changed by someone else since ctpipe wrote them: "
            + "; ".join(change.describe() for change in changes),
            hint="See who and why (kubectl get isvc -o yaml --show-managed-fields); --force overwrites them.",
        )
    return changes
