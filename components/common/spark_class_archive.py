"""A class-data sharing (AppCDS) archive of Spark's driver JVM, made once per user and reused.

Why: a Spark driver loads and verifies some 16,000 classes from about 300 jars before its first
job; on a small machine that is most of a session's start-up. The JVM can map those classes,
already parsed and verified, from an archive file instead (``-XX:SharedArchiveFile``).

How, without slowing anything down:

1. A session started while no archive exists records the classes it loads
   (``-XX:DumpLoadedClassList``) while it does its real work.
2. When that session stops, a background process (``python -m components.common.spark_class_archive``,
   at low priority) dumps the archive from that list with the same ``java`` and class path
   (``java -Xshare:dump``), and renames it into place only when it is complete.
3. Later sessions start with the archive. The JVM checks it against its class path itself and
   ignores an archive that does not match; a session that finds its archive ignored removes it
   and leaves a marker, so this Spark and Java do not get another one.

The archive (about 200 MB) lives in ``$XDG_CACHE_HOME/ctpipe/spark-cds`` (default
``~/.cache/...``, readable by this user only), named by a hash of the Java installation and
Spark's jars; archives no session used for two weeks are removed when a new one is made.
``CTPIPE_SPARK_CLASS_ARCHIVE=off`` turns all of this off and a folder path moves it. A JVM that
may run a Java agent or Flight Recorder (from ``JAVA_TOOL_OPTIONS`` and the like, or
``spark-defaults.conf``) gets no archive: JDK 17 can crash loading an archived class while a
class-file hook is active. Anything that fails (no cache folder, no ``java``, a dump that fails)
only means sessions start without an archive.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from components.common.logs import get_logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: ``off`` (or ``0``, ``false``, ``no``) disables the archive; any other value is the cache folder to use.
ENV = "CTPIPE_SPARK_CLASS_ARCHIVE"
# Bumped when what is archived, or how, changes.
_FORMAT = 1
# A dump runs for seconds to a minute; a lock older than this belongs to a dump that died.
_STALE_LOCK_SECONDS = 1800.0
# Class lists of sessions killed before they stopped are removed once this old.
_STALE_LIST_SECONDS = 3600.0
_DUMP_TIMEOUT_SECONDS = 900.0
# An archive (of another Spark or Java installation) that no session used for this long is removed.
_UNUSED_ARCHIVE_SECONDS = 14 * 24 * 3600.0

log = get_logger("spark_class_archive")


@dataclass(frozen=True)
class Plan:
    """What a new session does about the archive: the JVM options, and what to do once it stops."""

    options: tuple[str, ...] = ()
    # The archive the session starts with, or the one it records a class list for.
    archive: Path | None = None
    # The class list this session records; None when it uses an archive (or there is none to make).
    class_list: Path | None = None
    # Filled in once the JVM runs: what the dump must reproduce.
    java: str | None = None
    class_path: str | None = None
    dump_options: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """``used``, ``recording`` or ``off``: for logs and benchmarks."""
        if self.archive is None:
            return "off"
        return "recording" if self.class_list is not None else "used"


def cache_folder() -> Path | None:
    """Where archives are kept; None when they are turned off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ctpipe" / "spark-cds"


def plan() -> Plan:
    """The JVM options of a new session: the archive when it exists, else the class list to record.

    Nothing when archives are off, when the JVM may run an agent or Flight Recorder (JDK 17 can
    crash loading an archived class while a class-file hook is active), or when an archive of
    this Spark and Java was found unusable once (sessions then start as they would without).
    """
    try:
        folder = cache_folder()
        if folder is None or _agent_options():
            return Plan()
        archive = folder / f"spark-{_key()}.jsa"
        if archive.is_file():
            with contextlib.suppress(OSError):
                os.utime(archive)  # in use: not removed as another installation's old archive
            # -Xshare:auto: an archive the JVM finds unusable is ignored. Should it crash the JVM all the same,
            # the report goes beside the archive, not into the caller's folder (see failed()).
            options = ("-Xshare:auto", f"-XX:SharedArchiveFile={archive}", f"-XX:ErrorFile={folder}/hs_err_pid%p.log")
            return Plan(options, archive)
        if _unusable(archive).exists():
            return Plan()
        # Only this user reads and writes the folder: the JVM trusts what it maps from an archive.
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_old(folder, "*.classlist", _STALE_LIST_SECONDS)
        _remove_old(folder, "*.classpath", _STALE_LIST_SECONDS)  # of a dump that found another one running
        _remove_old(folder, "*.partial", _STALE_LOCK_SECONDS)  # of a dump process that was killed
        if _locked(archive):
            return Plan()  # another process is making it
        class_list = folder / f"{archive.stem}.{os.getpid()}.classlist"
        return Plan((f"-XX:DumpLoadedClassList={class_list}",), archive, class_list)
    except OSError as exc:
        log.info("no class-data archive for Spark", extra={"reason": str(exc)})
        return Plan()


def started(spark: SparkSession, planned: Plan) -> Plan:
    """Check what the running JVM did with the plan, and note what a dump would need.

    A JVM that was given the archive but shares no classes found it unusable (Spark's jars or
    Java changed in a way the name does not capture): the archive is removed so the next
    session records a new one.
    """
    if planned.archive is None:
        return planned
    try:
        system = spark.sparkContext._jvm.java.lang.System  # type: ignore[union-attr]
        if planned.class_list is None:
            if "sharing" not in str(system.getProperty("java.vm.info")):
                log.info("Spark's class-data archive was not usable; removing it", extra={"archive": planned.archive})
                _give_up(planned.archive)
            return planned
        runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()  # type: ignore[union-attr]
        arguments = [str(a) for a in runtime.getInputArguments()]
        # The dump must see the same modules and heap layout as the sessions that will map it.
        kept = tuple(a for a in arguments if a.startswith(("--add-modules", "-Xmx", "-XX:+Use", "-XX:-Use")))
        java = str(Path(str(system.getProperty("java.home"))) / "bin" / "java")
        return replace(planned, java=java, class_path=str(system.getProperty("java.class.path")), dump_options=kept)
    except Exception as exc:  # py4j or a JVM without these properties: carry on without an archive
        log.info("cannot prepare Spark's class-data archive", extra={"error": f"{type(exc).__name__}: {exc}"})
        return replace(planned, class_list=None, archive=None)


def failed(planned: Plan) -> None:
    """The JVM given ``planned`` did not start: never give it this archive again (the caller retries without)."""
    if planned.archive is not None and planned.class_list is None:
        log.warning(
            "the Spark JVM did not start with its class-data archive; removing it",
            extra={"archive": str(planned.archive)},
        )
        _give_up(planned.archive)


def _give_up(archive: Path) -> None:
    """Remove ``archive`` and leave a marker: this Spark and Java get no other (it would likely fail again)."""
    with contextlib.suppress(OSError):
        _unusable(archive).touch()
        archive.unlink()


def stopped(planned: Plan) -> None:
    """After a recording session stopped: start the background dump (it does not delay this process)."""
    if planned.class_list is None or planned.archive is None or planned.java is None or not planned.class_path:
        return
    if not planned.class_list.is_file():
        return
    folder = planned.archive.parent
    class_path_file = planned.class_list.with_suffix(".classpath")
    try:
        class_path_file.write_text(planned.class_path)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        command = [
            sys.executable,
            "-m",
            "components.common.spark_class_archive",
            "--java",
            planned.java,
            "--class-list",
            str(planned.class_list),
            "--class-path-file",
            str(class_path_file),
            "--archive",
            str(planned.archive),
            *[f"--jvm-option={option}" for option in planned.dump_options],
        ]
        with open(folder / f"{planned.archive.stem}.log", "wb") as out:
            subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
        log.info("making Spark's class-data archive in the background", extra={"archive": str(planned.archive)})
    except OSError as exc:
        log.info("cannot start making Spark's class-data archive", extra={"error": str(exc)})


def _key() -> str:
    """A name for the archive that changes when Java or Spark's jars change."""
    digest = hashlib.sha256(f"format {_FORMAT}\n".encode())
    java = _java()
    digest.update(f"java {java}\n".encode())
    if java is not None:
        modules = Path(java).resolve().parents[1] / "lib" / "modules"
        with contextlib.suppress(OSError):
            info = modules.stat()
            digest.update(f"modules {info.st_size} {info.st_mtime_ns}\n".encode())
    home = _spark_home()
    digest.update(f"spark {home}\n".encode())
    for name in ("SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_DIST_CLASSPATH"):
        digest.update(f"{name}={os.environ.get(name, '')}\n".encode())
    jars = home / "jars"
    for jar in sorted(jars.glob("*.jar")) if jars.is_dir() else []:
        info = jar.stat()
        digest.update(f"{jar.name} {info.st_size} {info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _java() -> str | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return os.path.realpath(found) if found else None


def _spark_home() -> Path:
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _agent_options() -> bool:
    """Whether the environment may give the driver JVM an agent or Flight Recorder."""
    markers = ("-javaagent", "-agentlib", "-agentpath", "-Xrun", "FlightRecorder", "StartFlightRecording")
    names = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "SPARK_SUBMIT_OPTS", "SPARK_DAEMON_JAVA_OPTS")
    texts = [os.environ.get(name, "") for name in names]
    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or _spark_home() / "conf")
    with contextlib.suppress(OSError):
        texts.append((conf_dir / "spark-defaults.conf").read_text())
    return any(marker in text for text in texts for marker in markers)


def _unusable(archive: Path) -> Path:
    return archive.with_suffix(".unusable")


def _lock(archive: Path) -> Path:
    return archive.with_suffix(".lock")


def _locked(archive: Path) -> bool:
    try:
        return time.time() - _lock(archive).stat().st_mtime < _STALE_LOCK_SECONDS
    except FileNotFoundError:
        return False


def _take(lock: Path) -> bool:
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _remove_old(folder: Path, pattern: str, age: float) -> None:
    for path in folder.glob(pattern):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > age:
                path.unlink()


def dump(java: str, class_list: Path, class_path: str, archive: Path, jvm_options: Sequence[str]) -> bool:
    """Dump ``archive`` from a class list; True when it was made. Run by the background process.

    One process dumps at a time (a lock file beside the archive); the archive is written under a
    temporary name and renamed when complete, so a session never maps half an archive. Archives
    of other keys in the folder (older Spark or Java) are removed once the new one is in place.
    """
    lock = _lock(archive)
    if not _take(lock):
        if _locked(archive):
            return False  # another process is dumping
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # left by a dump that died
        if not _take(lock):
            return False
    partial = archive.with_suffix(f".{os.getpid()}.partial")
    try:
        with contextlib.suppress(OSError):
            os.nice(10)  # behind every interactive process: the archive only saves time later
        command = [
            java,
            "-Xshare:dump",
            f"-XX:SharedClassListFile={class_list}",
            f"-XX:SharedArchiveFile={partial}",
            *jvm_options,
            "-cp",
            class_path,
        ]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=_DUMP_TIMEOUT_SECONDS, check=False)
        if done.returncode != 0 or not partial.is_file():
            print(f"java -Xshare:dump exited with {done.returncode}", file=sys.stderr)
            return False
        # Installed only once a JVM like the sessions' maps it (-Xshare:on fails instead of ignoring it).
        check = [java, "-Xshare:on", f"-XX:SharedArchiveFile={partial}", *jvm_options, "-cp", class_path, "-version"]
        loaded = subprocess.run(check, stdin=subprocess.DEVNULL, timeout=_DUMP_TIMEOUT_SECONDS, check=False)
        if loaded.returncode != 0:
            print(f"the new archive does not load (java exited with {loaded.returncode})", file=sys.stderr)
            _unusable(archive).touch()
            return False
        os.replace(partial, archive)
        # Archives of other Spark or Java installations that no session used for a while.
        _remove_old(archive.parent, "spark-*.jsa", _UNUSED_ARCHIVE_SECONDS)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"cannot dump the archive: {exc}", file=sys.stderr)
        return False
    finally:
        for leftover in (partial, class_list, class_list.with_suffix(".classpath"), lock):
            with contextlib.suppress(OSError):
                leftover.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of the background process that :func:`stopped` starts."""
    parser = argparse.ArgumentParser(prog="python -m components.common.spark_class_archive")
    parser.add_argument("--java", required=True)
    parser.add_argument("--class-list", required=True, type=Path)
    parser.add_argument("--class-path-file", required=True, type=Path)
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--jvm-option", action="append", default=[])
    args = parser.parse_args(argv)
    class_path = args.class_path_file.read_text()
    return 0 if dump(args.java, args.class_list, class_path, args.archive, args.jvm_option) else 1


if __name__ == "__main__":
    sys.exit(main())
