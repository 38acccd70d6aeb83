"""Storage by URI: the one seam between ctpipe and the places its data lives.

Every configured location (the dataset source, the reports folder, the inference log, the
pipeline root) is one of:

- a plain path or a ``file://`` URI: read and written exactly as :mod:`components.common.io`
  does, every file through a temporary path renamed into place;
- an object-store URI, ``s3://bucket/key`` (``s3fs`` is a dependency of ctpipe), or
  ``gs://`` / ``abfs://`` / ``az://`` through the same fsspec call once their driver
  (``gcsfs``, ``adlfs``) is installed. Without the driver the error names the URI and the
  package to install.

Credentials and endpoints come from the environment only, never from a configured location:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_DEFAULT_REGION``, and the Google and Azure SDKs' own
variables; on a cluster a Kubernetes Secret maps them into the pod. A location that carries a
password or a query string (a SAS token, a signature) is refused by :func:`check_location`,
and every location that goes into a message or a log line passes through :func:`redact`.
A filesystem is made once per protocol and set of those environment variables, so changed
credentials take effect on the next call.

What is atomic:

- a local file is written to a temporary path beside it and renamed into place, so a reader
  sees the old file or the new one, never half of it;
- an object is uploaded in one request (a PUT, or a multipart upload that the store
  publishes only when it completes), so a reader sees the old object or the new one;
- nothing more: an output of several objects (a folder of Parquet files, an inference log
  partition) appears one object at a time, and a reader listing the prefix meanwhile sees a
  subset. Readers that need all of a multi-object output must wait for a marker or a
  manifest that its writer writes last; ctpipe's own multi-object outputs (the inference
  log) are read as "what is there now", for which any subset of whole objects is valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from components.common import io as local_io
from components.common.errors import DataError, StorageError

if TYPE_CHECKING:  # imported by the functions that read or write tables: the specs import this module
    import pandas as pd

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
# Environment variables the object-store SDKs read credentials, endpoints and regions from.
_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCS_", "FSSPEC_")
# Exceptions of these packages are the store's (or its client's) answer: they become StorageError.
_CLIENT_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "google", "azure"})
_TABLE_SUFFIXES = {".parquet", ".pq", ""}  # KFP artifact paths have no suffix; ctpipe writes those as Parquet
_TEXT_SUFFIXES = {".csv", ".txt", ".tsv"}

_filesystems: dict[str, tuple[str, Any]] = {}  # protocol -> (environment key, filesystem)
_filesystems_lock = threading.Lock()


def protocol(location: str | os.PathLike[str]) -> str:
    """The protocol of a location: ``""`` for a plain path, else the URI scheme in lower case (``s3``, ``file``)."""
    text = os.fspath(location)
    scheme, sep, _ = text.partition("://")
    return scheme.lower() if sep else ""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is in an object store (anything but a plain path or ``file://``)."""
    return protocol(location) not in LOCAL_PROTOCOLS


def redact(location: str | os.PathLike[str]) -> str:
    """``location`` safe for a message or a log line: no password, no query string, no fragment.

    ``s3://bucket/key`` and plain paths come back unchanged; ``abfs://c@acct.dfs.../p?sig=x``
    comes back as ``abfs://c@acct.dfs.../p?***``.
    """
    text = os.fspath(location)
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:  # not a parsable URI (e.g. a malformed IPv6 host): show only its scheme
        return f"{protocol(text)}://***"
    if parts.password is None and not parts.query and not parts.fragment:
        return text  # nothing to hide; rebuilding would also drop the empty authority of sqlite:////path
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def check_location(location: str, key: str = "location") -> str:
    """Validate a configured location: refuse one that carries credentials.

    Args:
        location: A path or URI from the configuration.
        key: The configuration key, for the message.

    Returns:
        ``location`` unchanged.

    Raises:
        ValueError: It has a password or a query string (which can carry a token or a signature).
    """
    if "://" not in location:
        return location
    parts = urlsplit(location)
    if parts.password is not None or parts.query:
        raise ValueError(
            f"{key}: {redact(location)} carries credentials (a password or a query string); give the bare "
            "location and put credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)"
        )
    return location


def local_path(location: str | os.PathLike[str]) -> Path:
    """The local path of a plain path or a ``file://`` URI.

    Raises:
        StorageError: ``location`` is in an object store, or a ``file://`` URI names another host.
    """
    text = os.fspath(location)
    scheme = protocol(text)
    if scheme not in LOCAL_PROTOCOLS:
        raise StorageError(f"{redact(text)}: expected a local path or a file:// URI here, found a {scheme}:// URI")
    if not scheme:
        return Path(text)
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"{redact(text)}: a file:// URI must name a local path (file:///path), not a host")
    return Path(unquote(parts.path))


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location`` with ``parts`` appended: a path for a path, a URI (``/``-separated) for a URI."""
    text = os.fspath(location)
    if "://" in text:
        return "/".join([text.rstrip("/"), *(part.strip("/") for part in parts if part)])
    return os.path.join(text, *parts)


def with_name(location: str | os.PathLike[str], name: str) -> str:
    """The location of ``name`` in the same folder (or prefix) as ``location``."""
    text = os.fspath(location)
    if "://" in text:
        head = text.rstrip("/").rpartition("/")[0]
        return f"{head}/{name}"
    return str(Path(text).with_name(name))


def filesystem(location: str | os.PathLike[str]) -> tuple[Any, str]:
    """The fsspec filesystem that holds ``location``, and the path to give it.

    Local locations get fsspec's ``LocalFileSystem`` and the local path. Remote ones get a
    filesystem configured from the environment alone (no arguments), kept while the
    relevant environment variables do not change; it caches no listings, so what another
    process wrote meanwhile is seen.

    Raises:
        StorageError: The protocol is unknown, or its driver package is not installed.
    """
    text = os.fspath(location)
    scheme = protocol(text)
    if scheme in LOCAL_PROTOCOLS:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(local_path(text))
    fs = _remote_filesystem(scheme, text)
    return fs, fs._strip_protocol(text)


def _environment_key() -> str:
    """A digest of the environment variables the SDKs read; it keys the cached filesystems (kept in memory only)."""
    relevant = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    return hashlib.sha256(json.dumps(relevant).encode()).hexdigest()


def _remote_filesystem(scheme: str, location: str) -> Any:
    import fsspec
    from fsspec.registry import known_implementations

    key = _environment_key()
    with _filesystems_lock:
        cached = _filesystems.get(scheme)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            cls = fsspec.get_filesystem_class(scheme)
        except ImportError:
            package = known_implementations.get(scheme, {}).get("class", scheme).split(".")[0]
            raise StorageError(
                f"{redact(location)}: the {scheme}:// driver is not installed; install the '{package}' package "
                f"(pip install {package}) to use {scheme}:// locations",
                hint=f"ctpipe ships s3fs for s3://; {scheme}:// works through the same layer once {package} is there.",
            ) from None
        except ValueError:
            raise StorageError(
                f"{redact(location)}: unknown storage protocol {scheme!r}; expected a path, file://, s3://, gs:// "
                "or abfs://"
            ) from None
        # A fresh instance (fsspec's instance cache would keep credentials the environment no longer has),
        # without a listings cache: other writers (the model server, another task) add objects meanwhile.
        fs = cls(skip_instance_cache=True, use_listings_cache=False)
        _filesystems[scheme] = (key, fs)
        return fs


def forget_shared_listings(location: str | os.PathLike[str]) -> None:
    """Make other libraries' filesystems for ``location``'s store list it afresh.

    Libraries that read through fsspec themselves (Feast's Dask offline store, for one) get
    fsspec's shared, cached instance, whose listings cache does not see objects written since
    it listed a prefix: the next read then names a file it cannot find. Dropping the shared
    instances makes their next read start from the store. Local paths need nothing.
    """
    scheme = protocol(location)
    if scheme in LOCAL_PROTOCOLS:
        return
    import fsspec

    with contextlib.suppress(ImportError, ValueError):
        fsspec.get_filesystem_class(scheme).clear_instance_cache()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _store_errors(location: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a remote store's refusals and failures into a :class:`StorageError` naming the (redacted) location.

    ``FileNotFoundError`` passes through (callers name what was missing); local errors are untouched.
    """
    if not is_remote(location):
        yield
        return
    shown = redact(location)
    try:
        yield
    except (StorageError, DataError, FileNotFoundError):
        raise
    except PermissionError as exc:
        raise StorageError(
            f"{shown}: access denied by the object store ({_first_line(exc)}); check the credentials in the "
            "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://) and the bucket's permissions"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in _CLIENT_PACKAGES:
            raise
        name = type(exc).__name__
        if name in {"NoCredentialsError", "PartialCredentialsError"}:
            raise StorageError(
                f"{shown}: no object-store credentials in the environment ({_first_line(exc)}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS)"
            ) from exc
        raise StorageError(f"{shown}: the object store failed: {name}: {_first_line(exc)}") from exc


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file, folder, object or prefix exists at ``location``.

    Raises:
        StorageError: The store refused the request or cannot be reached.
    """
    if not is_remote(location):
        return local_path(location).exists()
    fs, path = filesystem(location)
    with _store_errors(location):
        return bool(fs.exists(path))


def is_dir(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a folder (or a prefix with objects below it)."""
    if not is_remote(location):
        return local_path(location).is_dir()
    fs, path = filesystem(location)
    with _store_errors(location):
        return bool(fs.isdir(path))


@contextlib.contextmanager
def open_read(location: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a file or object for reading bytes.

    Raises:
        FileNotFoundError: Nothing is there.
        StorageError: The store refused the request or cannot be reached.
    """
    fs, path = filesystem(location)
    with _store_errors(location), fs.open(path, "rb") as handle:
        yield handle


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The bytes of a file or object."""
    with open_read(location) as handle:
        return handle.read()


def read_text(location: str | os.PathLike[str]) -> str:
    """The UTF-8 text of a file or object."""
    return read_bytes(location).decode()


def find(location: str | os.PathLike[str]) -> list[str]:
    """Every file below a folder (or object below a prefix), as ``/``-separated relative paths in path order.

    Path order compares the parts (``a/b`` before ``a-c``), as sorting local paths does.
    Nothing below (or nothing there) gives an empty list.
    """
    if not is_remote(location):
        root = local_path(location)
        if not root.is_dir():
            return []
        return [p.relative_to(root).as_posix() for p in sorted(p for p in root.rglob("*") if p.is_file())]
    fs, path = filesystem(location)
    prefix = path.rstrip("/") + "/"
    with _store_errors(location):
        keys = fs.find(prefix)
    relative = [key[len(prefix) :] for key in keys if key.startswith(prefix)]
    return sorted(relative, key=lambda rel: rel.split("/"))


def fingerprint(location: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, or of every file below a folder in path order (with their relative paths).

    The same bytes give the same digest wherever they are: a file on local disk and its copy
    in a bucket fingerprint alike (the local case is :func:`components.common.io.file_sha256`).

    Raises:
        DataError: Nothing is at ``location``.
        StorageError: The store refused the request or cannot be reached.
    """
    if not exists(location):
        raise DataError(f"{redact(location)}: no such file or folder")
    if not is_remote(location):
        return local_io.file_sha256(local_path(location))
    digest = hashlib.sha256()
    folder = is_dir(location)
    files = [(rel, join(location, rel)) for rel in find(location)] if folder else [("", os.fspath(location))]
    for rel, file in files:
        if folder:
            digest.update(rel.encode())
        with open_read(file) as handle:
            while chunk := handle.read(local_io.HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def read_table(location: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV or Parquet file (or a folder of Parquet files), local or in an object store.

    Args:
        location: The file or folder: a path, ``file://``, ``s3://``, ...

    Returns:
        The table.

    Raises:
        DataError: Nothing is there, the file is empty, or it is not a readable table.
        StorageError: The store refused the request or cannot be reached.
    """
    import pandas as pd

    shown = redact(location)
    remote = is_remote(location)
    fs, path = filesystem(location)
    with _store_errors(location):
        if not fs.exists(path):
            raise DataError(f"{shown}: no such file or folder")
        folder = bool(fs.isdir(path))
        if not folder and fs.size(path) == 0:
            raise DataError(f"{shown}: file is empty (0 bytes); expected a CSV or Parquet table")
    suffix = PurePosixPath(path).suffix.lower()
    try:
        with _store_errors(location):
            if folder or suffix in _TABLE_SUFFIXES:
                # Locally pyarrow opens the path itself, as it always has; remotely it reads through fsspec.
                return pd.read_parquet(path, filesystem=fs if remote else None)
            if suffix in _TEXT_SUFFIXES:
                sep = "\t" if suffix == ".tsv" else ","
                if not remote:
                    return pd.read_csv(path, sep=sep)
                with fs.open(path, "rb") as handle:
                    return pd.read_csv(handle, sep=sep)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{shown}: not a readable {suffix.lstrip('.') or 'parquet'} table: {_first_line(exc)}") from exc
    raise DataError(f"{shown}: unsupported file type {suffix!r}; expected .csv, .tsv or .parquet")


def read_parquet(location: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one Parquet file or object that is known to exist (no checks beyond the read itself)."""
    import pandas as pd

    if not is_remote(location):
        return pd.read_parquet(local_path(location))
    fs, path = filesystem(location)
    with _store_errors(location):
        return pd.read_parquet(path, filesystem=fs)


def _upload(local: Path, location: str | os.PathLike[str]) -> None:
    """Upload one local file as one object (published whole, or not at all)."""
    fs, path = filesystem(location)
    with _store_errors(location):
        fs.put_file(str(local), path)


def write_bytes(location: str | os.PathLike[str], data: bytes) -> str:
    """Write bytes to a file (atomically, by rename) or an object (one PUT).

    Returns:
        ``location`` as a string.
    """
    if not is_remote(location):
        with local_io.atomic_path(local_path(location)) as tmp:
            tmp.write_bytes(data)
        return os.fspath(location)
    fs, path = filesystem(location)
    with _store_errors(location):
        fs.pipe_file(path, data)
    return os.fspath(location)


def write_text(location: str | os.PathLike[str], text: str) -> str:
    """Write UTF-8 text to a file or an object (see :func:`write_bytes`)."""
    if not is_remote(location):
        local_io.write_text(local_path(location), text)
        return os.fspath(location)
    return write_bytes(location, text.encode())


def write_json(location: str | os.PathLike[str], payload: Any) -> str:
    """Write ``payload`` as indented JSON to a file or an object, as :func:`components.common.io.write_json` does."""
    if not is_remote(location):
        local_io.write_json(local_path(location), payload)
        return os.fspath(location)
    return write_bytes(location, local_io.json_text(payload).encode())


def write_parquet(location: str | os.PathLike[str], frame: pd.DataFrame) -> str:
    """Write a DataFrame as one Parquet file (atomically, by rename) or one object, without the index.

    Remotely the file is written to a local temporary folder first and then uploaded as one
    object, so a failed write never leaves a partial object behind.
    """
    if not is_remote(location):
        local_io.write_parquet(local_path(location), frame)
        return os.fspath(location)
    with tempfile.TemporaryDirectory(prefix="ctpipe-upload-") as folder:
        local = Path(folder) / "data.parquet"
        frame.to_parquet(local, index=False, row_group_size=local_io.PARQUET_ROW_GROUP_ROWS)
        _upload(local, location)
    return os.fspath(location)


def store_errors(location: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """The error translation of this module, for callers that use :func:`filesystem`'s fsspec object directly.

    Inside the block a remote store's refusal or failure becomes a :class:`StorageError` naming the
    (redacted) ``location``; ``FileNotFoundError`` and local errors pass through.
    """
    return _store_errors(location)
