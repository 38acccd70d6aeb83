"""Shared fixtures: small generated data (``tests.data``), a dataset spec that describes it, and a sqlite MLflow."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.common.process_lifetime import collect_rarely

# A test worker imports what every step imports and keeps trained fixtures alive, so with Python's
# default thresholds the collector walks a heap of millions of objects again and again (17% of the
# in-process unit tests' time). Tests collect rarely, as the task processes and the server do.
collect_rarely()

import pandas as pd  # noqa: E402 (after the collector is set)
import pytest  # noqa: E402

from components.specs import DatasetSpec  # noqa: E402
from tests.data import Drift, Window, churn_spec, write_churn, write_multiclass  # noqa: E402

# Spark workers and kfp.local subprocesses must use this interpreter, not whatever is on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Spark drivers started by the tests (local mode or against a test cluster) bind loopback only.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# pytest-xdist's workers run under execnet, whose __main__ has neither __spec__ nor __file__. pyspark's
# connect package then takes itself for a doctest run and calls sys.exit(0) when Great Expectations
# imports it (only to probe for Spark Connect). A spec named "__main__" tells it otherwise; it is also
# the one main module that multiprocessing's spawn and forkserver children do not try to re-import
# (a made-up __file__ would send them looking for that file).
_MAIN = sys.modules["__main__"]
if getattr(_MAIN, "__spec__", None) is None and not hasattr(_MAIN, "__file__"):
    _MAIN.__spec__ = importlib.machinery.ModuleSpec("__main__", None)

SMALL_ROWS = 600
ROOT = Path(__file__).resolve().parents[1]


# --- the heaviest modules first --------------------------------------------------------------------
# `make test` runs two workers, each taking whole modules (--dist loadfile) in collection order. A
# module of several minutes that starts last leaves the other core idle until it ends, so modules
# marked `slow(seconds=...)` (their cost on the 2-core reference machine) are collected first, the
# heaviest first; the rest keep pytest-randomly's shuffled order.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    cost: dict[str, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        seconds = float(marker.kwargs.get("seconds", 1.0)) if marker else 0.0
        cost[module(item)] = max(cost.get(module(item), 0.0), seconds)
    items.sort(key=lambda item: -cost[module(item)])  # stable: the order within a cost is kept


# --- nothing stray in the repository root -------------------------------------------------------
# What a test run may add to the repository root: pytest's and hypothesis's caches, and out/ in a run
# that selects the benchmarks or the containers tier (they keep their results there). Anything else a
# test writes belongs under its tmp_path; MLflow, for one, creates ./mlflow.db (or mlruns/, mlartifacts/)
# in the working directory when it is given no tracking URI.
ROOT_CACHES = frozenset({".pytest_cache", ".hypothesis"})
ROOT_OUTPUTS = {"out": frozenset({"bench", "containers", "cluster"})}  # entry -> markers of the tests that write it
_ROOT_BEFORE = pytest.StashKey[set[str]]()
_ROOT_STRAY = pytest.StashKey[list[str]]()


def stray_root_entries(before: set[str], after: set[str], markers: Iterable[str]) -> list[str]:
    """Entries of the root that a run with tests of ``markers`` added and may not leave behind."""
    allowed = ROOT_CACHES | {name for name, tiers in ROOT_OUTPUTS.items() if tiers & set(markers)}
    return sorted(after - before - allowed)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before collection, so that a test module writing at import time is caught too.
    session.config.stash[_ROOT_BEFORE] = {p.name for p in ROOT.iterdir()}


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_ROOT_BEFORE, None)
    if before is None:
        return
    markers = {marker.name for item in session.items for marker in item.iter_markers()}
    stray = stray_root_entries(before, {p.name for p in ROOT.iterdir()}, markers)
    if stray:
        session.config.stash[_ROOT_STRAY] = stray
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    stray = config.stash.get(_ROOT_STRAY, [])
    if stray:
        terminalreporter.section("files left in the repository root", red=True, bold=True)
        terminalreporter.line(
            f"This test run created {', '.join(stray)} in {ROOT}, so the run fails. A test must write under its "
            "tmp_path (and give MLflow a tracking URI there). Delete the entries after fixing the test.",
            red=True,
        )


@pytest.fixture(autouse=True)
def isolated_mlflow_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no process-wide MLflow tracking or registry URI.

    ``mlflow.set_tracking_uri`` and ``set_registry_uri`` keep module globals and also export
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``, so without this a client built later
    with only a tracking URI would read the model registry of an earlier test's database.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)


@pytest.fixture(scope="session")
def churn_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Window]]:
    """Three weekly windows of 600 rows, with covariate and concept drift from window 2 on. Read-only."""
    path = tmp_path_factory.mktemp("data") / "churn.parquet"
    windows = write_churn(path, windows=3, rows=SMALL_ROWS, seed=3, drift=Drift(start=2))
    return path, windows


@pytest.fixture(scope="session")
def multiclass_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Window]]:
    """Three weekly windows of 600 rows with a five-class label (``tests.data.multiclass_frame``). Read-only."""
    path = tmp_path_factory.mktemp("data") / "segments.parquet"
    windows = write_multiclass(path, windows=3, rows=SMALL_ROWS, seed=5)
    return path, windows


@pytest.fixture(scope="session")
def churn_frame(churn_data: tuple[Path, list[Window]]) -> pd.DataFrame:
    """The generated data as a DataFrame (copy it before changing it)."""
    return pd.read_parquet(churn_data[0])


@pytest.fixture
def dataset_spec(churn_data: tuple[Path, list[Window]]) -> DatasetSpec:
    """A dataset spec describing ``churn_data``."""
    return churn_spec(churn_data[0])


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite-backed MLflow for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def stop_server():
    """Register a workspace; its local model server (if a test started one) is stopped afterwards."""
    workspaces: list[Path] = []
    yield workspaces.append
    from components.common.server_process import stop_local_server

    for workspace in workspaces:
        stop_local_server(str(workspace))


# --- a real S3-compatible store ------------------------------------------------------------------
# SeaweedFS on 127.0.0.1 (tests/servers/s3_server.py), started once per session by the first test that
# asks for it. Tests reach it the way ctpipe does on a cluster: through AWS_* environment variables.
S3_ENV_IGNORED = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS S3 server with one identity (``access_key``, ``secret_key``) and one bucket (``bucket``)."""
    from tests.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch):
    """The environment points at ``s3_server`` with its real keys (and at nothing else) for one test."""
    for name in S3_ENV_IGNORED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no developer's ~/.aws profile
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata address
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_prefix(s3_env, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://bucket/<test>-<id>`` prefix in the test store, with the environment set for it."""
    import uuid

    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"s3://{s3_env.bucket}/{name}-{uuid.uuid4().hex[:8]}"


# --- a real Kubernetes API server (tests/servers/kubernetes.py) ------------------------------------
@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config):
    """``kube-apiserver`` + etcd on 127.0.0.1 (built on first use, minutes); skipped only with ``CTPIPE_K8S=off``.

    A failed build or start is an error, not a skip: the tier requires the server unless switched off.
    """
    from tests.servers.kubernetes import KubeApiServer, k8s_disabled_reason

    reason = k8s_disabled_reason()
    if reason:
        pytest.skip(reason)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        # A cold build takes minutes: show its progress through pytest's output capture.
        if capture is None:  # -p no:capture
            print(f"[kube-apiserver] {message}", file=sys.stderr, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(f"[kube-apiserver] {message}", file=sys.stderr, flush=True)

    server = KubeApiServer(tmp_path_factory.mktemp("kube-apiserver"), progress=progress)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube_crds(kube_apiserver) -> list[str]:
    """The KServe and Spark operator CRDs of ``shared/schemas``, installed server-side and Established."""
    from tests.servers.kubernetes import shared_schemas

    schemas = shared_schemas()
    if schemas is None:
        pytest.skip("shared/schemas (kserve/, spark-operator/) not found beside the checkout: no CRDs to install")
    return kube_apiserver.install_crds(schemas)


@pytest.fixture(scope="module")
def one_openmp_thread() -> Iterator[None]:
    """Gradient boosting fits and predicts several times faster on one OpenMP thread than on two contended ones."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield
