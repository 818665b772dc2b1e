"""Hardening: foreign folders, workers that die with their parent, SIGTERM, resumable
`select --output`, Spark local retries, and kills at random moments and at every commit point.

Kills are real: SIGKILL of a process, or `THRESHER_FAULT=commit:N`, which `os._exit(137)`s a
process just before its N-th commit (thresher/common/atomic.py `commit_point`). The many
short killed runs are forked from one helper process that imported thresher once (a fresh
interpreter costs seconds of imports per run): each child is a separate process running
`thresher.commands.cli.main([...])`, i.e. the `thresher` command, and dies as a killed
command does (no cleanup, no finally blocks).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.commands.cli import main as cli_main
from thresher.common.atomic import PARENT_GONE_EXIT
from thresher.config import JobError
from thresher.io.output import remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HEUR = {"scorers": [{"type": "heuristics"}], "filters": [{"column": "heuristics_pass", "value": True}],
        "selector": {"type": "random", "budget": 0.3}}

# Runs plan items in forked children of one process; prints one exit code per item.
# item: {"argv": [...], "env": {...}, "kill_after": seconds | null, "fresh": folder, "until_ok": bool}
# until_ok: repeat the item with THRESHER_FAULT=commit:1, 2, ... until a run exits 0.
# kill_after: SIGKILL the run then; a run that finished first is redone (its folder `fresh`
# removed) with 0.7 times the delay, so every item ends killed. Output: [exit code, delay used].
FORKER = r"""
import json, os, shutil, signal, sys, time
from thresher.commands.cli import main

def child(argv, env):
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:
            rc = main(argv)
        except BaseException:
            rc = 99
        os._exit(rc)
    return pid

out = []
for item in json.load(open(sys.argv[1])):
    if item.get("until_ok"):
        codes, n = [], 0
        while not codes or codes[-1] != 0:
            n += 1
            argv = [a.replace("{N}", str(n)) for a in item["argv"]]
            pid = child(argv, {**item["env"], "THRESHER_FAULT": f"commit:{n}"})
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            assert n < 200, codes
        out.append(codes)
        continue
    delay = item.get("kill_after")
    while True:
        if item.get("fresh"):
            shutil.rmtree(item["fresh"], ignore_errors=True)
        t0 = time.perf_counter()
        pid = child(item["argv"], item["env"])
        if delay is not None:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # a finished child is a zombie until waited for: no error
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if delay is None or code != 0:
            break
        delay *= 0.7
    out.append([code, time.perf_counter() - t0 if delay is None else delay])
print(json.dumps(out))
"""


def forked(tmp_path: Path, plan: list[dict]) -> list:
    (tmp_path / "forker.py").write_text(FORKER)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    res = subprocess.run([sys.executable, str(tmp_path / "forker.py"), str(tmp_path / "plan.json")],
                         env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("part-*.parquet"))}


def counts(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text())["counts"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def write_job(tmp_path: Path, job: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job))
    return path


def assert_same_as_clean(out: Path, clean: Path) -> None:
    assert digest(out) == digest(clean) and digest(clean), out
    assert counts(out) == counts(clean), out
    assert not [p for p in out.rglob(".*.tmp-*")], out  # the rerun removed what the kill left


# -- 1. a folder thresher did not write is refused before anything is touched -----------------------


def test_foreign_folder_refused_untouched(tmp_path: Path, corpus: Path, capsys) -> None:
    job_file = write_job(tmp_path, job_dict(corpus, tmp_path / "unused"))
    u = tmp_path / "U"
    (u / "sub").mkdir(parents=True)
    (u / ".notes.tmp-1").write_text("x\n")
    (u / "data.csv").write_text("k\n")
    before = snapshot(u)
    assert cli_main(["run", str(job_file), "--output", str(u), "-q"]) == 2
    assert "not written by thresher" in capsys.readouterr().err
    assert snapshot(u) == before
    assert not (u / "_thresher").exists()


def test_output_dot_in_a_foreign_tree_refused_untouched(tmp_path: Path, corpus: Path, monkeypatch,
                                                        capsys) -> None:
    """`--output .` in a tree of someone's files: nothing deleted anywhere, nothing created."""
    job_file = write_job(tmp_path, job_dict(corpus, tmp_path / "unused"))
    tree = tmp_path / "home"
    for rel, text in {"notes.txt": "n", ".draft.tmp-12": "d", "a/b/.part-00000.parquet.tmp-7": "p",
                      "a/_scores/.part-00001.parquet.tmp-8": "s", "a/b/c/deep.json": "{}",
                      "proj/_thresher/done/.score-00000.json.tmp-9": "m"}.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    before = snapshot(tree)
    monkeypatch.chdir(tree)
    assert cli_main(["run", str(job_file), "--output", ".", "-q"]) == 2
    assert "not written by thresher" in capsys.readouterr().err
    assert snapshot(tree) == before
    assert not (tree / "_thresher").exists()


def test_cleanup_removes_only_thresher_temporaries(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "out"
    run(job_dict(corpus, out), progress=False)
    stale = [out / ".part-00000.parquet.tmp-99998", out / "_scores" / ".part-00001.parquet.tmp-99999",
             out / "_thresher" / "done" / ".score-00002.json.tmp-4", out / "._manifest.json.tmp-5"]
    kept = [out / "mine" / ".draft.tmp-3", out / "mine" / "_scores" / ".part-00000.parquet.tmp-6",
            out / ".notes.tmp-1"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(out)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_object_store_paths_are_a_clear_error(tmp_path: Path, corpus: Path) -> None:
    """Object stores are supported now (tests/test_storage.py); a bad URI is one line, nothing written."""
    with pytest.raises(JobError, match=r"output.path: nosuchscheme://bucket/out: unknown storage scheme nosuchscheme://"):
        run(job_dict(corpus, "nosuchscheme://bucket/out"), progress=False)
    with pytest.raises(JobError, match=r"output.path: s3:///out: no bucket"):
        run(job_dict(corpus, "s3:///out"), progress=False)
    assert not Path("nosuchscheme:").exists() and not Path("s3:").exists()


def _start_two_worker_run(tmp_path: Path) -> tuple[subprocess.Popen, dict, Path]:
    """A `thresher run` with 2 workers that sleep 0.4 s before each commit; returns once a
    worker committed a score marker (so the pool is up and mid-work)."""
    write_parquet_corpus(tmp_path / "c", 10, 100)
    out = tmp_path / "out"
    job = job_dict(tmp_path / "c", out, engine={"local": {"workers": 2}}, **HEUR)
    cmd = [sys.executable, "-m", "thresher.commands.cli", "run", str(write_job(tmp_path, job)), "-q"]
    proc = subprocess.Popen(cmd, env={**ENV, "THRESHER_FAULT": "delay:0.4"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    done = out / "_thresher" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and not list(done.glob("score-*.json")) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None and list(done.glob("score-*.json")), "the run did not get going"
    return proc, job, out


@pytest.mark.timeout(180)
def test_sigkill_of_main_pid_kills_workers_and_nothing_is_written_after(tmp_path: Path) -> None:
    proc, _, out = _start_two_worker_run(tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len([c for c in children if "spawn_main" in " ".join(c.cmdline())]) == 2
    proc.send_signal(signal.SIGKILL)  # the main pid only, as the OOM killer does
    proc.wait()
    right_after = snapshot(out)
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphaned workers: {[c.pid for c in alive]}"
    time.sleep(1.0)  # longer than a worker's pre-commit sleep: an orphan would have committed by now
    assert snapshot(out) == right_after
    assert len(list((out / "_thresher" / "done").glob("score-*.json"))) < 10


@pytest.mark.timeout(180)
def test_sigterm_stops_cleanly_and_rerun_matches_clean_run(tmp_path: Path) -> None:
    proc, job, out = _start_two_worker_run(tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 143, err
    assert "Traceback" not in err
    assert err.count("thresher: terminated (SIGTERM); re-run the same command to resume\n") == 1
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphaned processes: {[c.pid for c in alive]}"
    assert not (out / "_manifest.json").exists()
    one = {"engine": {"local": {"workers": 1}}}  # the engine is not part of the job's hashes
    res = run({**job, **one}, progress=False)  # the lock was released: the rerun resumes
    assert res.manifest["resumed_shards"]["score"] >= 1
    run({**job, **one, "output": {"path": str(tmp_path / "clean")}}, progress=False)
    assert_same_as_clean(out, tmp_path / "clean")


def test_worker_whose_parent_changed_exits_without_writing(tmp_path: Path) -> None:
    """The portable half: before a commit, a guarded process checks its parent pid."""
    target = tmp_path / "marker.json"
    code = ("import os, sys; from thresher.common import atomic; atomic.guard_parent(os.getppid() + 100000); "
            "atomic.write_text_atomic('x', sys.argv[1])")
    res = subprocess.run([sys.executable, "-c", code, str(target)], env=ENV)
    assert res.returncode == PARENT_GONE_EXIT
    assert not target.exists()


# -- 3. `thresher select SRC --output NEW` killed part-way resumes ---------------------------------------


def test_select_into_new_folder_resumes_after_a_kill_at_every_commit(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", 3, 200)
    src = tmp_path / "src"
    run(job_dict(tmp_path / "c", src, **HEUR), progress=False)
    new = str(tmp_path / "new-{N}")
    [codes] = forked(tmp_path, [{"argv": ["select", str(src), "--output", new, "--set", "selector.budget=0.5",
                                          "-q"], "env": {}, "until_ok": True}])
    assert codes[:-1] == [137] * (len(codes) - 1)
    # the copy (state, then per shard: scores, rejected, marker), then the run on NEW
    assert len(codes) - 1 >= (1 + 3 * 3) + (1 + 3 + 1 + 2 * 3 + 2)
    clean = tmp_path / f"new-{len(codes)}"  # the last run met no fault: a clean select
    assert counts(clean)["selected"] > counts(src)["selected"]
    for n in range(1, len(codes)):
        out = tmp_path / f"new-{n}"
        if n == 3:  # a partial copy with state: `thresher select NEW` works on it too
            assert cli_main(["select", str(out), "--set", "selector.budget=0.5", "-q"]) == 0
        else:
            assert cli_main(["select", str(src), "--output", str(out), "--set", "selector.budget=0.5", "-q"]) == 0
        assert_same_as_clean(out, clean)
        assert digest(out / "_scores") == digest(src / "_scores")


# -- 4. Spark local mode honours spark.task.maxFailures -----------------------------------------------


def test_local_master_gets_task_retries() -> None:
    from thresher.pipelines.spark_engine import local_master

    conf = {"spark.task.maxFailures": "4"}
    assert local_master("local[*]", conf) == "local[*,4]"
    assert local_master("local[2]", conf) == "local[2,4]"
    assert local_master("local", conf) == "local[1,4]"
    assert local_master("local[2,3]", conf) == "local[2,3]"  # explicit wins
    assert local_master("spark://h:7077", conf) == "spark://h:7077"
    assert local_master("local[*]", {}) == "local[*]"
    with pytest.raises(JobError, match="maxFailures"):
        local_master("local[2]", {"spark.task.maxFailures": "many"})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_spark_local_star_with_max_failures_retries_an_injected_fault(tmp_path: Path) -> None:
    pytest.importorskip("pyspark")
    write_parquet_corpus(tmp_path / "c", 3, 100)
    conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.task.maxFailures": "2"}
    job = job_dict(tmp_path / "c", tmp_path / "out", engine={"name": "spark", "spark": {"master": "local[*]",
                                                                                        "conf": conf}}, **HEUR)
    cmd = [sys.executable, "-m", "thresher.commands.cli", "run", str(write_job(tmp_path, job)), "-q"]
    res = subprocess.run(cmd, env={**ENV, "THRESHER_SPARK_FAULT": "score:1:fail_before"}, capture_output=True,
                         text=True, timeout=220)
    assert res.returncode == 0, res.stderr[-3000:]
    run(job_dict(tmp_path / "c", tmp_path / "clean", **HEUR), progress=False)
    assert digest(tmp_path / "out") == digest(tmp_path / "clean")


# -- 5. kills at random moments and at every commit point: the rerun equals a clean run -----------------


@pytest.fixture
def kill_job(tmp_path: Path) -> tuple[dict, Path]:
    write_parquet_corpus(tmp_path / "c", 3, 400)
    job = job_dict(tmp_path / "c", tmp_path / "out-{N}", **HEUR)
    return job, write_job(tmp_path, job)


def test_kill_at_every_commit_point_then_rerun_is_identical(tmp_path: Path, kill_job) -> None:
    """Score parts, rejected parts, score markers, selection parts, the select marker, parts,
    write markers, the manifest, the summary (and state.json): a kill just before each."""
    job, job_file = kill_job
    [codes] = forked(tmp_path, [{"argv": ["run", str(job_file), "--output", str(tmp_path / "out-{N}"), "-q"],
                                 "env": {}, "until_ok": True}])
    n_shards = 3
    assert codes[:-1] == [137] * (len(codes) - 1)
    assert len(codes) - 1 >= 1 + 3 * n_shards + n_shards + 1 + 2 * n_shards + 2
    clean = tmp_path / f"out-{len(codes)}"
    for n in range(1, len(codes)):
        out = tmp_path / f"out-{n}"
        assert not (out / "_summary.txt").exists()
        run({**job, "output": {"path": str(out)}}, progress=False)
        assert_same_as_clean(out, clean)


def test_sigkill_at_ten_random_moments_then_rerun_is_identical(tmp_path: Path, kill_job) -> None:
    job, job_file = kill_job
    argv = ["run", str(job_file), "--output", str(tmp_path / "clean"), "-q"]
    [[rc, seconds]] = forked(tmp_path, [{"argv": argv, "env": {}}])
    assert rc == 0
    rng = random.Random(1234)
    delays = [rng.uniform(0.02, 0.95) * seconds for _ in range(10)]
    plan = [{"argv": ["run", str(job_file), "--output", str(tmp_path / f"out-{i}"), "-q"], "env": {},
             "kill_after": d, "fresh": str(tmp_path / f"out-{i}")} for i, d in enumerate(delays)]
    results = forked(tmp_path, plan)
    assert [code for code, _ in results] == [-signal.SIGKILL] * 10, results
    for i in range(10):
        out = tmp_path / f"out-{i}"
        run({**job, "output": {"path": str(out)}}, progress=False)
        assert_same_as_clean(out, tmp_path / "clean")
