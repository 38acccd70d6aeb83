"""Build the ctpipe container images: the lock files, the wheelhouse and ``docker build``.

The image tags come from one place, the configuration's ``infra.images`` (whose defaults are
``ctpipe/<kind>:<package version>``), and the compiled pipelines name exactly the same
``infra.images.components``, so the YAML and the image never drift apart.

Builds never reach a package index: the host downloads every pinned file once into a
*wheelhouse* (``wheelhouse``), and the Dockerfile installs from it with ``--no-index`` and
``--require-hashes``: each lock line carries the SHA-256 of every file the index publishes for that
version (wheels for CPython 3.11 on Linux, and the sdist), so a wheel that differs from what the
index served when the lock was made fails the build. That is also how an image is built for an
air-gapped cluster: carry the wheelhouse across. The
components image also gets Spark's s3a jars (``hadoop-aws`` and the AWS SDK bundle, pinned with
their checksums in :mod:`components.common.spark_s3`) the same way: the host keeps them in a
cache (``jars``, ``CTPIPE_JARS_CACHE``), the build context carries them with a ``SHA256SUMS``
file, and the Dockerfile checks them against it before copying them into pyspark's ``jars/``.

``python -m pipelines.images --help`` lists the steps (``make images`` runs them all)::

    python -m pipelines.images lock                      # containers/*.lock from the virtualenv (+ hashes)
    python -m pipelines.images wheelhouse out/wheelhouse # pip download every locked pin, hashes checked
    python -m pipelines.images jars                      # the s3a jars into their cache, verified
    python -m pipelines.images build --wheelhouse out/wheelhouse [--base-image IMG] [--ca-bundle PEM]
    python -m pipelines.images tags                      # what build tags, as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Literal

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from components.common import spark_s3
from components.common.errors import ConfigError
from pipelines.config import DEFAULT_CONFIG, CtpipeConfig, load_config, package_version

Kind = Literal["components", "serving"]
KINDS: tuple[Kind, ...] = ("components", "serving")
REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_DIR = REPO_ROOT / "containers"
DOCKERFILE = CONTAINERS_DIR / "Dockerfile"
LOCK_FILES: dict[Kind, Path] = {
    "components": CONTAINERS_DIR / "components.lock",
    "serving": CONTAINERS_DIR / "serving.lock",
}
# What the serving image needs besides ctpipe's own code: the predictor imports kserve, MLflow
# (sklearn flavour) and the common helpers; no Spark, Great Expectations or kfp. s3fs: the
# inference log may live in an object store (components/common/storage.py). Feast: requests that
# carry entity ids read their features from the online store; pyproject's `feast[redis]` brings
# redis and hiredis with it (redis itself is no direct dependency, so it cannot be a root here).
# boto3: Feast reads an s3:// registry (feast.root) with it, not with s3fs. onnxruntime: the
# fast path of versions compiled to ONNX; pysimdjson: the request body reader.
SERVING_ROOTS = (
    "onnxruntime",
    "pysimdjson",
    "kserve",
    "mlflow",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "requests",
    "matplotlib",
    "scipy",
    "s3fs",
    "feast",
    "boto3",
)
# The installer and the build backend: the image builds ctpipe itself and the packages that publish no
# wheel with setuptools and wheel, and pip is locked too, so that the image's SBOM lists everything in its venv.
BUILD_REQUIREMENTS = ("pip", "setuptools", "wheel")
# What the build context holds besides the wheelhouse (kept small: it is sent to the daemon).
CONTEXT_ITEMS = ("pyproject.toml", "README.md", "components", "pipelines", "serving", "containers")
WHEELHOUSE_MARKER = ".ctpipe-wheelhouse"
# The oldest interpreter the images may run (Debian bookworm's python3.11); markers are checked for it too.
IMAGE_PYTHON_OLDEST = "3.11.0"
_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)\s*$")
_HASH_OPTION = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")
# Where `lock` asks for the files of each pin (PEP 691 JSON): pip's own setting, else PyPI.
DEFAULT_INDEX = "https://pypi.org/simple"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[Requirement]:
    """The runtime dependencies declared in ``pyproject.toml``."""
    data = tomllib.loads(pyproject.read_text())
    return [Requirement(text) for text in data["project"]["dependencies"]]


def _closure(roots: Iterable[Requirement]) -> dict[str, str]:
    """Every distribution ``roots`` pull in, with the version installed in this environment.

    Markers are evaluated for this interpreter and for the oldest Python 3.11 an image may have
    (Debian's is 3.11.2), so a dependency only older interpreters need is locked too.
    """
    here = {str(key): str(value) for key, value in default_environment().items()}
    oldest = {**here, "python_full_version": IMAGE_PYTHON_OLDEST, "python_version": "3.11"}
    pins: dict[str, str] = {}
    todo: list[Requirement] = list(roots)
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (_canonical(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"{requirement.name} is required (by {requirement}) but not installed in {sys.prefix}",
                hint="Install the project first (make installs .venv), then run the lock step again; a "
                "dependency only an older Python needs must be listed in pyproject.toml to be installed here.",
            ) from None
        pins[_canonical(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None:
                todo.append(child)
                continue
            for extra, environment in itertools.product(("", *requirement.extras), (here, oldest)):
                if child.marker.evaluate({**environment, "extra": extra}):
                    todo.append(child)
                    break
    return pins


def compute_locks() -> dict[Kind, dict[str, str]]:
    """The exact pins of both images, taken from the environment the tests run in."""
    project = project_requirements()
    by_name = {_canonical(r.name): r for r in project}
    missing = [name for name in SERVING_ROOTS if _canonical(name) not in by_name]
    if missing:
        raise ConfigError(f"SERVING_ROOTS names {missing}, which are not dependencies in pyproject.toml")
    build = [Requirement(name) for name in BUILD_REQUIREMENTS]
    return {
        "components": _closure([*project, *build]),
        "serving": _closure([*(by_name[_canonical(n)] for n in SERVING_ROOTS), *build]),
    }


def _fits_image(tag: Tag) -> bool:
    """Whether a wheel tag can install on the images' CPython 3.11 on Linux (any architecture)."""
    platform_ok = tag.platform == "any" or tag.platform.startswith(("manylinux", "linux"))
    if not platform_ok:
        return False
    if tag.abi == "none":
        return tag.interpreter in ("py3", "py311", "cp311")
    if tag.abi == "cp311":
        return tag.interpreter == "cp311"
    if tag.abi == "abi3":  # the stable ABI of CPython 3.X works on every later 3.Y
        match = re.fullmatch(r"cp3(\d+)", tag.interpreter)
        return match is not None and int(match.group(1)) <= 11
    return False


def release_hashes(name: str, version: str, files: list[dict[str, object]]) -> list[str]:
    """The SHA-256 of every file of ``name==version`` an image may install: its Linux CPython 3.11 wheels and sdist.

    Args:
        name: The distribution, as locked.
        version: The locked version.
        files: The ``files`` of the index's PEP 691 JSON page for ``name``.

    Raises:
        ConfigError: The index lists no usable file of that version, or a file without a SHA-256.
    """
    wanted = Version(version)
    hashes: set[str] = set()
    for entry in files:
        filename = str(entry["filename"])
        try:
            if filename.endswith(".whl"):
                _, found, _, tags = parse_wheel_filename(filename)
                usable = any(_fits_image(tag) for tag in tags)
            else:
                _, found = parse_sdist_filename(filename)
                usable = True
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue  # eggs, .exe installers and names older tools wrote: never what pip installs here
        if found != wanted or not usable:
            continue
        digests = entry.get("hashes")
        sha256 = digests.get("sha256") if isinstance(digests, dict) else None
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ConfigError(f"the index lists {filename} of {name}=={version} without a sha256 hash")
        hashes.add(sha256)
    if not hashes:
        raise ConfigError(
            f"the index has no file of {name}=={version} for CPython 3.11 on Linux",
            hint="Is the version yanked or the index a partial mirror? Set PIP_INDEX_URL to one that has it.",
        )
    return sorted(hashes)


def _index_files(index: str, name: str) -> list[dict[str, object]]:
    request = urllib.request.Request(
        f"{index.rstrip('/')}/{_canonical(name)}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            page = json.load(response)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the files of {name} from {index} (PEP 691 JSON): {exc}") from None
    files = page.get("files") if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise ConfigError(f"{index}: the page of {name} has no 'files' list; the lock step needs a PEP 691 index")
    return files


def lock_hashes(pins: dict[str, str], index: str | None = None) -> dict[str, list[str]]:
    """The hashes of every pin, read from the package index (``PIP_INDEX_URL``, else PyPI).

    Raises:
        ConfigError: The index cannot be read or has no usable file of a pin.
    """
    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    with ThreadPoolExecutor(max_workers=16) as pool:  # ~180 small pages: a few seconds instead of a minute
        pages = dict(zip(pins, pool.map(lambda name: _index_files(index, name), pins), strict=True))
    return {name: release_hashes(name, version, pages[name]) for name, version in pins.items()}


def render_lock(kind: Kind, pins: dict[str, str], hashes: dict[str, list[str]]) -> str:
    """A lock file's text: a header, then per pin ``name==version`` with its ``--hash`` options, sorted."""
    header = [
        f"# Pins of the {kind} image: generated by `python -m pipelines.images lock` from the environment",
        "# the tests run in (the closure of pyproject.toml's dependencies) and the package index's hashes of",
        "# each version's files. The image build installs with --require-hashes. Do not edit by hand.",
    ]
    entries = [
        " \\\n".join([f"{name}=={version}", *(f"    --hash=sha256:{digest}" for digest in hashes[name])])
        for name, version in sorted(pins.items())
    ]
    return "\n".join([*header, *entries]) + "\n"


def read_lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Every pin of a lock file with its hashes: name -> (version, sha256 digests).

    Raises:
        ConfigError: A line is not ``name==version`` or ``--hash=sha256:<64 hex>``, or a pin has no hash.
    """
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip().removesuffix("\\").strip()
        if not line or line.startswith("#"):
            continue
        option = _HASH_OPTION.match(line)
        if option:
            if current is None:
                raise ConfigError(f"{path}:{number}: a --hash line before any 'name==version' line")
            entries[current][1].append(option.group(1))
            continue
        match = _LOCK_LINE.match(line)
        if not match:
            raise ConfigError(
                f"{path}:{number}: expected 'name==version \\' or '--hash=sha256:<64 hex digits>', found {raw!r}"
            )
        current = _canonical(match.group(1))
        entries[current] = (match.group(2), [])
    unhashed = sorted(name for name, (_, digests) in entries.items() if not digests)
    if unhashed:
        raise ConfigError(
            f"{path}: {len(unhashed)} pin(s) without a --hash: {unhashed[:10]}; the build installs with "
            "--require-hashes",
            hint="Regenerate the locks with: make lock",
        )
    return entries


def read_lock(path: Path) -> dict[str, str]:
    """The pins of a lock file: name -> version (see :func:`read_lock_entries`)."""
    return {name: version for name, (version, _) in read_lock_entries(path).items()}


def write_locks(index: str | None = None) -> dict[Kind, Path]:
    """Write ``containers/<kind>.lock`` for both images, with the index's hashes; returns the paths."""
    locks = compute_locks()
    hashes = lock_hashes(locks["components"], index)  # the serving pins are a subset
    for kind, pins in locks.items():
        tmp = LOCK_FILES[kind].with_suffix(".lock.tmp")
        tmp.write_text(render_lock(kind, pins, hashes))
        tmp.replace(LOCK_FILES[kind])
    return dict(LOCK_FILES)


def lock_key() -> str:
    """Short hash of both lock files: names a wheelhouse built from them."""
    digest = hashlib.sha256()
    for kind in KINDS:
        digest.update(LOCK_FILES[kind].read_bytes())
    return digest.hexdigest()[:16]


def build_wheelhouse(dest: Path, pip: Sequence[str] = (sys.executable, "-m", "pip")) -> Path:
    """Download every locked pin into ``dest``, each file checked against the lock's hashes.

    pip takes a wheel where one fits this machine (the images run the same CPython 3.11 on Linux)
    and the sdist otherwise (pyspark and kfp-server-api publish no wheel); the image build then
    builds those from the checked sdist, so nothing unhashed ever reaches an image. The serving
    lock is a subset of the components lock, so one wheelhouse serves both images.
    Re-running with the same locks is a no-op; the folder is filled beside ``dest`` and renamed,
    so an interrupted run never leaves a half wheelhouse behind.

    Raises:
        ConfigError: pip failed (its output is in the message).
    """
    key = lock_key()
    marker = dest / WHEELHOUSE_MARKER
    if marker.is_file() and marker.read_text().strip() == key:
        return dest
    components, serving = (read_lock(LOCK_FILES[k]) for k in KINDS)
    stray = {n: v for n, v in serving.items() if components.get(n) != v}
    if stray:
        raise ConfigError(f"{LOCK_FILES['serving']} pins {stray} differently from {LOCK_FILES['components']}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result = subprocess.run(
        [
            *pip,
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--dest",
            str(tmp),
            "--requirement",
            str(LOCK_FILES["components"]),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ConfigError(f"pip download into {dest} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    (tmp / WHEELHOUSE_MARKER).write_text(key + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def image_tags(config: CtpipeConfig) -> dict[Kind, str]:
    """The tag each image is built as: the configuration's ``infra.images`` (the one place)."""
    return {"components": config.infra.images.components, "serving": config.infra.images.serving}


def git_commit() -> str:
    """The checkout's commit (the same short form the pipelines record as code lineage)."""
    from pipelines.runner import git_commit as lineage_commit

    return lineage_commit(REPO_ROOT)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def assemble_context(dest: Path, wheelhouse: Path, jars: Sequence[Path] = ()) -> Path:
    """A build context with only what the Dockerfile needs: the sources, the wheelhouse and the jars.

    The wheels and jars are hard-linked where possible, so a big wheelhouse (or the 700 MB SDK
    bundle) costs no copy.

    Args:
        dest: The folder to (re)create.
        wheelhouse: A folder made by :func:`build_wheelhouse`.
        jars: The s3a jars (:func:`components.common.spark_s3.ensure_jars`), for the components image; they
            go to ``jars/`` with a ``SHA256SUMS`` of the pins, which the build checks them against.

    Raises:
        ConfigError: ``wheelhouse`` is not a wheelhouse, or ``jars`` are not exactly the pinned jars.
    """
    if not (wheelhouse / WHEELHOUSE_MARKER).is_file():
        raise ConfigError(
            f"{wheelhouse} is not a wheelhouse (no {WHEELHOUSE_MARKER})",
            hint="Create it with: python -m pipelines.images wheelhouse " + str(wheelhouse),
        )
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
    for item in CONTEXT_ITEMS:
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=ignore)
        else:
            shutil.copy2(source, dest / item)
    (dest / "wheelhouse").mkdir()
    for file in wheelhouse.iterdir():  # wheels, and the sdists of packages that publish none
        if file.is_file() and file.name != WHEELHOUSE_MARKER:
            _link_or_copy(file, dest / "wheelhouse" / file.name)
    if jars:
        expected = sorted(jar.filename for jar in spark_s3.JARS)
        if sorted(path.name for path in jars) != expected:
            raise ConfigError(f"jars for the build context: expected {expected}, found {sorted(p.name for p in jars)}")
        (dest / "jars").mkdir()
        for path in jars:
            _link_or_copy(path, dest / "jars" / path.name)
        (dest / "jars" / spark_s3.CHECKSUMS_FILE).write_text(spark_s3.checksums_text())
    return dest


def build_command(
    kind: Kind,
    tag: str,
    context: Path,
    docker: str = "docker",
    base_image: str | None = None,
    ca_bundle: Path | None = None,
    network: str | None = None,
    commit: str | None = None,
    target: str | None = None,
    lock: str | None = None,
) -> list[str]:
    """The ``docker build`` command line for one image (BuildKit; run with ``DOCKER_BUILDKIT=1``).

    ``target`` (default ``kind``) and ``lock`` (default the kind's, a file name in ``containers/`` of
    the context) build another stage or from another lock, e.g. only the ``deps`` stage.
    """
    command = [
        docker,
        "build",
        "--file",
        str(context / "containers" / "Dockerfile"),
        "--target",
        target or kind,
        "--tag",
        tag,
        "--build-arg",
        f"LOCK={lock or LOCK_FILES[kind].name}",
        "--build-arg",
        f"VERSION={package_version()}",
        "--build-arg",
        f"GIT_COMMIT={commit or git_commit()}",
    ]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if ca_bundle:  # a secret: mounted for the RUN steps only, never written into a layer
        command += ["--secret", f"id=ca,src={ca_bundle}"]
    if network:
        command += ["--network", network]
    return [*command, str(context)]


def build_images(
    config: CtpipeConfig,
    wheelhouse: Path,
    kinds: Sequence[Kind] = KINDS,
    docker: str = "docker",
    base_image: str | None = None,
    ca_bundle: Path | None = None,
    network: str | None = None,
    context: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    commit: str | None = None,
    jars: Sequence[Path] | None = None,
) -> dict[Kind, str]:
    """Build the images and tag them as ``infra.images`` says; returns kind -> tag.

    ``jars`` are the s3a jars for the components image; by default they come from their cache
    (downloaded and verified the first time, like the wheelhouse: the build itself needs no network).

    Raises:
        ConfigError: ``docker build`` failed (the message has the end of its output), or the jars cannot be had.
    """
    tags = image_tags(config)
    if jars is None:
        jars = spark_s3.ensure_jars() if "components" in kinds else ()
    context = assemble_context(context or REPO_ROOT / "out" / "images" / "context", wheelhouse, jars)
    run_env = {**os.environ, **(env or {}), "DOCKER_BUILDKIT": "1"}
    commit = commit or git_commit()
    for kind in kinds:
        command = build_command(kind, tags[kind], context, docker, base_image, ca_bundle, network, commit)
        result = subprocess.run(command, env=run_env, capture_output=True, text=True)
        if log is not None:
            with log.open("a") as handle:
                handle.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise ConfigError(
                f"docker build of the {kind} image ({tags[kind]}) failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
    return {kind: tags[kind] for kind in kinds}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``python -m pipelines.images``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.images",
        description="Build the ctpipe images offline from a wheelhouse; tags come from infra.images.",
    )
    parser.add_argument("--config", default=None, help=f"Configuration file (default: {DEFAULT_CONFIG}).")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("tags", help="Print the tags `build` uses, as JSON.")
    lock = steps.add_parser(
        "lock",
        help="Write containers/components.lock and serving.lock from this environment, with the index's hashes.",
    )
    lock.add_argument("--index", help=f"PEP 691 package index (default: PIP_INDEX_URL, else {DEFAULT_INDEX}).")
    wheels = steps.add_parser(
        "wheelhouse", help="pip download every locked pin, hashes checked, into a folder (needs the index)."
    )
    wheels.add_argument("dest", type=Path)
    steps.add_parser(
        "jars",
        help=f"Download the s3a jars into their cache ({spark_s3.JARS_CACHE_ENV} or ~/.cache/ctpipe/jars) and verify "
        f"them (needs Maven Central or a mirror in {spark_s3.MAVEN_REPO_ENV}).",
    )
    build = steps.add_parser("build", help="docker build both images (no network needed in the build).")
    build.add_argument("--wheelhouse", type=Path, required=True, help="Folder made by the wheelhouse step.")
    build.add_argument("--kind", choices=KINDS, action="append", help="Only this image (repeatable).")
    build.add_argument("--base-image", help="BASE_IMAGE build argument (default: the Dockerfile's).")
    build.add_argument("--ca-bundle", type=Path, help="Extra CA bundle (PEM), passed as the build secret 'ca'.")
    build.add_argument("--network", help="docker build --network (e.g. none for a proven offline build).")
    build.add_argument("--docker", default="docker", help="The docker CLI to run.")
    args = parser.parse_args(argv)
    try:
        if args.step == "lock":
            for path in write_locks(args.index).values():
                print(path)
            return 0
        if args.step == "wheelhouse":
            print(build_wheelhouse(args.dest))
            return 0
        if args.step == "jars":
            for path in spark_s3.ensure_jars():
                print(path)
            return 0
        config = load_config(args.config)
        if args.step == "tags":
            print(json.dumps(image_tags(config), indent=2))
            return 0
        built = build_images(
            config,
            args.wheelhouse,
            kinds=args.kind or KINDS,
            docker=args.docker,
            base_image=args.base_image,
            ca_bundle=args.ca_bundle,
            network=args.network,
        )
        print(json.dumps(built, indent=2))
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
