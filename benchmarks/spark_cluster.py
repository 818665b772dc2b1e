"""A Spark standalone master and its workers on 127.0.0.1, for the tests and the GPU check.

Each worker has its own working directory, current directory and temp/local dirs (as on
separate machines: nothing written by one executor is visible to another through a local
folder). `env` replaces the daemons' environment (e.g. without AWS_* variables, so executors
see only what the application sends them through `spark.executorEnv.*`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DISCOVERY = Path(__file__).resolve().parents[1] / "jobs" / "spark" / "get_gpus_resources.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(pred: Callable[[], bool], seconds: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    tail = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs if p.exists())
    raise RuntimeError(f"standalone cluster: {what} within {seconds:.0f} s\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def standalone_cluster(tmp: Path, gpus: int = 0, fake: bool = False, cores: int = 4, memory: str = "6g",
                       workers: int = 1, env: dict[str, str] | None = None) -> Iterator[str]:
    """spark://127.0.0.1:PORT with `workers` workers (`cores`, `memory` each) announcing `gpus` GPUs
    through the discovery script (`fake`: the script reports GPU ids 0..gpus-1 without a GPU);
    worker i works in `tmp/worker-i` (SPARK_WORKER_DIR, its cwd, TMPDIR and SPARK_LOCAL_DIRS);
    stopped on exit."""
    import pyspark

    from thresher.pipelines.java import ensure_java

    spark_home = os.path.dirname(pyspark.__file__)
    env = {**(os.environ if env is None else env), "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1"}
    if gpus:
        env["SPARK_WORKER_OPTS"] = (f"-Dspark.worker.resource.gpu.amount={gpus} "
                                    f"-Dspark.worker.resource.gpu.discoveryScript={DISCOVERY}")
    if fake:
        env["THRESHER_FAKE_GPUS"] = ",".join(str(i) for i in range(gpus))
    ensure_java(env)
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    master_log = tmp / "master.log"
    logs = [master_log]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", "0"], env=env, stdout=master_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
        _wait(lambda: _port_open(port), 90, "the master did not listen", logs)
        url = f"spark://127.0.0.1:{port}"
        for i in range(workers):
            home = tmp / (f"worker-{i}" if workers > 1 else "")
            work, scratch = home / "work", home / "tmp"
            work.mkdir(parents=True, exist_ok=True)
            scratch.mkdir(parents=True, exist_ok=True)
            log = tmp / (f"worker-{i}.log" if workers > 1 else "worker.log")
            logs.append(log)
            wenv = {**env, "SPARK_WORKER_DIR": str(work), "SPARK_LOCAL_DIRS": str(scratch), "TMPDIR": str(scratch)}
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", "0",
                 "--webui-port", "0", "--cores", str(cores), "--memory", memory, "--work-dir", str(work), url],
                env=wenv, cwd=home, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait(lambda: master_log.read_text(errors="replace").count("Registering worker") >= workers, 90,
              f"{workers} worker(s) did not register", logs)
        yield url
    finally:
        for p in reversed(procs):
            _stop(p)
