"""Spark's class-data sharing archive: when sessions get one, how it is named, cleaned up, dropped and made.

The archive folder is a ``tmp_path`` (``CTPIPE_SPARK_CLASS_ARCHIVE``); the JVMs are the real
``java`` Spark would run. One test records the classes Spark's launcher loads, dumps an archive
through the module's background process and checks that a JVM then maps Spark's classes from it;
the others start at most ``java -version`` or the dump process with a missing ``java``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from components.common import spark_class_archive as cds
from components.common.spark_class_archive import ENV, Plan, cache_folder, failed, plan, stopped

AGENT_VARIABLES = (
    "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
    "SPARK_SUBMIT_OPTS",
    "SPARK_DAEMON_JAVA_OPTS",
)
HOUR = 3600.0
ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * HOUR


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The archive folder (not created yet), with no agent options and an empty Spark conf folder."""
    for name in AGENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    conf = tmp_path / "spark-conf"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    archives = tmp_path / "cds"
    monkeypatch.setenv(ENV, str(archives))
    return archives


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _java(*args: str) -> subprocess.CompletedProcess[str]:
    java = cds._java()
    assert java is not None, "no java on PATH or in JAVA_HOME"
    return subprocess.run([java, *args], capture_output=True, text=True, timeout=120, check=False)


# --- when a session gets an archive ----------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "No", " off "])
def test_disabled_values_turn_archives_off(value: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, value)
    assert cache_folder() is None
    planned = plan()
    assert planned == Plan() and planned.options == () and planned.state == "off"
    assert not folder.exists()


def test_the_default_folder_is_in_the_users_cache(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for value in (None, "", "  "):
        if value is None:
            monkeypatch.delenv(ENV)
        else:
            monkeypatch.setenv(ENV, value)
        assert cache_folder() == tmp_path / "xdg" / "ctpipe" / "spark-cds"
    monkeypatch.setenv(ENV, str(folder))
    assert cache_folder() == folder


def test_a_first_session_records_its_class_list_in_a_private_folder(folder: Path) -> None:
    planned = plan()
    assert planned.state == "recording"
    assert planned.archive is not None and planned.class_list is not None
    assert planned.archive.parent == folder and planned.archive.name.startswith("spark-")
    assert planned.archive.suffix == ".jsa" and len(planned.archive.stem) == len("spark-") + 16
    assert planned.class_list == folder / f"{planned.archive.stem}.{os.getpid()}.classlist"
    assert planned.options == (f"-XX:DumpLoadedClassList={planned.class_list}",)
    assert (folder.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JAVA_TOOL_OPTIONS", "-javaagent:/opt/agent.jar"),
        ("JDK_JAVA_OPTIONS", "-Xmx1g -XX:StartFlightRecording=duration=30s"),
        ("_JAVA_OPTIONS", "-agentlib:jdwp=transport=dt_socket,server=y"),
        ("SPARK_SUBMIT_OPTS", "-agentpath:/opt/libprofiler.so"),
        ("JAVA_TOOL_OPTIONS", "-Xrunjdwp:transport=dt_socket,server=y,suspend=n"),  # -agentlib:jdwp's old form
    ],
)
def test_a_jvm_agent_or_flight_recorder_gets_no_archive(
    variable: str, value: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan().state == "recording"  # the same environment without the agent
    for leftover in folder.iterdir():
        leftover.unlink()
    monkeypatch.setenv(variable, value)
    assert plan() == Plan()
    assert list(folder.iterdir()) == []


def test_an_agent_in_spark_defaults_gets_no_archive(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx2g -Dfile.encoding=UTF-8")  # options, but no agent
    assert plan().state == "recording"
    conf = tmp_path / "spark-conf" / "spark-defaults.conf"
    conf.write_text("spark.driver.extraJavaOptions -javaagent:/opt/jmx_prometheus_javaagent.jar=8090:config.yaml\n")
    assert plan() == Plan()


def test_an_existing_archive_is_used_and_marked_as_in_use(folder: Path) -> None:
    archive = plan().archive
    assert archive is not None
    archive.write_bytes(b"an archive")
    _age(archive, 10 * DAY)
    planned = plan()
    assert planned.state == "used" and planned.archive == archive and planned.class_list is None
    assert planned.options == (
        "-Xshare:auto",
        f"-XX:SharedArchiveFile={archive}",
        f"-XX:ErrorFile={folder}/hs_err_pid%p.log",
    )
    assert time.time() - archive.stat().st_mtime < 60  # not removed as an unused one


# --- the archive's name ----------------------------------------------------------------------


def test_the_archive_name_follows_the_java_installation_and_sparks_jars(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jdk = tmp_path / "jdk"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "lib").mkdir()
    (jdk / "bin" / "java").write_text("#!/bin/sh\n")
    modules = jdk / "lib" / "modules"
    modules.write_bytes(b"m" * 100)
    spark = tmp_path / "spark"
    (spark / "jars").mkdir(parents=True)
    (spark / "jars" / "spark-core.jar").write_bytes(b"j" * 100)
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    monkeypatch.setenv("SPARK_HOME", str(spark))

    def name() -> str:
        archive = plan().archive
        assert archive is not None
        return archive.name

    names = [name()]
    assert name() == names[0]  # stable while nothing changes

    modules.write_bytes(b"m" * 101)  # a Java update
    names.append(name())
    (spark / "jars" / "spark-core.jar").write_bytes(b"J" * 100)  # same size, a newer jar
    _age(spark / "jars" / "spark-core.jar", -5)
    names.append(name())
    (spark / "jars" / "delta.jar").write_bytes(b"d")  # a jar added
    names.append(name())
    other = tmp_path / "jdk2"
    shutil.copytree(jdk, other)
    monkeypatch.setenv("JAVA_HOME", str(other))  # another Java installation
    names.append(name())
    monkeypatch.setenv("SPARK_DIST_CLASSPATH", "/opt/hadoop/*")  # another class path
    names.append(name())
    assert len(set(names)) == len(names), names

    monkeypatch.setenv("JAVA_HOME", str(jdk))
    monkeypatch.delenv("SPARK_DIST_CLASSPATH")
    assert name() == names[3]  # back to the same installation: the same archive


# --- locks and leftovers -------------------------------------------------------------------------


def test_a_fresh_lock_means_another_process_is_dumping_a_stale_one_does_not(folder: Path) -> None:
    archive = plan().archive
    assert archive is not None
    lock = archive.with_suffix(".lock")
    lock.touch()
    assert plan() == Plan()
    _age(lock, cds._STALE_LOCK_SECONDS - 60)
    assert plan() == Plan()
    _age(lock, cds._STALE_LOCK_SECONDS + 60)
    assert plan().state == "recording"


def test_dump_waits_for_a_live_lock_and_takes_over_a_dead_one(folder: Path) -> None:
    archive = plan().archive
    assert archive is not None
    lock = archive.with_suffix(".lock")
    class_list = folder / f"{archive.stem}.1.classlist"

    def leftovers() -> tuple[Path, Path]:
        class_list.write_text("java/lang/Object\n")
        class_list.with_suffix(".classpath").write_text("")
        return class_list, class_list.with_suffix(".classpath")

    lock.touch()
    leftovers()
    missing_java = str(folder / "no-such-java")
    assert _dump_process(missing_java, class_list, archive) == 1
    # Another process holds the lock: nothing was touched, its files stay for it.
    assert lock.exists() and class_list.exists() and class_list.with_suffix(".classpath").exists()

    _age(lock, cds._STALE_LOCK_SECONDS + 60)
    assert _dump_process(missing_java, class_list, archive) == 1  # it tried: there is no such java
    assert not lock.exists() and not class_list.exists() and not class_list.with_suffix(".classpath").exists()
    assert not archive.exists() and list(folder.glob("*.partial")) == []


def _dump_process(java: str, class_list: Path, archive: Path) -> int:
    """Run the background dump as stopped() starts it (in its own process: it lowers its priority)."""
    command = [
        sys.executable,
        "-m",
        "components.common.spark_class_archive",
        "--java",
        java,
        "--class-list",
        str(class_list),
        "--class-path-file",
        str(class_list.with_suffix(".classpath")),
        "--archive",
        str(archive),
    ]
    return subprocess.run(command, capture_output=True, timeout=120, check=False, cwd=ROOT).returncode


def test_leftovers_of_killed_sessions_and_dumps_are_removed_once_stale(folder: Path) -> None:
    archive = plan().archive
    assert archive is not None
    # A session killed before it stopped leaves its class list; a dump that lost the lock race, also
    # its class path file; a dump process killed mid-way, its partial archive (about 200 MB for Spark).
    stale = [folder / f"{archive.stem}.111.classlist", folder / f"{archive.stem}.111.classpath"]
    recent = [folder / f"{archive.stem}.222.classlist", folder / f"{archive.stem}.222.classpath"]
    partial, live_partial = folder / f"{archive.stem}.333.partial", folder / f"{archive.stem}.444.partial"
    other = folder / "notes.txt"
    for path in (*stale, *recent, other):
        path.write_text("java/lang/Object\n")
        _age(path, 2 * HOUR)
    for path in recent:
        _age(path, cds._STALE_LIST_SECONDS - 60)
    for path, age in ((partial, cds._STALE_LOCK_SECONDS + 60), (live_partial, cds._STALE_LOCK_SECONDS - 60)):
        path.write_bytes(b"half an archive")
        _age(path, age)
    plan()
    assert [path.exists() for path in stale] == [False, False]
    assert [path.exists() for path in recent] == [True, True] and other.exists()
    assert not partial.exists() and live_partial.exists()


# --- an archive the JVM does not use -------------------------------------------------------------


def test_an_archive_the_jvm_ignores_is_removed_and_none_is_made_again(folder: Path) -> None:
    archive = plan().archive
    assert archive is not None
    archive.write_bytes(b"\0" * 4096)  # not an archive of this Java
    planned = plan()
    assert planned.state == "used"
    # -Xshare:auto: the JVM starts, without sharing (what started() reads from java.vm.info).
    ran = _java(*planned.options, "-version")
    assert ran.returncode == 0, ran.stderr
    assert "mixed mode" in ran.stderr and "sharing" not in ran.stderr
    cds._give_up(archive)  # what started() does then
    assert not archive.exists() and archive.with_suffix(".unusable").exists()
    # The marker: this Spark and Java record no class list and get no archive again.
    assert plan() == Plan()
    assert list(folder.glob("*.classlist")) == []


def test_a_jvm_that_does_not_start_with_its_archive_drops_it(folder: Path) -> None:
    recording = plan()
    assert recording.archive is not None
    failed(recording)  # a recording session: there was no archive to blame
    assert not recording.archive.with_suffix(".unusable").exists()
    recording.archive.write_bytes(b"archive")
    used = plan()
    failed(used)
    assert not recording.archive.exists() and recording.archive.with_suffix(".unusable").exists()
    assert plan() == Plan()


# --- for real: record, dump in the background, map --------------------------------------------


def _spark_class_path() -> list[str]:
    """Spark's jars, as the driver JVM's ``java.class.path`` lists them."""
    jars = sorted(str(jar) for jar in (cds._spark_home() / "jars").glob("*.jar"))
    assert len(jars) > 100, jars
    return jars


def _failure(log: Path) -> str:
    """What the background dump reported when it failed (its log), else an empty string."""
    text = log.read_text() if log.exists() else ""
    return text if any(m in text for m in ("exited with", "does not load", "cannot dump")) else ""


def _shared(output: str) -> set[str]:
    """Classes ``-Xlog:class+load`` reports as mapped from the archive."""
    return {line.split()[1] for line in output.splitlines() if "source: shared objects file" in line}


def test_a_recorded_session_gives_an_archive_the_next_jvm_maps(folder: Path) -> None:
    """Record what Spark's launcher loads, dump it in the background as stopped() does, map it in a new JVM.

    ``SparkSubmit --version`` loads some 3,700 classes from Spark's ~300 jars in a couple of
    seconds; a session loads more of the same jars. The dump keeps ``-Xmx`` as started() does.
    """
    jars = _spark_class_path()
    class_path = os.pathsep.join(jars)
    launcher = ("org.apache.spark.deploy.SparkSubmit", "--version")
    java = cds._java()
    assert java is not None
    recording = plan()
    assert recording.state == "recording" and recording.archive is not None and recording.class_list is not None
    archive = recording.archive
    # Archives of other installations: one unused for more than two weeks, one used recently.
    unused, recent = folder / "spark-0123456789abcdef.jsa", folder / "spark-fedcba9876543210.jsa"
    for path, age in ((unused, 15 * DAY), (recent, 13 * DAY)):
        path.write_bytes(b"old")
        _age(path, age)

    ran = _java(*recording.options, "-Xmx1g", "-cp", class_path, *launcher)
    assert ran.returncode == 0 and "version" in ran.stdout + ran.stderr, ran.stderr
    recorded = set(recording.class_list.read_text().splitlines())
    assert {"org/apache/spark/deploy/SparkSubmit", "scala/Option", "java/lang/Object"} <= recorded

    # What started() notes from the running JVM; stopped() starts the background dump.
    stopped(replace(recording, java=java, class_path=class_path, dump_options=("-Xmx1g",)))
    log = folder / f"{archive.stem}.log"
    deadline = time.monotonic() + 300
    while not (archive.exists() and not archive.with_suffix(".lock").exists()) and not _failure(log):
        assert time.monotonic() < deadline, "the background dump did not finish in 5 minutes"
        time.sleep(0.5)
    assert archive.is_file(), log.read_text() if log.exists() else "no log"
    assert not archive.with_suffix(".unusable").exists()
    assert not recording.class_list.exists() and not recording.class_list.with_suffix(".classpath").exists()
    assert list(folder.glob("*.partial")) == [] and not archive.with_suffix(".lock").exists()
    assert not unused.exists() and recent.exists()

    used = plan()
    assert used.state == "used" and used.archive == archive
    version = _java(*used.options, "-Xmx1g", "-cp", class_path, "-version")
    assert version.returncode == 0 and "sharing" in version.stderr, version.stderr  # what started() reads
    mapped = _java(*used.options, "-Xmx1g", "-Xlog:class+load=info", "-cp", class_path, *launcher)
    assert mapped.returncode == 0, mapped.stderr
    shared = _shared(mapped.stdout)
    # Spark's and Scala's classes come from the archive, not from their jars.
    assert {"org.apache.spark.deploy.SparkSubmit", "scala.Option", "java.lang.Object"} <= shared, mapped.stdout[-3000:]
    assert len(shared) > 2000

    # Spark's jars changed (one fewer): the JVM ignores the whole archive rather than map stale classes.
    other = os.pathsep.join(jars[:-1])
    stale = _java(*used.options, "-Xmx1g", "-cp", other, "-version")
    assert stale.returncode == 0 and "sharing" not in stale.stderr, stale.stderr
