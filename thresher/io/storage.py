"""One home for file access: local paths and object-store URIs behind one small API.

Every path thresher reads or writes may be a local path or a URI (`s3://`, `gs://`, `hdfs://`,
anything `pyarrow.fs` opens, and any fsspec protocol when fsspec is installed). Code outside this
module never calls `open`/`os.*` on an output path directly: it calls these functions, so the
same stage runs on a laptop and on a cluster whose data lives in a bucket.

Filesystems. `filesystem(path)` returns the `pyarrow.fs` filesystem that holds `path` and the
path inside it, cached per (scheme, bucket/host, options) in the process:
- local paths and `file://` URIs: `LocalFileSystem`;
- `s3://BUCKET/KEY`: `S3FileSystem` with short connect/request timeouts and a small retry limit
  (an unreachable endpoint is an error within seconds). Endpoint: `storage_options.endpoint_url`,
  else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or `endpoint_url` of the profile in
  `~/.aws/config` (`AWS_CONFIG_FILE`, `AWS_PROFILE`). Region: `storage_options.region`, else
  `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`. Credentials: `storage_options`
  (`key`/`secret`/`token`, or `access_key`/`secret_key`/`session_token`, or `anonymous: true`),
  else the AWS SDK's standard chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
  `~/.aws/credentials`, web identity, container and instance roles). When no source of
  credentials can be found the path is refused at once (one line naming it), instead of sending
  unsigned requests;
- `gs://` / `gcs://`: `GcsFileSystem` (Google default credentials; `STORAGE_EMULATOR_HOST` or
  `storage_options.endpoint_override` for an emulator);
- `hdfs://` / `viewfs://`: `HadoopFileSystem` (libhdfs, `HADOOP_HOME`, `CLASSPATH`);
- anything else: `pyarrow.fs.FileSystem.from_uri`, then fsspec (`PyFileSystem(FSSpecHandler)`).

Storage options. `output.storage_options` / `input.storage_options` of a job are registered with
`configure(prefix, options)`: every path under `prefix` then opens with them (also in spawned
worker processes: the registry travels in the environment variable `THRESHER_STORAGE_OPTIONS`,
never in a file). They never enter the manifest, the run state or the dumped job.

Errors. A bad URI, an unknown scheme, missing credentials, an unreachable endpoint, a missing
bucket: a `JobError` of one line that names the path (`s3://b/out: cannot read: ...`).

Writes. Objects are published whole: `write_bytes` (one PUT) and `put_file` (a finished local
file uploaded as one object: single PUT, or a multipart upload completed only at the end), so an
interrupted write leaves nothing under the final name; `common/atomic.py` routes its writes of
URIs here (through `commit_point` first, like a local rename). Parquet parts on an object store are
first written to a local spool file (`spool_path`, in `THRESHER_SPOOL_DIR` or the system temp
folder), checksummed, then uploaded.

`StoragePath` is a `str` (what `OutputLayout` returns) with the few `pathlib` methods the
pipeline uses (`exists`, `name`, `parent`, `/`, `glob`, `unlink`, `read_text`, ...), working on
local paths and URIs alike.
"""

from __future__ import annotations

import configparser
import datetime
import fnmatch
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from thresher.common import atomic
from thresher.specs import JobError

_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "viewfs://", "abfs://", "abfss://", "file://")
OPTIONS_ENV = "THRESHER_STORAGE_OPTIONS"  # the registry of `configure`, for spawned workers
SPOOL_ENV = "THRESHER_SPOOL_DIR"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 3
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
           "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
           "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")


# -- paths -------------------------------------------------------------------------------------
def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an object store (or any scheme) rather than a local path."""
    return "://" in str(path)


def scheme_of(path: str | os.PathLike[str]) -> str | None:
    """The lower-case scheme of a URI (`s3`), None for a local path."""
    m = _URI.match(str(path))
    return m.group(1).lower() if m else None


def local_path_or_none(path: str | os.PathLike[str]) -> str | None:
    """The absolute local path of `path` (a local path or a `file://` URI); None for a remote URI."""
    path = str(path)
    scheme = scheme_of(path)
    if scheme is None:
        return os.path.abspath(path)
    if scheme == "file":
        return os.path.abspath(urlsplit(path).path or "/")
    return None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether `path` lives on an object store / remote filesystem (not a local path or file://)."""
    return local_path_or_none(path) is None


def normalize(path: str | os.PathLike[str]) -> str:
    """A remote URI without `.`/`..`/doubled slashes/trailing slash (`s3://b/a/../c/` -> `s3://b/c`);
    a local path as it is. A `..` that climbs above the bucket is a JobError."""
    path = str(path)
    scheme = scheme_of(path)
    if scheme is None or scheme == "file":
        return path
    rest = path.split("://", 1)[1]
    netloc, _, key = rest.partition("/")
    if not netloc:
        raise JobError(f"{path}: no bucket or host in the URI (expected {scheme}://BUCKET/PATH)")
    if "?" in key or "#" in key:
        raise JobError(f"{path}: a query or fragment in a storage URI is not supported; "
                       f"give the settings in storage_options")
    norm = posixpath.normpath("/" + key) if key else "/"
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if ".." in norm.split("/"):
        raise JobError(f"{path}: climbs above the bucket")
    norm = norm.strip("/")
    return f"{scheme}://{netloc}/{norm}" if norm else f"{scheme}://{netloc}"


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for local paths and URIs alike."""
    base = str(base)
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def parent(path: str | os.PathLike[str]) -> str:
    """The folder holding `path` (a URI's parent stops at its bucket)."""
    path = str(path)
    if is_remote(path):
        path = normalize(path)
        scheme, rest = path.split("://", 1)
        netloc, _, key = rest.partition("/")
        key = posixpath.dirname(key)
        return f"{scheme}://{netloc}/{key}" if key else f"{scheme}://{netloc}"
    return os.path.dirname(path)


def basename(path: str | os.PathLike[str]) -> str:
    path = str(path)
    return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path)


# -- storage options ---------------------------------------------------------------------------
_registry: dict[str, dict[str, Any]] = {}
_registry_loaded = False
_lock = threading.Lock()


def configure(prefix: str | os.PathLike[str], options: dict[str, Any] | None, replace: bool = False) -> None:
    """Open every path under `prefix` with `options` from now on (this process and the worker
    processes it spawns afterwards). Nothing is written to disk. Without options nothing changes,
    unless `replace` (a job's own settings for its folder): then earlier ones for `prefix` go."""
    if not is_remote(prefix) or not (options or replace):
        return
    _load_registry()
    with _lock:
        if options:
            _registry[normalize(prefix)] = dict(options)
        elif _registry.pop(normalize(prefix), None) is None:
            return
        if _registry:
            os.environ[OPTIONS_ENV] = json.dumps(_registry, sort_keys=True, default=str)
        else:
            os.environ.pop(OPTIONS_ENV, None)


def _load_registry() -> None:
    global _registry_loaded
    if _registry_loaded:
        return
    with _lock:
        raw = os.environ.get(OPTIONS_ENV)
        if raw:
            try:
                loaded = json.loads(raw)
                if isinstance(loaded, dict):
                    for k, v in loaded.items():
                        _registry.setdefault(k, v)
            except ValueError:
                pass
        _registry_loaded = True


def options_for(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The storage options registered (`configure`) for the longest prefix of `path` ({} if none)."""
    _load_registry()
    path = str(path)
    if not _registry or not is_remote(path):
        return {}
    path = normalize(path)
    best, best_len = {}, -1
    for prefix, opts in _registry.items():
        if (path == prefix or path.startswith(prefix.rstrip("/") + "/")) and len(prefix) > best_len:
            best, best_len = opts, len(prefix)
    return dict(best)


# -- filesystems -------------------------------------------------------------------------------
_cache: dict[Any, tuple[pafs.FileSystem, str | None]] = {}


def filesystem(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
               ) -> tuple[pafs.FileSystem, str]:
    """The `pyarrow.fs` filesystem that holds `path`, and the path inside it.

    `storage_options` (else those `configure`d for the path) go to the filesystem's constructor
    (see the module docstring). A bad URI, unknown scheme or missing credentials is a JobError."""
    path = str(path)
    local = local_path_or_none(path)
    if local is not None:
        return pafs.LocalFileSystem(), local
    path = normalize(path)
    scheme = scheme_of(path)
    assert scheme is not None
    netloc, _, key = path.split("://", 1)[1].partition("/")
    opts = dict(storage_options) if storage_options is not None else options_for(path)
    env = tuple(os.environ.get(k) for k in _S3_ENV) if scheme in ("s3", "s3a") else ()
    cache_key = (scheme, netloc if scheme not in ("s3", "s3a", "gs", "gcs") else "",
                 json.dumps(opts, sort_keys=True, default=str), env)
    entry = _cache.get(cache_key)
    if entry is None:
        fs = _make_filesystem(scheme, netloc, path, opts)
        entry = (fs, _inner_prefix(fs, scheme, path, key))
        with _lock:
            _cache[cache_key] = entry
    fs, prefix = entry
    if scheme in ("s3", "s3a", "gs", "gcs"):
        inner = f"{netloc}/{key}" if key else netloc
    elif isinstance(fs, pafs.PyFileSystem):
        inner = path
    elif prefix is not None:
        inner = (prefix + key) if key else (prefix.rstrip("/") or "/")
    else:
        inner = pafs.FileSystem.from_uri(path)[1]
    return fs, inner


def _inner_prefix(fs: pafs.FileSystem, scheme: str, path: str, key: str) -> str | None:
    """How a URI's key maps to a path inside its (from_uri) filesystem: the part before the key
    (`/` for hdfs://, `CONTAINER/` for abfs://); None: ask `from_uri` for every path."""
    if scheme in ("s3", "s3a", "gs", "gcs") or isinstance(fs, pafs.PyFileSystem):
        return None
    if scheme in ("hdfs", "viewfs"):
        return "/"
    try:
        inner = pafs.FileSystem.from_uri(path)[1]
    except (pa.ArrowException, OSError, ValueError):
        return "/"
    if key and inner.endswith(key):
        return inner[: len(inner) - len(key)]
    return None


def clear_cache() -> None:
    """Forget the cached filesystems (tests that change credentials or endpoints)."""
    with _lock:
        _cache.clear()


def _make_filesystem(scheme: str, netloc: str, path: str, opts: dict[str, Any]) -> pafs.FileSystem:
    try:
        if scheme in ("s3", "s3a"):
            return _s3(path, opts)
        if scheme in ("gs", "gcs"):
            kw: dict[str, Any] = {"retry_time_limit": datetime.timedelta(seconds=5)}
            emulator = os.environ.get("STORAGE_EMULATOR_HOST")
            if not (emulator or _gcs_credentials_known(opts)):
                raise JobError(f"{path}: no Google Cloud credentials found (set GOOGLE_APPLICATION_CREDENTIALS, "
                               f"run `gcloud auth application-default login`, or give storage_options: "
                               f"{{access_token: ..., credential_token_expiration: ...}} or {{anonymous: true}})")
            if emulator and "endpoint_override" not in opts:
                u = urlsplit(emulator if "://" in emulator else "http://" + emulator)
                kw.update(endpoint_override=u.netloc, scheme=u.scheme)
            kw.update({k: v for k, v in opts.items() if k != "credentials"})
            return pafs.GcsFileSystem(**kw)
        if scheme in ("hdfs", "viewfs"):
            if opts:
                host = f"{scheme}://{netloc.rsplit('@', 1)[-1].split(':')[0]}"
                port = int(netloc.rsplit(":", 1)[1]) if ":" in netloc.rsplit("@", 1)[-1] else 0
                return pafs.HadoopFileSystem(host, port, **opts)
            return pafs.FileSystem.from_uri(path)[0]
        if not opts:
            try:
                return pafs.FileSystem.from_uri(path)[0]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        return _fsspec(scheme, path, opts)
    except JobError:
        raise
    except TypeError as exc:
        raise JobError(f"{path}: bad storage_options for {scheme}:// ({' '.join(str(exc).split())})") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise storage_error(path, exc, "open") from None


def _fsspec(scheme: str, path: str, opts: dict[str, Any]) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        try:
            fs = fsspec.filesystem(scheme, **opts)
        except (ImportError, ValueError) as exc:
            if "Protocol not known" not in str(exc) and "nknown" not in str(exc):
                raise JobError(f"{path}: {scheme}:// needs an fsspec backend that is not usable here "
                               f"({' '.join(str(exc).split())})") from None
        else:
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    raise JobError(f"{path}: unknown storage scheme {scheme}:// (pyarrow.fs knows s3://, gs://, hdfs://, "
                   f"file://; other schemes need fsspec and its backend installed)")


def _aws_profile_settings() -> dict[str, str]:
    """region / endpoint_url / credential hints of the profile in `~/.aws/config` and `~/.aws/credentials`."""
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    out: dict[str, str] = {}
    files = [(os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config"),
              "default" if profile == "default" else f"profile {profile}"),
             (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"), profile)]
    for fname, section in files:
        if not os.path.isfile(fname):
            continue
        cp = configparser.RawConfigParser()
        try:
            cp.read(fname)
        except configparser.Error:
            continue
        sec = section if cp.has_section(section) else (profile if cp.has_section(profile) else None)
        if sec is None:
            continue
        for k, v in cp.items(sec):
            out.setdefault(k, v)
        if cp.has_option(sec, "s3"):  # nested `s3 =\n  endpoint_url = ...`
            for line in cp.get(sec, "s3").splitlines():
                k, _, v = line.partition("=")
                if k.strip() == "endpoint_url" and v.strip():
                    out["endpoint_url"] = v.strip()
    return out


_CRED_KEYS = ("aws_access_key_id", "role_arn", "credential_process", "sso_session", "sso_start_url",
              "web_identity_token_file", "credential_source")


def _s3_credentials_known(opts: dict[str, Any], profile: dict[str, str]) -> bool:
    if opts.get("anonymous") or opts.get("anon") or opts.get("access_key") or opts.get("key") \
            or opts.get("role_arn") or opts.get("credentials") == "default":
        return True
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(k) for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ROLE_ARN")):
        return True
    if any(profile.get(k) for k in _CRED_KEYS):
        return True
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return False
    try:  # the instance metadata service (an EC2 instance role), with botocore's 1 s timeout
        import botocore.session
    except ImportError:
        return False
    try:
        return botocore.session.get_session().get_credentials() is not None
    except Exception:
        return False


def s3_settings(path: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Endpoint (scheme + host), region and explicit credentials for an s3:// path, from
    `opts`, the environment and the AWS config files (shared by pyarrow and the lock's boto3)."""
    profile = _aws_profile_settings()
    endpoint = (opts.get("endpoint_url") or opts.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or profile.get("endpoint_url"))
    region = (opts.get("region") or opts.get("region_name") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or profile.get("region"))
    out: dict[str, Any] = {"endpoint_url": None, "region": region,
                           "key": opts.get("access_key") or opts.get("key"),
                           "secret": opts.get("secret_key") or opts.get("secret"),
                           "token": opts.get("session_token") or opts.get("token"),
                           "anonymous": bool(opts.get("anonymous") or opts.get("anon"))}
    if endpoint:
        endpoint = str(endpoint)
        u = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise JobError(f"{path}: bad S3 endpoint {endpoint!r} (expected http(s)://HOST[:PORT])")
        out["endpoint_url"] = f"{u.scheme}://{u.netloc}"
    if not _s3_credentials_known(opts, profile):
        raise JobError(f"{path}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                       f"a profile in ~/.aws/credentials, or storage_options; "
                       f"storage_options: {{anonymous: true}} for a public bucket)")
    return out


def _gcs_credentials_known(opts: dict[str, Any]) -> bool:
    """Whether Google's default credentials have a source (the order google-auth tries them)."""
    if opts.get("anonymous") or opts.get("access_token") or opts.get("credentials") == "default":
        return True
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("GCE_METADATA_HOST"):
        return True
    gcloud = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    if os.path.isfile(os.path.join(gcloud, "application_default_credentials.json")):
        return True
    try:  # a Google Compute Engine machine: the metadata server holds its service account
        with open("/sys/class/dmi/id/product_name", encoding="utf-8") as fh:
            return "Google" in fh.read()
    except OSError:
        return False


_S3_PASSTHROUGH = ("role_arn", "session_name", "external_id", "load_frequency", "background_writes",
                   "default_metadata", "proxy_options", "force_virtual_addressing", "tls_ca_file_path",
                   "allow_delayed_open", "request_timeout", "connect_timeout", "check_directory_existence_before_creation")
_S3_OURS = ("endpoint_url", "endpoint_override", "region", "region_name", "access_key", "key", "secret_key",
            "secret", "session_token", "token", "anonymous", "anon", "credentials", "scheme", "max_attempts")


def _s3(path: str, opts: dict[str, Any]) -> pafs.FileSystem:
    unknown = sorted(k for k in opts if k not in _S3_PASSTHROUGH + _S3_OURS)
    if unknown:
        raise JobError(f"{path}: unknown storage_options {unknown} for s3:// (known: "
                       f"{', '.join(sorted(_S3_OURS + _S3_PASSTHROUGH))})")
    s = s3_settings(path, opts)
    kw: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(opts.get("max_attempts", MAX_ATTEMPTS))),
    }
    if s["endpoint_url"]:
        u = urlsplit(s["endpoint_url"])
        kw.update(endpoint_override=u.netloc, scheme=u.scheme)
    if s["region"]:
        kw["region"] = s["region"]
    elif s["endpoint_url"]:
        kw["region"] = "us-east-1"
    if s["anonymous"]:
        kw["anonymous"] = True
    elif s["key"]:
        kw.update(access_key=s["key"], secret_key=s["secret"])
        if s["token"]:
            kw["session_token"] = s["token"]
    kw.update({k: v for k, v in opts.items() if k in _S3_PASSTHROUGH})
    return pafs.S3FileSystem(**kw)


def storage_error(path: str | os.PathLike[str], exc: BaseException, doing: str = "read") -> JobError:
    """`exc` (raised by a filesystem while it worked on `path`) as a one-line JobError naming `path`."""
    if isinstance(exc, JobError):
        return exc
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^When [^:]+: ", "", text)  # pyarrow's "When getting information for key ... :"
    hint = ""
    if "NETWORK_CONNECTION" in text or "connect to server" in text.lower() or "Couldn't connect" in text:
        hint = "; is the endpoint reachable (AWS_ENDPOINT_URL, storage_options.endpoint_url)?"
    elif "ACCESS_DENIED" in text or "AccessDenied" in text or "403" in text:
        hint = "; check the credentials (AWS_ACCESS_KEY_ID, ~/.aws/credentials, storage_options)"
    elif "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        hint = "; create the bucket first"
    if len(text) > 400:
        text = text[:400] + "..."
    return JobError(f"{path}: cannot {doing}: {text}{hint}")


# -- reading -----------------------------------------------------------------------------------
def info(path: str | os.PathLike[str]) -> pafs.FileInfo:
    """The `pyarrow.fs.FileInfo` of `path` (type NotFound when there is nothing)."""
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner)
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(path, exc) from None


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file (or folder) exists at `path`."""
    if local_path_or_none(path) is not None:
        return os.path.exists(local_path_or_none(path))  # type: ignore[arg-type]
    return info(path).type != pafs.FileType.NotFound


def is_file(path: str | os.PathLike[str]) -> bool:
    local = local_path_or_none(path)
    if local is not None:
        return os.path.isfile(local)
    return info(path).type == pafs.FileType.File


def is_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder (on an object store: a prefix that holds objects)."""
    local = local_path_or_none(path)
    if local is not None:
        return os.path.isdir(local)
    return info(path).type == pafs.FileType.Directory


def size(path: str | os.PathLike[str]) -> int:
    """The size of a file in bytes (a JobError naming it when it is missing)."""
    local = local_path_or_none(path)
    if local is not None:
        return os.stat(local).st_size
    i = info(path)
    if i.type != pafs.FileType.File:
        raise JobError(f"{path}: not found")
    return int(i.size)


def mtime(path: str | os.PathLike[str]) -> float:
    """The modification time of a file (seconds since the epoch; 0.0 where the store has none)."""
    local = local_path_or_none(path)
    if local is not None:
        return os.stat(local).st_mtime
    i = info(path)
    if i.type == pafs.FileType.NotFound:
        raise JobError(f"{path}: not found")
    return i.mtime.timestamp() if i.mtime is not None else 0.0


def open_input(path: str | os.PathLike[str]) -> Any:
    """A seekable binary file opened for reading (close it, or use it as a context manager)."""
    local = local_path_or_none(path)
    if local is not None:
        return open(local, "rb")
    fs, inner = filesystem(path)
    try:
        return fs.open_input_file(inner)
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(path, exc) from None


def parquet_file(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """A `pyarrow.parquet.ParquetFile` opened on the right filesystem."""
    if local_path_or_none(path) is not None:
        return pq.ParquetFile(str(path))
    fh = open_input(path)
    try:
        return pq.ParquetFile(fh)
    except OSError as exc:
        fh.close()
        raise storage_error(path, exc) from None


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """A Parquet file (or the named columns) as a table."""
    if local_path_or_none(path) is not None:
        return pq.read_table(str(path), columns=columns)
    fs, inner = filesystem(path)
    try:
        return pq.read_table(inner, columns=columns, filesystem=fs)
    except OSError as exc:
        raise storage_error(path, exc) from None


def read_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The schema of a Parquet file."""
    if local_path_or_none(path) is not None:
        return pq.read_schema(str(path))
    with open_input(path) as fh:
        try:
            return pq.read_schema(fh)
        except OSError as exc:
            raise storage_error(path, exc) from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a file."""
    local = local_path_or_none(path)
    if local is not None:
        with open(local, "rb") as fh:
            return fh.read()
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as fh:
            return fh.read()
    except (OSError, pa.ArrowException) as exc:
        if info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None
        raise storage_error(path, exc) from None


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file."""
    return json.loads(read_bytes(path).decode("utf-8"))


def list_names(folder: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the entries directly inside `folder` ([] when it does not exist)."""
    local = local_path_or_none(folder)
    if local is not None:
        try:
            return sorted(os.listdir(local))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, inner = filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=False))
    except (OSError, pa.ArrowException) as exc:
        if "not a directory" in str(exc).lower() or "is a file" in str(exc).lower():
            return []
        raise storage_error(folder, exc) from None
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def glob(pattern: str | os.PathLike[str]) -> list[str]:
    """The paths matching `pattern` (`*`, `?`, `[...]` in any segment; `**` for any depth), sorted."""
    pattern = str(pattern)
    if local_path_or_none(pattern) is not None and not pattern.startswith("file://"):
        import glob as globmod

        return sorted(globmod.glob(pattern, recursive=True))
    if pattern.startswith("file://"):
        prefix = "file://"
        pattern = pattern[len(prefix):]
        import glob as globmod

        return sorted(prefix + p for p in globmod.glob(pattern, recursive=True))
    scheme, rest = pattern.split("://", 1)
    netloc, _, key = rest.partition("/")
    segs = [s for s in key.split("/") if s]
    i = next((k for k, s in enumerate(segs) if any(c in s for c in "*?[")), None)
    if i is None:
        return [pattern] if exists(pattern) else []
    base = f"{scheme}://{netloc}" + ("/" + "/".join(segs[:i]) if i else "")
    rest_pat = "/".join(segs[i:])
    fs, inner = filesystem(base)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive="**" in rest_pat
                                                   or len(segs) - i > 1))
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(base, exc) from None
    out = []
    n_inner = len(inner.rstrip("/")) + 1
    regex = re.compile(_glob_regex(rest_pat))
    for i_ in infos:
        rel = i_.path[n_inner:]
        if regex.fullmatch(rel):
            out.append(f"{base}/{rel}")
    return sorted(out)


def _seg_regex(seg: str) -> str:
    out, i = "", 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and seg.find("]", i + 2) != -1:
            j = seg.find("]", i + 2)
            body = seg[i + 1:j]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def _glob_regex(pat: str) -> str:
    """A regex for a relative glob: `*`, `?`, `[...]` within one segment, `**` any depth."""
    segs = pat.split("/")
    out = ""
    for k, seg in enumerate(segs):
        last = k == len(segs) - 1
        if seg == "**":
            out += ".*" if last else "(?:[^/]+/)*"
        else:
            out += _seg_regex(seg) + ("" if last else "/")
    return out


# -- writing and removing ----------------------------------------------------------------------
def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Publish `data` as the whole file/object `path` (atomically: a temporary renamed locally,
    one PUT on an object store), through `commit_point`."""
    atomic.write_bytes_atomic(data, path)


def open_output_stream(path: str | os.PathLike[str]) -> Any:
    """A binary output stream (an object store publishes the object when it is closed; prefer
    `write_bytes` / `put_file`, which never publish half an object)."""
    local = local_path_or_none(path)
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return open(local, "wb")
    fs, inner = filesystem(path)
    try:
        return fs.open_output_stream(inner)
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(path, exc, "write") from None


def _put_bytes(path: str, data: bytes) -> None:
    """One object, one PUT: the data is handed to the stream in one call and the stream closed
    (only then does the object exist). Errors are OSErrors (atomic turns them into WriteErrors)."""
    fs, inner = filesystem(path)
    try:
        out = fs.open_output_stream(inner)
        out.write(data)
        out.close()
    except pa.ArrowException as exc:
        raise OSError(" ".join(str(exc).split())) from None


def put_file(local: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Upload a finished local file (or folder) to `path` as whole objects (no commit_point:
    callers run it first). The upload runs inside pyarrow, so the object appears at its end
    (a single PUT, or a multipart upload that is completed only after its last part)."""
    local = str(local)
    dst_local = local_path_or_none(path)
    if dst_local is not None:
        if os.path.isdir(local):
            shutil.copytree(local, dst_local, dirs_exist_ok=True)
        else:
            shutil.copyfile(local, dst_local)
        return
    fs, inner = filesystem(path)
    try:
        if os.path.isdir(local):
            for dirpath, _, files in os.walk(local):
                for f in sorted(files):
                    rel = os.path.relpath(os.path.join(dirpath, f), local).replace(os.sep, "/")
                    pafs.copy_files(os.path.join(dirpath, f), f"{inner}/{rel}",
                                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
                                    use_threads=False)
        else:
            pafs.copy_files(local, inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
                            use_threads=False)
    except pa.ArrowException as exc:
        raise OSError(" ".join(str(exc).split())) from None


def remove_file(path: str | os.PathLike[str], missing_ok: bool = True) -> None:
    """Delete one file/object."""
    local = local_path_or_none(path)
    if local is not None:
        try:
            os.unlink(local)
        except FileNotFoundError:
            if not missing_ok:
                raise
        return
    fs, inner = filesystem(path)
    try:
        fs.delete_file(inner)
    except FileNotFoundError:
        if not missing_ok:
            raise
    except (OSError, pa.ArrowException) as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            if not missing_ok:
                raise FileNotFoundError(2, "No such file or directory", str(path)) from None
            return
        raise storage_error(path, exc, "delete") from None


def remove_tree(folder: str | os.PathLike[str]) -> None:
    """Remove a folder thresher wrote (scratch space), and everything in it."""
    local = local_path_or_none(folder)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    fs, inner = filesystem(folder)
    try:
        fs.delete_dir_contents(inner, missing_dir_ok=True)
        fs.delete_dir(inner)
    except (OSError, pa.ArrowException):
        pass  # nothing there (or only a dangling directory marker)


def make_dirs(folder: str | os.PathLike[str]) -> None:
    """Create a local folder (and its parents); on an object store nothing (prefixes need none)."""
    local = local_path_or_none(folder)
    if local is not None:
        os.makedirs(local, exist_ok=True)


def _spool_dir() -> str:
    return os.environ.get(SPOOL_ENV) or os.path.join(tempfile.gettempdir(), "thresher-spool")


def spool_path(name: str) -> str:
    """A fresh local file name for a file that will be uploaded whole (see the module docstring)."""
    folder = _spool_dir()
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_SPOOL_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def clean_spool() -> list[str]:
    """Delete the spool files of processes of this machine that are gone (a killed run's); returns them."""
    folder = _spool_dir()
    removed = []
    for name in list_names(folder):
        m = _SPOOL_NAME.match(name)
        if not m:
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # alive (or not ours to judge)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
        except OSError:
            pass
    return removed


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open_input(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


atomic.register_object_store(_put_bytes, put_file, is_remote)


# -- StoragePath -------------------------------------------------------------------------------
class StoragePath(str):
    """A path (local or URI) that is a `str`, with the `pathlib` methods the pipeline uses."""

    __slots__ = ()

    def __new__(cls, path: str | os.PathLike[str]) -> "StoragePath":
        return super().__new__(cls, os.fspath(path))

    # pure path parts
    @property
    def remote(self) -> bool:
        return is_remote(self)

    @property
    def name(self) -> str:
        return basename(self)

    @property
    def stem(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[:i] if 0 < i < len(name) - 1 else name

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def parent(self) -> "StoragePath":
        return StoragePath(parent(self))

    @property
    def parents(self) -> list["StoragePath"]:
        out, p = [], self.parent
        while p not in out and p != (out[-1] if out else self):
            out.append(p)
            p = p.parent
        return out

    def __truediv__(self, other: str | os.PathLike[str]) -> "StoragePath":
        return StoragePath(join(self, os.fspath(other)))

    def joinpath(self, *parts: str) -> "StoragePath":
        return StoragePath(join(self, *parts))

    def with_name(self, name: str) -> "StoragePath":
        return self.parent / name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, os.PathLike) and not isinstance(other, str):
            return str(self) == os.fspath(other)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __fspath__(self) -> str:
        return str(self)

    # filesystem calls
    def exists(self) -> bool:
        return exists(self)

    def is_file(self) -> bool:
        return is_file(self)

    def is_dir(self) -> bool:
        return is_dir(self)

    def is_symlink(self) -> bool:
        local = local_path_or_none(self)
        return os.path.islink(local) if local is not None else False

    def resolve(self) -> "StoragePath":
        local = local_path_or_none(self)
        return StoragePath(Path(local).resolve()) if local is not None else StoragePath(normalize(self))

    def stat(self) -> Any:
        local = local_path_or_none(self)
        if local is not None:
            return os.stat(local)
        return types.SimpleNamespace(st_size=size(self), st_mtime=mtime(self))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        local = local_path_or_none(self)
        if local is not None:
            Path(local).mkdir(parents=parents, exist_ok=exist_ok)

    def unlink(self, missing_ok: bool = False) -> None:
        remove_file(self, missing_ok=missing_ok)

    def read_bytes(self) -> bytes:
        return read_bytes(self)

    def read_text(self, encoding: str = "utf-8") -> str:
        return read_text(self, encoding)

    def iterdir(self) -> Iterator["StoragePath"]:
        return iter([self / n for n in list_names(self)])

    def glob(self, pattern: str) -> Iterator["StoragePath"]:
        local = local_path_or_none(self)
        if local is not None:
            return iter(sorted(StoragePath(p) for p in Path(local).glob(pattern)))
        return iter([StoragePath(p) for p in glob(join(self, pattern))])
