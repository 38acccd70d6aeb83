"""A real Kubernetes API server for the tests: ``kube-apiserver`` and ``etcd`` built from Go modules, run on 127.0.0.1.

Neither binary ships in a registry this project reaches as a ready-made program, so both are built from
their Go modules through the Go module proxy, once per version, into a cache outside the repository
(``~/.cache/ctpipe-k8s``, or ``CTPIPE_K8S_CACHE``):

- ``kube-apiserver`` from ``k8s.io/kubernetes``. That module is not meant to be imported: its go.mod
  replaces every ``k8s.io/*`` staging module with a folder of its own tree, and Go ignores a
  dependency's replacements. A throwaway module therefore requires it and maps each staging module
  to its published ``v0.X.Y`` (the usual replace block), generated from the names the module's own
  go.mod gives, so a new Kubernetes version needs only :data:`KUBERNETES_VERSION` changed.
- ``etcd`` from ``go.etcd.io/etcd/server/v3``, whose module root is etcd's ``main`` package; its
  sibling modules are mapped to the same published version the same way.

Debian's ``etcd-server`` (3.4) is older than the etcd releases current Kubernetes supports, hence the build.
A cold build takes minutes on two cores; it prints progress and holds a file lock, so two test
processes never build the same binary at once. Later runs find the binaries and start in seconds.

:class:`Etcd` and :class:`KubeApiServer` are the processes: loopback only, a generated CA and serving
certificate, a service-account signing key, a static token for an admin in ``system:masters``, RBAC
authorisation and every file in a folder the caller owns. :meth:`KubeApiServer.install_crds` installs
the KServe and Spark operator CRDs from ``shared/schemas`` server-side.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.servers.process import ServerProcess, free_port, free_ports, start_and_wait, wait_for_port

# The one place the versions are pinned. Both resolve through the Go module proxy with the Go
# toolchain these modules ask for (go 1.26).
KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"

K8S_CACHE_ENV = "CTPIPE_K8S_CACHE"
K8S_SWITCH_ENV = "CTPIPE_K8S"
# The same override tests/helpers.py's kserve_crd_validator honours: it names the kserve folder itself.
KSERVE_SCHEMAS_ENV = "CTPIPE_KSERVE_SCHEMAS"
KSERVE_CRD = "serving.kserve.io_inferenceservices.yaml"
CRD_FOLDERS = ("kserve", "spark-operator")
FIELD_MANAGER = "ctpipe-tests"
ADMIN_USER = "ctpipe-admin"

_REPO_ROOT = Path(__file__).resolve().parents[2]
# A cold kube-apiserver build on a busy two-core machine; past this something is wrong, not slow.
BUILD_TIMEOUT_SECONDS = 3600.0
_PROGRESS_EVERY_SECONDS = 30.0


class BuildError(RuntimeError):
    """A Go build of a test server failed; the message ends with the tail of Go's output."""


def k8s_disabled_reason() -> str | None:
    """Why the Kubernetes API server tier is switched off (``CTPIPE_K8S=off``), or None when it must run."""
    value = os.environ.get(K8S_SWITCH_ENV, "").strip().lower()
    if value in ("off", "0", "false", "no"):
        return (
            f"{K8S_SWITCH_ENV}={os.environ[K8S_SWITCH_ENV]}: the real Kubernetes API server tier is switched off "
            f"(kube-apiserver {KUBERNETES_VERSION} and etcd {ETCD_VERSION} are not built or started)"
        )
    return None


def cache_root() -> Path:
    """Where the built binaries live: ``CTPIPE_K8S_CACHE``, else ``~/.cache/ctpipe-k8s`` (never the repository)."""
    override = os.environ.get(K8S_CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "ctpipe-k8s"


def shared_schemas() -> Path | None:
    """The ``shared/schemas`` folder beside the checkout, found as ``tests.helpers.kserve_crd_validator`` finds it.

    ``CTPIPE_KSERVE_SCHEMAS`` names the kserve folder (its parent is the schemas folder); otherwise
    every ancestor of the repository is tried, because a git worktree may sit deeper than the checkout.
    """
    override = os.environ.get(KSERVE_SCHEMAS_ENV)
    folders = [Path(override).parent] if override else [p / "shared" / "schemas" for p in _REPO_ROOT.parents]
    return next((f for f in folders if (f / "kserve" / KSERVE_CRD).is_file()), None)


def crd_files(schemas: Path) -> list[Path]:
    """Every CRD YAML of the KServe and Spark operator schema folders, sorted."""
    return sorted(f for folder in CRD_FOLDERS for f in (schemas / folder).glob("*.yaml"))


# --- building the binaries ---------------------------------------------------------------------


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class GoProgram:
    """A ``main`` package inside a Go module that is built through a throwaway module of its own.

    Attributes:
        name: The binary's name.
        module: The module that holds the package (required at ``version``).
        version: The module version, and so the cache key.
        package: The import path of the ``main`` package.
        sibling_version: The published version of the modules that ``module``'s go.mod replaces with
            local folders (Kubernetes publishes its staging modules as ``v0.X.Y``).
        stamps: ``-X`` linker settings (``import/path.variable=value``), for the version the binary reports.
    """

    name: str
    module: str
    version: str
    package: str
    sibling_version: str
    stamps: tuple[str, ...] = ()

    @property
    def ldflags(self) -> str:
        """The linker flags: no symbol table or DWARF (a third of the size), plus the version stamps."""
        return " ".join(["-s", "-w", *(f"-X {stamp}" for stamp in self.stamps)])

    @property
    def recipe(self) -> str:
        """What the binary was built from; a cached binary with another recipe is built again."""
        return json.dumps(
            {
                "module": self.module,
                "version": self.version,
                "package": self.package,
                "sibling_version": self.sibling_version,
                "ldflags": self.ldflags,
            },
            sort_keys=True,
        )

    def is_built(self) -> bool:
        """Whether the cache holds this binary, built by this recipe."""
        recipe = self.folder / "recipe.json"
        return self.binary.is_file() and recipe.is_file() and recipe.read_text() == self.recipe

    @property
    def folder(self) -> Path:
        """The build folder: the throwaway module, its log and ``bin/``."""
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        """Where the built binary is (or will be)."""
        return self.folder / "bin" / self.name


def kube_apiserver_program(version: str = KUBERNETES_VERSION) -> GoProgram:
    """``kube-apiserver`` from ``k8s.io/kubernetes`` at ``version`` (``v1.X.Y``; staging modules at ``v0.X.Y``)."""
    if not re.fullmatch(r"v1\.\d+\.\d+", version):
        raise ValueError(f"a Kubernetes version looks like v1.37.2, got {version!r}")
    return GoProgram(
        name="kube-apiserver",
        module="k8s.io/kubernetes",
        version=version,
        package="k8s.io/kubernetes/cmd/kube-apiserver",
        sibling_version="v0." + version[3:],
        # A module build leaves the version at v0.0.0-master; /version and clients should see the real one.
        stamps=(
            f"k8s.io/component-base/version.gitVersion={version}",
            "k8s.io/component-base/version.gitMajor=1",
            f"k8s.io/component-base/version.gitMinor={version.split('.')[1]}",
            "k8s.io/component-base/version.gitTreeState=clean",
        ),
    )


def etcd_program(version: str = ETCD_VERSION) -> GoProgram:
    """``etcd`` from ``go.etcd.io/etcd/server/v3`` (its module root is etcd's ``main`` package)."""
    return GoProgram(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=version,
        package="go.etcd.io/etcd/server/v3",
        sibling_version=version,
    )


def _go() -> str:
    # The official Go tarball installs to /usr/local/go, which a non-login shell may not have on PATH.
    go = shutil.which("go") or next((str(p) for p in (Path("/usr/local/go/bin/go"),) if p.is_file()), None)
    if go is None:
        raise BuildError("the Go toolchain (`go`) is not on PATH; it builds kube-apiserver and etcd for the tests")
    return go


def local_replacements(go_mod: str) -> list[str]:
    """The modules a go.mod replaces with a local folder (``X => ./dir`` or ``X => ../dir``), in its order.

    Args:
        go_mod: The text of the go.mod.

    Returns:
        Their module paths: for ``k8s.io/kubernetes``, every staging module.
    """
    found = []
    for line in go_mod.splitlines():
        match = re.match(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\.{1,2}/\S*)\s*$", line)
        if match:
            found.append(match.group(1))
    return found


def throwaway_go_mod(program: GoProgram, dependency_go_mod: str) -> str:
    """The go.mod that builds ``program``: require its module, map its local replacements to published versions.

    Args:
        program: What to build.
        dependency_go_mod: The go.mod of ``program.module`` at ``program.version``.

    Returns:
        The go.mod text.
    """
    go_line = re.search(r"^go\s+(\S+)\s*$", dependency_go_mod, re.M)
    lines = [
        f"module ctpipe.test/build/{program.name}",
        "",
        f"go {go_line.group(1) if go_line else '1.22'}",
        "",
        f"require {program.module} {program.version}",
    ]
    siblings = local_replacements(dependency_go_mod)
    if siblings:
        lines += ["", "replace ("]
        lines += [f"\t{module} => {module} {program.sibling_version}" for module in siblings]
        lines += [")"]
    return "\n".join(lines) + "\n"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _go_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    # No VCS stamping (the throwaway module has no repository); never the developer's go.work.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -buildvcs=false -mod=mod").strip()
    env["GOWORK"] = "off"
    env.setdefault("CGO_ENABLED", "0")
    return env


def _run_go(args: list[str], folder: Path, log: Path, what: str, progress: Progress, timeout: float) -> None:
    """Run ``go args`` in ``folder``, its output appended to ``log``, reporting progress; raise with its tail."""
    with log.open("ab") as out:
        out.write(f"\n$ go {' '.join(args)}\n".encode())
        out.flush()
        start = time.monotonic()
        popen = subprocess.Popen(
            [_go(), *args],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_go_env(folder),
            start_new_session=True,
        )
        try:
            while True:
                try:
                    code = popen.wait(timeout=_PROGRESS_EVERY_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - start
                    if elapsed > timeout:
                        popen.kill()
                        popen.wait()
                        raise BuildError(
                            f"{what} took more than {timeout:.0f}s; Go's output ends:\n{_tail(log)}"
                        ) from None
                    # `go build -v` names each package as it compiles it: a count shows it moves.
                    packages = sum(1 for line in _tail(log, 100000).splitlines() if not line.startswith(("$", "go:")))
                    progress(f"  {what}: {elapsed:.0f}s, {packages} packages so far")
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    if code != 0:
        raise BuildError(f"{what} failed (go exit {code}); Go's output ends:\n{_tail(log)}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(program: GoProgram, progress: Progress = _stderr_progress, timeout: float = BUILD_TIMEOUT_SECONDS) -> Path:
    """The path of ``program``'s binary, building it on first use.

    The build folder is keyed by the module version, so a new version builds beside the old one and an
    existing binary is used as it is. The binary appears by an atomic rename, so a build that was
    killed leaves none behind; a file lock makes a second test process wait for the first one's build.

    Args:
        program: What to build.
        progress: Called with one line of progress at a time (a cold build takes minutes).
        timeout: Seconds each Go step may take.

    Returns:
        The binary's absolute path.

    Raises:
        BuildError: Go is missing, a step failed (the message has the tail of Go's output) or took too long.
    """
    if program.is_built():
        return program.binary
    folder = program.folder
    with _file_lock(folder.with_name(folder.name + ".lock")):
        if program.is_built():  # another process built it while this one waited for the lock
            return program.binary
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "build.log"
        log.write_text("")
        started = time.monotonic()
        progress(f"building {program.name} from {program.module} {program.version} in {folder} (first run only)")
        download = subprocess.run(
            [_go(), "mod", "download", "-json", f"{program.module}@{program.version}"],
            cwd=folder,
            capture_output=True,
            text=True,
            env=_go_env(folder),
            timeout=timeout,
        )
        try:
            info = json.loads(download.stdout)
        except json.JSONDecodeError:
            info = {}
        if download.returncode != 0 or "GoMod" not in info:
            tail = (info.get("Error") or download.stderr or download.stdout).strip()[-3000:]
            raise BuildError(f"go mod download {program.module}@{program.version} failed:\n{tail}")
        (folder / "go.mod").write_text(throwaway_go_mod(program, Path(info["GoMod"]).read_text()))
        (folder / "go.sum").unlink(missing_ok=True)
        _run_go(
            ["get", f"{program.package}@{program.version}"], folder, log, f"resolving {program.name}", progress, timeout
        )
        partial = program.binary.with_name(program.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        _run_go(
            ["build", "-v", "-trimpath", f"-ldflags={program.ldflags}", "-o", str(partial), program.package],
            folder,
            log,
            f"building {program.name}",
            progress,
            timeout,
        )
        partial.replace(program.binary)
        (folder / "recipe.json").write_text(program.recipe)
        size = program.binary.stat().st_size / 2**20
        progress(f"built {program.name} {program.version} in {time.monotonic() - started:.0f}s ({size:.0f} MiB)")
    return program.binary


def build_all(progress: Progress = _stderr_progress) -> dict[str, Path]:
    """Build (or find) ``etcd`` and ``kube-apiserver`` at the pinned versions: name -> binary."""
    return {program.name: build(program, progress) for program in (etcd_program(), kube_apiserver_program())}


# --- certificates and keys ---------------------------------------------------------------------


def _write_private_key(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def write_serving_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and a serving certificate it signed for ``127.0.0.1`` and ``localhost``.

    A separate CA (rather than one self-signed leaf) is what clients expect to find in a CA bundle;
    strict verifiers refuse a leaf certificate that doubles as its own CA.

    Returns:
        The CA certificate, the serving certificate and the serving key (PEM files in ``folder``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctpipe-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )  # digital signature, key encipherment
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(key, key_file)
    return ca_file, cert_file, key_file


def write_service_account_key(folder: Path) -> tuple[Path, Path]:
    """An RSA key pair for signing service-account tokens: (private key, public key) PEM files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    _write_private_key(key, private)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


# --- the processes -----------------------------------------------------------------------------


class Etcd:
    """A single-member etcd on 127.0.0.1 with its data in ``folder``, stopped by :meth:`stop`."""

    def __init__(self, folder: Path, binary: Path | None = None, timeout: float = 60.0) -> None:
        """Start etcd and return once it reports healthy.

        Args:
            folder: Its data folder and log go here.
            binary: The etcd binary; default: build (or find) the pinned version.
            timeout: Seconds to wait for it to become healthy.
        """
        binary = binary or build(etcd_program())
        folder.mkdir(parents=True, exist_ok=True)
        self.port, peer_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self.process = start_and_wait(
            "etcd",
            [
                str(binary),
                "--name=ctpipe-test",
                f"--data-dir={folder / 'data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=ctpipe-test={peer}",
                "--initial-cluster-state=new",
                # Throwaway data: an fsync per write only slows the tests down.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            folder / "etcd.log",
            port=self.port,
            timeout=timeout,
            ready=lambda process: self._wait_healthy(process, timeout),
        )

    def _wait_healthy(self, process: ServerProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    last = response.read().decode()
                    if json.loads(last).get("health") == "true":
                        return
            except (OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(f"etcd did not turn healthy in {timeout:.0f}s ({last})\n{process.log_tail()}")

    def stop(self) -> None:
        """Stop the etcd this object started."""
        self.process.stop()


class KubeApiServer:
    """``kube-apiserver`` (and the etcd under it) on 127.0.0.1, over TLS, with RBAC and a static admin token.

    Attributes:
        url: ``https://127.0.0.1:<port>``.
        token: The bearer token of an admin user in ``system:masters``.
        ca_file: The CA certificate that signed the serving certificate.
        folder: Where its certificates, keys, token file, logs and etcd's data are.
    """

    def __init__(self, folder: Path, progress: Progress = _stderr_progress, timeout: float = 120.0) -> None:
        """Build what is missing, start etcd and the API server, and return once the server is ready.

        Args:
            folder: A folder the caller owns (a pytest temp folder); everything is written under it.
            progress: Called with progress lines (a cold build takes minutes).
            timeout: Seconds to wait for each process to become ready.

        Raises:
            BuildError: A binary could not be built.
            TimeoutError: A process did not become ready in time; the message has its log tail.
        """
        binaries = build_all(progress)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        pki = folder / "pki"
        self.ca_file, cert_file, key_file = write_serving_certificate(pki)
        sa_key, sa_pub = write_service_account_key(pki)
        self.token = secrets.token_urlsafe(32)
        tokens = pki / "tokens.csv"
        # token,user,uid,"groups": system:masters is bound to cluster-admin and bypasses RBAC checks.
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)
        self.etcd = Etcd(folder / "etcd", binaries["etcd"], timeout=timeout)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        try:
            self.process = ServerProcess(
                "kube-apiserver",
                [
                    str(binaries["kube-apiserver"]),
                    f"--etcd-servers={self.etcd.url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--cert-dir={pki}",
                    f"--tls-cert-file={cert_file}",
                    f"--tls-private-key-file={key_file}",
                    f"--token-auth-file={tokens}",
                    "--anonymous-auth=false",
                    "--authorization-mode=RBAC",
                    f"--service-account-key-file={sa_pub}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    # Virtual addresses only (nothing routes them); the apiserver wants a Service range.
                    "--service-cluster-ip-range=10.96.0.0/24",
                    # No kubelet or kube-proxy: the 'kubernetes' Service would get a loopback endpoint,
                    # which endpoint validation refuses, so the server would log that error forever.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    "--v=1",
                ],
                folder / "kube-apiserver.log",
            )
        except BaseException:
            self.etcd.stop()
            raise
        try:
            wait_for_port(self.port, process=self.process, timeout=timeout)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One raw request to the server as the admin; for health checks and what the client does not cover.

        Returns:
            The decoded JSON answer, or its text when it is not JSON.

        Raises:
            urllib.error.HTTPError: The server answered with an error status.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=30) as response:
            text = response.read().decode()
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _wait_ready(self, timeout: float) -> None:
        """Wait for ``/readyz``: storage, the RBAC bootstrap roles and every post-start hook are done."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                raise TimeoutError(
                    f"kube-apiserver exited with {self.process.popen.returncode}:\n{self.process.log_tail()}"
                )
            try:
                if self.request("GET", "/readyz") == "ok":
                    return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[-500:]
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready in {timeout:.0f}s: {last}\n{self.process.log_tail()}")

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server as the admin (the client KServe's seam uses)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.verify_ssl = True
        configuration.api_key = {"authorization": self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server as the admin."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (for kubectl or ``kubernetes.config``); mode 0600: it holds the token.

        Args:
            path: Where to write it (a temp folder of the caller).
            namespace: The context's namespace.

        Returns:
            ``path``.
        """
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "ctpipe-test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "ctpipe-test",
                    "context": {"cluster": "ctpipe-test", "user": ADMIN_USER, "namespace": namespace},
                }
            ],
            "current-context": "ctpipe-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def apply(
        self, manifest: dict[str, Any], field_manager: str = FIELD_MANAGER, force: bool = True, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply one object, with strict field validation (an unknown field is an error, not pruned).

        Args:
            manifest: The object (``apiVersion``, ``kind``, ``metadata.name``, and ``namespace`` if namespaced).
            field_manager: The field manager recorded in ``managedFields``.
            force: Take over fields another manager owns instead of failing with 409.
            dry_run: Validate and admit without persisting (``dryRun=All``).

        Returns:
            The object as the server stored it.

        Raises:
            kubernetes.client.rest.ApiException: The server refused it.
        """
        return server_side_apply(self.api_client(), manifest, field_manager, force, dry_run)

    def install_crds(self, schemas: Path | None = None, timeout: float = 120.0) -> list[str]:
        """Install every CRD under ``schemas/kserve`` and ``schemas/spark-operator`` server-side; wait for Established.

        Server-side apply keeps no ``last-applied-configuration`` annotation, which client-side apply
        would need and which the InferenceService CRD (about 2 MB) exceeds 256 KiB for.

        Args:
            schemas: The ``shared/schemas`` folder; default :func:`shared_schemas`.
            timeout: Seconds to wait for all of them to be Established.

        Returns:
            The names of the CRDs installed.

        Raises:
            FileNotFoundError: There is no schemas folder.
            TimeoutError: A CRD was not Established in time.
        """
        schemas = schemas or shared_schemas()
        if schemas is None:
            raise FileNotFoundError("shared/schemas (with kserve/ and spark-operator/) not found beside the checkout")
        names = []
        api_client = self.api_client()
        for path in crd_files(schemas):
            for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    server_side_apply(api_client, doc, FIELD_MANAGER, force=True)
                    names.append(doc["metadata"]["name"])
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                crd = api_client.call_api(
                    f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                    "GET",
                    auth_settings=["BearerToken"],
                    response_type="object",
                    _return_http_data_only=True,
                )
                conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
                if conditions.get("Established") == "True":
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {sorted(pending)}")
            if pending:
                time.sleep(0.3)
        return names

    def stop(self) -> None:
        """Stop the API server and the etcd this object started (nothing else)."""
        process = getattr(self, "process", None)
        if process is not None:
            process.stop()
        self.etcd.stop()


# --- server-side apply through the kubernetes client ------------------------------------------


def resource_path(api_client: Any, api_version: str, kind: str, name: str, namespace: str | None = None) -> str:
    """The REST path of one object, found by discovery (plural name, namespaced or not).

    Args:
        api_client: A ``kubernetes.client.ApiClient``.
        api_version: ``v1`` or ``group/version``.
        kind: The object's kind.
        name: The object's name.
        namespace: Its namespace; required for a namespaced kind.

    Returns:
        A path such as ``/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/name``.

    Raises:
        LookupError: The server has no such kind in that group version, or a namespace is missing.
    """
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    listing = api_client.call_api(
        base, "GET", auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True
    )
    resource = next(
        (r for r in listing.get("resources", []) if r.get("kind") == kind and "/" not in r.get("name", "")), None
    )
    if resource is None:
        raise LookupError(f"the server serves no {kind} in {api_version}")
    if resource.get("namespaced"):
        if not namespace:
            raise LookupError(f"{kind} {name} is namespaced but names no namespace")
        return f"{base}/namespaces/{namespace}/{resource['name']}/{name}"
    return f"{base}/{resource['name']}/{name}"


def server_side_apply(
    api_client: Any, manifest: dict[str, Any], field_manager: str, force: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Server-side apply ``manifest`` (``application/apply-patch+yaml``) with ``fieldValidation=Strict``.

    Args:
        api_client: A ``kubernetes.client.ApiClient``.
        manifest: The object.
        field_manager: Recorded as the manager of the fields the manifest sets.
        force: Take over conflicting fields from other managers.
        dry_run: ``dryRun=All``: validate and admit, persist nothing.

    Returns:
        The object the server stored (or would store).

    Raises:
        kubernetes.client.rest.ApiException: The server refused it (422 invalid, 409 conflict, ...).
    """
    metadata = manifest.get("metadata") or {}
    path = resource_path(
        api_client, manifest["apiVersion"], manifest["kind"], metadata["name"], metadata.get("namespace")
    )
    query: list[tuple[str, str]] = [("fieldManager", field_manager), ("fieldValidation", "Strict")]
    if force:
        query.append(("force", "true"))
    if dry_run:
        query.append(("dryRun", "All"))
    result: dict[str, Any] = api_client.call_api(
        path,
        "PATCH",
        query_params=query,
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=manifest,
        auth_settings=["BearerToken"],
        response_type="object",
        _return_http_data_only=True,
    )
    return result
