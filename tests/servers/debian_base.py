"""A Python 3.11 + Java 17 base image debootstrapped from Debian's packages (the containers tier)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tests.servers.process import ensure_debian_package, unavailable

if TYPE_CHECKING:
    from tests.servers.dockerd import DockerDaemon

DEBIAN_BASE_SUITE = "bookworm"
DEBIAN_BASE_PACKAGES = ("python3.11", "python3-venv", "openjdk-17-jre-headless", "ca-certificates")


def apt_mirror(suite: str = DEBIAN_BASE_SUITE) -> str:
    """The Debian mirror this machine's apt uses for ``suite``, read from its sources at run time.

    Reads ``/etc/apt/sources.list.d/*.sources`` (deb822) and ``/etc/apt/sources.list``.
    """
    import re

    candidates: list[tuple[str, list[str]]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for paragraph in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^\]]*\]", " ", line).split()  # drop "[signed-by=...]" options
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if suite in suites and uri.startswith(("http://", "https://")):
            return uri
    unavailable(f"no apt source for Debian {suite} on this machine to debootstrap a base image from")
    raise AssertionError  # unreachable: unavailable() raises


def _remove_rootfs(root: Path) -> None:
    """Delete a debootstrap target, first unmounting what debootstrap mounted in it (/proc, /sys).

    Never recurse into a mounted host filesystem: if anything stays mounted, keep the folder.
    """
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    if any(m.startswith(prefix) for m in mounts):
        raise RuntimeError(f"{root} still has mounts inside; remove it by hand after unmounting them")
    shutil.rmtree(root, ignore_errors=True)


def debian_base_image(daemon: DockerDaemon, cache: Path, tag: str) -> str:
    """A Python 3.11 + Java 17 base image built from Debian packages (debootstrap + ``docker import``).

    The root filesystem is cached as a tarball keyed by the suite and package list, and the
    image carries that key as a label, so later runs reuse the image or re-import the tarball.

    Returns:
        ``tag``.
    """
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([DEBIAN_BASE_SUITE, *DEBIAN_BASE_PACKAGES]).encode()).hexdigest()[:12]
    inspect = daemon.docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
    if inspect.returncode == 0 and (json.loads(inspect.stdout or "null") or {}).get("ctpipe.base-key") == key:
        return tag
    tarball = cache / f"debian-{DEBIAN_BASE_SUITE}-{key}.tar"
    if not tarball.is_file():
        debootstrap = ensure_debian_package("debootstrap", "debootstrap", ["/usr/sbin"])
        root = cache / f"rootfs-{key}.tmp"
        if root.exists():
            _remove_rootfs(root)
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(DEBIAN_BASE_PACKAGES)}",
                DEBIAN_BASE_SUITE,
                str(root),
                apt_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            _remove_rootfs(root)
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
                elif item.is_dir() and item.name != "partial":
                    shutil.rmtree(item, ignore_errors=True)
        partial = tarball.with_suffix(".tar.tmp")
        subprocess.run(
            ["tar", "--one-file-system", "-C", str(root), "-cf", str(partial), "."], check=True, capture_output=True
        )
        partial.replace(tarball)
        _remove_rootfs(root)
    daemon.docker(
        "import",
        "--change",
        f"LABEL ctpipe.base-key={key}",
        "--change",
        "ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["python3"]',
        str(tarball),
        tag,
    )
    return tag
