"""Spark on an S3 store through Hadoop's ``s3a://`` connector: the jars, the Hadoop settings, the errors.

pyspark ships Hadoop's client but not its S3 connector. Three jars from Maven Central add it,
pinned here and nowhere else (:data:`JARS`): ``hadoop-aws`` of exactly the Hadoop version
pyspark ships, the AWS SDK v2 ``bundle`` that version of ``hadoop-aws`` was built against, and
``analyticsaccelerator-s3``, which ``hadoop-aws`` 3.5 links against (without it the connector
fails with ``ClassNotFoundException: software.amazon.s3.analyticsaccelerator...``).

- On a host (tests, a notebook) :func:`ensure_jars` downloads them once into a cache
  (``~/.cache/ctpipe/jars``, or ``CTPIPE_JARS_CACHE``), checks each against its pinned size,
  SHA-1 (the digest Maven Central publishes) and SHA-256, and a new session gets them on
  ``spark.jars`` (which also ships them to the executors of a cluster).
- In the components image they are in pyspark's own ``jars/`` folder, put there by the build
  from the same pins (``pipelines/images.py``), so nothing is downloaded at run time and every
  Spark process in the image (driver, master, worker, executor) has them on its classpath.

Endpoint and credentials come from the environment only (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``), as for the fsspec seam in
:mod:`components.common.storage`. They become Hadoop settings (:func:`hadoop_settings`):
the non-secret ones also as ``spark.hadoop.*`` on a new session's builder, the keys only on
the running session's Hadoop configuration (:func:`s3a_configured`). Never on the builder:
pyspark starts the JVM as ``spark-submit --conf key=value ...``, so a builder setting is
on a process command line that every user of the machine can read. From the Hadoop
configuration Spark ships them, in memory, to the executors with each job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from components.common import storage
from components.common.errors import ConfigError, DataError, StorageError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The Hadoop version pyspark ships (pyspark/jars/hadoop-client-api-<version>.jar); hadoop-aws must match it.
HADOOP_VERSION = "3.5.0"
S3_SCHEMES = frozenset({"s3", "s3a"})
MAVEN_REPO = "https://repo1.maven.org/maven2"
# Environment variables that override where the jars come from and where they are kept.
MAVEN_REPO_ENV = "CTPIPE_MAVEN_REPO"
JARS_CACHE_ENV = "CTPIPE_JARS_CACHE"
# Beside each verified jar: "<size> <mtime_ns> <sha256>", so a later session need not hash 700 MB again.
VERIFIED_SUFFIX = ".verified"
CHECKSUMS_FILE = "SHA256SUMS"

# Classes each jar provides: a session can use s3a:// only if its JVM loads all three.
_MARKER_CLASSES = (
    "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "software.amazon.awssdk.services.s3.S3Client",
    "software.amazon.s3.analyticsaccelerator.request.ObjectClient",
)
# Hadoop keys that hold a credential: set on the running session only, never logged or returned in a public view.
SECRET_KEYS = frozenset({"fs.s3a.access.key", "fs.s3a.secret.key", "fs.s3a.session.token"})
SIMPLE_PROVIDER = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
TEMPORARY_PROVIDER = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
_DOWNLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class Jar:
    """One pinned Maven artifact and its digests (SHA-1 as Maven Central publishes it, SHA-256 computed)."""

    group: str
    artifact: str
    version: str
    size: int
    sha1: str
    sha256: str

    @property
    def filename(self) -> str:
        """``<artifact>-<version>.jar``."""
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repo: str = MAVEN_REPO) -> str:
        """Its address in a Maven repository laid out as Maven Central is."""
        return f"{repo.rstrip('/')}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"


# hadoop-aws of the Hadoop pyspark ships; the SDK bundle and analytics accelerator versions are the ones
# hadoop-project-3.5.0.pom names (aws-java-sdk-v2.version, amazon-s3-analyticsaccelerator-s3.version).
JARS: tuple[Jar, ...] = (
    Jar(
        "org.apache.hadoop",
        "hadoop-aws",
        HADOOP_VERSION,
        938_071,
        "9e594525d264c0db653c7f68da98b245f7d61ea5",
        "66bd9eefb938b1a1657487324b63c13df2d8b17164a1dd24e0ef37b905bc5baa",
    ),
    Jar(
        "software.amazon.awssdk",
        "bundle",
        "2.35.4",
        686_119_507,
        "7252265e3970b214708e68a8b74a8fa8c875af1e",
        "db4b55f24ad1b4e70f17eb1717a4de76a8dadc5a27d764be7c44ff67b2c1c677",
    ),
    Jar(
        "software.amazon.s3.analyticsaccelerator",
        "analyticsaccelerator-s3",
        "1.3.1",
        2_473_459,
        "6c9bd0f6c440c9a78e82d272f5f0252d942419f6",
        "4959a9747cbb479c73c3ffbcd479bee5b014f8b2880994585a8693fb9d24675e",
    ),
)


# --- locations --------------------------------------------------------------------------------


def is_s3(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an ``s3://`` or ``s3a://`` URI."""
    return storage.protocol(location) in S3_SCHEMES


def check_s3_location(location: str, field: str) -> str:
    """Validate an ``s3://`` / ``s3a://`` location given as ``field``.

    Returns:
        ``location`` unchanged.

    Raises:
        ConfigError: It names no bucket, or carries credentials (a password or a query string).
    """
    try:
        storage.check_location(location, field)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    parts = urlsplit(location)
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise ConfigError(
            f"{field}: {storage.redact(location)} names no bucket; expected s3://BUCKET/KEY (or s3a://BUCKET/KEY)"
        )
    return location


def to_s3a(location: str) -> str:
    """The ``s3a://`` form of an ``s3://`` or ``s3a://`` URI, as Spark's Hadoop connector wants it."""
    scheme, _, rest = location.partition("://")
    if scheme.lower() not in S3_SCHEMES:
        raise ConfigError(f"{storage.redact(location)}: expected an s3:// or s3a:// URI, found {scheme}://")
    return f"s3a://{rest}"


def bucket_of(location: str) -> str:
    """The bucket of an ``s3://`` or ``s3a://`` URI."""
    return urlsplit(location).netloc.rpartition("@")[2]


# --- the jars ---------------------------------------------------------------------------------


def jars_cache() -> Path:
    """The folder the jars are downloaded to: ``CTPIPE_JARS_CACHE``, else ``~/.cache/ctpipe/jars``."""
    configured = os.environ.get(JARS_CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ctpipe" / "jars"


def pyspark_jars_dir() -> Path:
    """Spark's ``jars/`` folder (the classpath of every Spark process started from this installation).

    Spark's home, not ``pyspark.__file__``: under spark-submit (a driver pod of the Spark operator)
    ``pyspark`` is imported from ``$SPARK_HOME/python/lib/pyspark.zip``, which has no jars beside it.
    """
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home()).resolve() / "jars"


def pyspark_hadoop_version() -> str | None:
    """The Hadoop version pyspark ships, from its ``hadoop-client-api-<version>.jar`` (None if not found)."""
    for jar in sorted(pyspark_jars_dir().glob("hadoop-client-api-*.jar")):
        return jar.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    return None


def check_hadoop_version() -> None:
    """Check that the pinned ``hadoop-aws`` matches the Hadoop pyspark ships.

    Raises:
        ConfigError: They differ (a pyspark upgrade changed Hadoop; :data:`JARS` needs new pins).
    """
    shipped = pyspark_hadoop_version()
    if shipped is not None and shipped != HADOOP_VERSION:
        raise ConfigError(
            f"pyspark ships Hadoop {shipped} ({pyspark_jars_dir()}) but components/common/spark_s3.py pins "
            f"hadoop-aws {HADOOP_VERSION}; expected the same version",
            hint="Pin hadoop-aws of pyspark's Hadoop and the SDK bundle its hadoop-project pom names, with "
            "their checksums from Maven Central, in spark_s3.JARS.",
        )


def jars_on_classpath() -> bool:
    """Whether pyspark's ``jars/`` folder already holds the pinned jars (the components image)."""
    folder = pyspark_jars_dir()
    return all((folder / jar.filename).exists() for jar in JARS)


def _digests(path: Path) -> tuple[str, str]:
    sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_DOWNLOAD_CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
    return sha1.hexdigest(), sha256.hexdigest()


def verify_jar(path: Path, jar: Jar) -> None:
    """Check a jar file against its pins (size, SHA-1, SHA-256).

    Raises:
        ConfigError: The file is missing or differs, naming what was expected and what was found.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; expected {jar.filename} ({jar.size} bytes)")
    size = path.stat().st_size
    if size != jar.size:
        raise ConfigError(f"{path}: {size} bytes, expected {jar.size} for {jar.filename}")
    sha1, sha256 = _digests(path)
    if (sha1, sha256) != (jar.sha1, jar.sha256):
        raise ConfigError(
            f"{path}: checksum mismatch for {jar.filename}: expected sha1 {jar.sha1} sha256 {jar.sha256}, "
            f"found sha1 {sha1} sha256 {sha256}"
        )


def _stamp(path: Path, jar: Jar) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns} {jar.sha256}"


def _verified_before(path: Path, jar: Jar) -> bool:
    marker = path.with_name(path.name + VERIFIED_SUFFIX)
    try:
        return path.is_file() and marker.read_text().strip() == _stamp(path, jar)
    except OSError:
        return False


def _download(jar: Jar, target: Path, repo: str) -> None:
    """Download one jar beside ``target``, verify it and rename it into place (never a half file there)."""
    url = jar.url(repo)
    fd, name = tempfile.mkstemp(prefix=f".{jar.filename}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    while chunk := response.read(_DOWNLOAD_CHUNK):
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise ConfigError(
                    f"cannot download {url}: {exc}",
                    hint=f"Set {MAVEN_REPO_ENV} to a Maven mirror, or put {jar.filename} (sha256 {jar.sha256}) in "
                    f"{target.parent} ({JARS_CACHE_ENV} names another folder).",
                ) from exc
        try:
            verify_jar(tmp, jar)
        except ConfigError as exc:
            raise ConfigError(f"{url}: {exc}") from None
        tmp.chmod(0o644)  # mkstemp makes it private; a jar is public and other users' Spark may read the cache
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_jars(cache: Path | None = None, repo: str | None = None) -> list[Path]:
    """The pinned jars in ``cache``, downloaded and verified the first time.

    A jar already there is re-verified only when its size or modification time changed since
    it was last verified. Concurrent callers each download to a temporary file and rename it,
    so a reader never finds half a jar.

    Args:
        cache: Folder to keep them in (default :func:`jars_cache`).
        repo: Maven repository (default ``CTPIPE_MAVEN_REPO``, else Maven Central).

    Returns:
        The jar paths, in :data:`JARS` order.

    Raises:
        ConfigError: A download failed, a file does not match its pins, or pyspark's Hadoop is not the pinned one.
    """
    check_hadoop_version()
    folder = cache or jars_cache()
    repo = repo or os.environ.get(MAVEN_REPO_ENV, "").strip() or MAVEN_REPO
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for jar in JARS:
        path = folder / jar.filename
        if not _verified_before(path, jar):
            if path.exists():
                try:
                    verify_jar(path, jar)
                except ConfigError:
                    path.unlink()  # a stale or damaged copy: fetch it again
            if not path.exists():
                _download(jar, path, repo)
            path.with_name(path.name + VERIFIED_SUFFIX).write_text(_stamp(path, jar) + "\n")
        paths.append(path)
    return paths


def checksums_text() -> str:
    """``sha256sum -c`` input for the pinned jars (the image build checks the jars it copies with it)."""
    return "".join(f"{jar.sha256}  {jar.filename}\n" for jar in JARS)


def session_jars() -> list[str]:
    """What ``spark.jars`` needs for s3a:// in a new session: nothing in the image, the cached jars elsewhere."""
    if jars_on_classpath():
        return []
    return [str(path) for path in ensure_jars()]


def session_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Builder settings for a new session that reads and writes s3a://: the jars and the non-secret settings.

    The keys are not here (see the module docstring): set them on the running session with
    :func:`s3a_configured`.

    Raises:
        ConfigError: As :func:`ensure_jars` and :func:`hadoop_settings`.
    """
    conf = {f"spark.hadoop.{key}": value for key, value in public_settings(hadoop_settings(environ)).items()}
    jars = session_jars()
    if jars:
        conf["spark.jars"] = ",".join(jars)
    return conf


# --- Hadoop settings from the environment -------------------------------------------------------


def _endpoint(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, URL) of the S3 endpoint in the environment, S3-specific variable first (as botocore)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def hadoop_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``fs.s3a.*`` Hadoop settings the environment asks for, credentials included.

    - endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``): ``fs.s3a.endpoint``, path-style
      access (S3-compatible stores rarely resolve bucket subdomains) and TLS per its scheme;
    - region (``AWS_REGION`` or ``AWS_DEFAULT_REGION``): ``fs.s3a.endpoint.region``;
    - keys (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``):
      the simple (or temporary, with a token) credentials provider with those keys. Without
      keys the connector keeps its default chain (environment, web identity, instance role).

    The result holds secrets: pass it to :func:`s3a_configured`, show only :func:`public_settings`.

    Raises:
        ConfigError: Only one of the two keys is set, or the endpoint is not an http(s) URL.
    """
    env = os.environ if environ is None else environ
    settings: dict[str, str] = {}
    endpoint = _endpoint(env)
    if endpoint is not None:
        name, url = endpoint
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{name}: expected an http:// or https:// URL such as https://s3.example.com:9000, "
                f"found {storage.redact(url)!r}"
            )
        settings["fs.s3a.endpoint"] = url.rstrip("/")
        settings["fs.s3a.path.style.access"] = "true"
        settings["fs.s3a.connection.ssl.enabled"] = "true" if parts.scheme == "https" else "false"
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    if region:
        settings["fs.s3a.endpoint.region"] = region
    key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        present = "AWS_ACCESS_KEY_ID" if key else "AWS_SECRET_ACCESS_KEY"
        raise ConfigError(f"{present} is set but {missing} is not; expected both (or neither, for an IAM role)")
    if key:
        token = env.get("AWS_SESSION_TOKEN", "")
        settings["fs.s3a.aws.credentials.provider"] = TEMPORARY_PROVIDER if token else SIMPLE_PROVIDER
        settings["fs.s3a.access.key"] = key
        settings["fs.s3a.secret.key"] = secret
        if token:
            settings["fs.s3a.session.token"] = token
    return settings


def public_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` without the credentials: what may go into a builder, a log line or a message."""
    return {key: value for key, value in settings.items() if key not in SECRET_KEYS}


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The credential values of the environment, to scrub from any text that leaves this module."""
    env = os.environ if environ is None else environ
    return [v for v in (env.get("AWS_SECRET_ACCESS_KEY", ""), env.get("AWS_SESSION_TOKEN", "")) if len(v) >= 4]


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every credential value of the environment replaced by ``***``."""
    for value in secret_values(environ):
        text = text.replace(value, "***")
    return text


# --- a session that reads and writes s3a:// -----------------------------------------------------


@contextlib.contextmanager
def _quiet_py4j() -> Iterator[None]:
    """Keep py4j from logging the next calls: at DEBUG it logs every command, arguments (a secret) included."""
    loggers = [logging.getLogger(name) for name in ("py4j", "py4j.clientserver", "py4j.java_gateway")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _hadoop_conf(spark: SparkSession) -> Any:
    """The running context's Hadoop configuration (a JVM object); jobs copy it when they start."""
    context: Any = spark.sparkContext
    return context._jsc.hadoopConfiguration()


def check_s3a_classes(spark: SparkSession) -> None:
    """Check that the session's JVM loads the s3a connector and the AWS SDK.

    Raises:
        ConfigError: A class is missing: the JVM was started without the jars.
    """
    jvm_conf = _hadoop_conf(spark)
    for name in _MARKER_CLASSES:
        try:
            jvm_conf.getClassByName(name)
        except Exception:
            raise ConfigError(
                f"the Spark JVM of this process cannot load {name}: it was started without the s3a jars "
                f"({', '.join(jar.filename for jar in JARS)}); expected them on its classpath for s3:// paths",
                hint="pyspark starts one JVM per process, with the first session's spark.jars: read or write "
                "s3:// with batch_predict in a fresh process (it adds the jars), or create the first session with "
                "the settings of components.common.spark_s3.session_conf().",
            ) from None


def _close_cached_filesystems(spark: SparkSession, buckets: set[str]) -> None:
    """Close the JVM's cached s3a filesystems of ``buckets``.

    Hadoop caches one filesystem per scheme, bucket and user for the life of the JVM, which
    outlives a stopped session in this process: without this a later job would keep the
    endpoint and keys of the first one.
    """
    context: Any = spark.sparkContext
    jvm, conf = context._jvm, _hadoop_conf(spark)
    for bucket in sorted(buckets):
        with contextlib.suppress(Exception):
            jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI.create(f"s3a://{bucket}/"), conf).close()


@contextlib.contextmanager
def s3a_configured(spark: SparkSession, locations: list[str]) -> Iterator[None]:
    """Set the environment's s3a settings on the session's Hadoop configuration while the block runs.

    The keys go into the running JVM's configuration only (never a builder setting, a file or a
    log line); afterwards the previous values come back and the cached filesystems of the
    buckets are closed, so neither the keys nor a client holding them outlive the job.

    Args:
        spark: The session (its JVM must have the jars: :func:`check_s3a_classes`).
        locations: The ``s3://`` / ``s3a://`` locations the job reads and writes.

    Raises:
        ConfigError: The JVM lacks the jars, or the environment's settings are invalid.
    """
    check_s3a_classes(spark)
    settings = hadoop_settings()
    buckets = {bucket_of(location) for location in locations if is_s3(location)}
    jvm_conf = _hadoop_conf(spark)
    with _quiet_py4j():
        previous = {key: jvm_conf.get(key) for key in sorted(set(settings) | SECRET_KEYS)}
        # Keys the environment does not give (a session token from elsewhere) must not mix with the ones it does.
        for key in SECRET_KEYS - set(settings):
            jvm_conf.unset(key)
        for key, value in settings.items():
            jvm_conf.set(key, value)
    _close_cached_filesystems(spark, buckets)
    try:
        yield
    finally:
        _close_cached_filesystems(spark, buckets)
        with _quiet_py4j():
            for key, old in previous.items():
                if old is None:
                    jvm_conf.unset(key)
                else:
                    jvm_conf.set(key, old)


# --- errors ---------------------------------------------------------------------------------------

# What Spark's text says about a failed s3a request -> what to tell the user.
_DENIED = re.compile(
    r"AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|Status Code: 403|\b403 Forbidden|InvalidToken"
)
_NO_BUCKET = re.compile(r"NoSuchBucket|UnknownStoreException|[Bb]ucket .{0,80}does not exist")
_UNREACHABLE = re.compile(r"UnknownHostException|Connection refused|ConnectException|Unable to execute HTTP request")
_MISSING_CLASSES = re.compile(r"ClassNotFoundException: (?:org\.apache\.hadoop\.fs\.s3a|software\.amazon)")
_NOT_FOUND = re.compile(r"PATH_NOT_FOUND|Path does not exist|FileNotFoundException")


def _s3a_failure(text: str) -> bool:
    return "s3a://" in text or "software.amazon" in text or "S3AFileSystem" in text


def _reason(text: str) -> str:
    """The most specific line of a Java error: the last ``Caused by``, else the first line, shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    reason = causes[-1] if causes else (lines[0] if lines else "")
    return reason[:400]


@contextlib.contextmanager
def spark_errors(*locations: str) -> Iterator[None]:
    """Turn Spark's failures of s3a requests into errors that name the (redacted) location and the fix.

    The location named is the one the Java error mentions, else all of ``locations``. Errors
    that are not recognisably the store's (a model that raises, say) pass through unchanged.
    Every text that goes into the new error is scrubbed of the environment's credentials.

    Raises:
        StorageError: The store refused the request, the bucket does not exist, or it cannot be reached.
        DataError: The object does not exist.
        ConfigError: The JVM lacks the s3a jars.
    """
    try:
        yield
    except (StorageError, DataError, ConfigError):
        raise
    except Exception as exc:
        text = str(exc)
        if not _s3a_failure(text):
            raise
        remote = [location for location in locations if is_s3(location)]
        named = [location for location in remote if to_s3a(location).rstrip("/") in text] or remote
        shown = ", ".join(storage.redact(location) for location in named) or "s3a://"
        reason = scrub(_reason(text))
        endpoint = _endpoint(os.environ)
        where = f" at {storage.redact(endpoint[1])} ({endpoint[0]})" if endpoint else ""
        if _MISSING_CLASSES.search(text):
            raise ConfigError(f"{shown}: Spark cannot load the s3a connector ({reason})") from exc
        if _DENIED.search(text):
            raise StorageError(
                f"{shown}: access denied by the object store{where} to Spark's s3a request ({reason}); check the "
                "credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and "
                "the bucket's permissions"
            ) from exc
        if _NO_BUCKET.search(text):
            raise StorageError(f"{shown}: the bucket does not exist in the object store{where} ({reason})") from exc
        if _UNREACHABLE.search(text):
            raise StorageError(
                f"{shown}: Spark cannot reach the object store{where} ({reason}); check AWS_ENDPOINT_URL"
            ) from exc
        if _NOT_FOUND.search(text):
            raise DataError(f"{shown}: no such object or prefix ({reason})") from exc
        # Anything else is not the store's answer (a model that raises, say), even if its text names an s3a:// path.
        raise
