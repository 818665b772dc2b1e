"""A local S3 server for tests: moto's server mode (`moto[server]`) in a subprocess, on 127.0.0.1.

thresher talks HTTP to it exactly as to AWS S3 (through `pyarrow.fs.S3FileSystem` and, for the
lock, boto3): nothing of thresher's I/O is mocked. Needs `pip install "moto[server]" boto3` (the
`dev` extra); tests that use it skip when moto is missing.

Fixtures (tests/conftest.py):
- `s3_server` (session): starts the server once on a free port, waits until it answers, stops it at
  the end of the session. The value is an `S3Server`: `.endpoint` (`http://127.0.0.1:PORT`),
  `.env()` (the AWS_* variables that point a process at it: give them to a subprocess, or to Spark
  executors), `.make_bucket(prefix)` (a fresh bucket, returns `s3://NAME`), `.client()` (boto3).
- `s3_bucket` (per test): a fresh, empty bucket (`"s3://NAME"`) and, for the test's duration, this
  process's environment pointing at the server: `AWS_ACCESS_KEY_ID=testing`,
  `AWS_SECRET_ACCESS_KEY=testing`, `AWS_ENDPOINT_URL=http://127.0.0.1:PORT`, `AWS_REGION=us-east-1`,
  `AWS_EC2_METADATA_DISABLED=true`; every other AWS_* variable is removed (monkeypatch: restored after).
  Subprocesses started by the test inherit it (`os.environ`).

Without pytest: `with s3_server_process() as endpoint: uri = s3_bucket_uri(endpoint, "name")`
(the variables are then up to the caller: `server_env(endpoint)`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(endpoint: str) -> dict[str, str]:
    """The AWS_* variables that point a process at the server (test credentials)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def s3_server_process(workdir: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run a moto S3 server until the block ends; yields its endpoint `http://127.0.0.1:PORT`.
    Its log goes to `workdir/moto.log` (when given)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log: Any = subprocess.DEVNULL
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        log = open(Path(workdir) / "moto.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + timeout
        while not _answers(endpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"the moto S3 server exited with {proc.returncode} (is moto[server] installed?)")
            if time.time() > deadline:
                raise RuntimeError(f"the moto S3 server did not answer on {endpoint} within {timeout:.0f} s")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()


def client(endpoint: str) -> Any:
    """A boto3 S3 client on the server (test credentials, whatever this process's env holds)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY)


def s3_bucket_uri(endpoint: str, prefix: str = "test") -> str:
    """Create a fresh bucket (`PREFIX-<random>`) on the server; returns `s3://NAME`."""
    name = f"{prefix.lower().replace('_', '-')[:40]}-{uuid.uuid4().hex[:10]}"
    client(endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@dataclass
class S3Server:
    """A running server (the value of the `s3_server` fixture)."""

    endpoint: str

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        return server_env(self.endpoint)

    def make_bucket(self, prefix: str = "test") -> str:
        return s3_bucket_uri(self.endpoint, prefix)

    def client(self) -> Any:
        return client(self.endpoint)
