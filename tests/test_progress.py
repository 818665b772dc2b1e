"""Progress that moves: worker counts reach the driver while shards run, one line per stage when
stderr is not a terminal, nothing with -q, and no absurd rates when a stage was resumed."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import job_dict, write_parquet_corpus

from thresher import run
from thresher.commands.cli import main as cli_main
from thresher.common.progress import Progress, item_progress, report_steps
from thresher.config import load_job
from thresher.io.readers import InputShard
from thresher.pipelines import local

HEUR = {"scorers": [{"type": "heuristics"}], "filters": [{"column": "heuristics_pass", "value": True}],
        "selector": {"type": "random", "budget": 0.3}}


class Watched(Progress):
    """A live bar anywhere (as on a terminal), recording (label, n, total) after every change."""

    tty = True
    seen: list[tuple[str, int, float | None]] = []
    made: list[Watched] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Watched.made.append(self)

    def changed(self) -> None:
        Watched.seen.append((self.label, self.n, self.total))


@pytest.fixture
def watched(monkeypatch):
    Watched.seen, Watched.made = [], []
    monkeypatch.setattr(local.LocalEngine, "progress_cls", Watched)
    return Watched


# module level, so the pool's workers can import them
def slow_stage(job: Any, shard: InputShard, out_root: str, table: Any = None, report: Any = None) -> dict[str, Any]:
    """A stage of 5 batches of 10 documents, 0.15 s each; shard 3 was 'done by an earlier run'."""
    if shard.index == 3:
        return {"shard": shard.index, "rows_in": 50, "skipped": True}
    for _ in range(5):
        time.sleep(0.15)
        report(10)
    return {"shard": shard.index, "rows_in": 50, "skipped": False}


@item_progress("select", "block")
def stepping_block(x: int) -> int:
    for _ in range(4):
        time.sleep(0.05)
        report_steps(1)
    return x * 2


def _shards(n: int, rows: int) -> list[InputShard]:
    return [InputShard(i, "memory", (), f"fp{i}", rows, start=i * rows) for i in range(n)]


def test_worker_counts_reach_the_driver_while_shards_run(tmp_path: Path, watched) -> None:
    job = load_job(data=job_dict("unused", tmp_path / "o", engine={"local": {"workers": 2}}))
    eng = local.LocalEngine(job)
    try:
        res = eng.map_shards("score", slow_stage, job, _shards(4, 50), str(tmp_path))
        assert [r["shard"] for r in res] == [0, 1, 2, 3]
        bar = watched.made[0]
        assert bar.n == 150 and bar.total == 150 and bar.resumed_parts == 1  # the resumed shard left the total
        mid = [n for label, n, _ in watched.seen if label == "score" and n % 50]
        assert mid and all(0 < n < 150 for n in mid), watched.seen  # counts from inside running shards
        assert eng.parallel_map(stepping_block, [1, 2, 3]) == [2, 4, 6]
        blocks = watched.made[1]
        assert (blocks.label, blocks.unit, blocks.n, blocks.total) == ("select", "block", 3, 3)
        assert blocks.steps > 0  # inner steps from the workers, beside the bar
    finally:
        eng.close()
    assert not [t for t in threading.enumerate() if t.name == "thresher-progress"]


def test_stages_report_per_batch_in_process(tmp_path: Path, watched) -> None:
    write_parquet_corpus(tmp_path / "c", 1, 300)
    job = job_dict(tmp_path / "c", tmp_path / "o", input={"path": str(tmp_path / "c"), "batch_rows": 50})
    run(job)
    for stage in ("score", "write"):
        ns = [n for label, n, _ in watched.seen if label == stage]
        assert ns[-1] == 300 and [n for n in ns if 0 < n < 300], (stage, ns)


def _job_file(tmp_path: Path) -> Path:
    write_parquet_corpus(tmp_path / "c", 3, 200)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(tmp_path / "c", tmp_path / "out", **HEUR)))
    return path


def _rates(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+) docs?/s", text)]


def test_not_a_tty_one_line_per_stage_and_quiet_prints_none(tmp_path: Path, capsys) -> None:
    job = _job_file(tmp_path)
    assert cli_main(["run", str(job)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws in a log
    lines = err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["score", "select", "write"], err  # select's steps print nothing
    for line, stage in zip(lines, ("score", "select", "write")):
        assert re.fullmatch(stage + r": 600 docs in \d+\.\d s \([\d,.]+ docs/s\)", line), line

    assert cli_main(["run", str(job), "--overwrite", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_resumed_select_says_so_instead_of_a_rate(tmp_path: Path, capsys) -> None:
    job = _job_file(tmp_path)
    assert cli_main(["run", str(job), "-q"]) == 0
    capsys.readouterr()
    assert cli_main(["select", str(tmp_path / "out"), "--set", "selector.budget=0.5"]) == 0
    cap = capsys.readouterr()
    assert "score: resumed, 0 docs scored (3 shards done earlier)" in cap.err.splitlines()
    assert "(score: resumed, 0 docs scored)" in cap.out  # the summary's time line
    assert "docs/s scoring" not in cap.out
    assert all(r < 1e6 for r in _rates(cap.out + cap.err)), cap
    assert re.search(r"^write: 600 docs in", cap.err, flags=re.MULTILINE)  # re-written: a real rate


def test_line_texts() -> None:
    import io

    out = io.StringIO()
    p = Progress("train", 10, unit="step", verb="trained", initial=10, stream=out)
    p.close()
    assert out.getvalue() == "train: resumed, 0 steps trained\n"
    out = io.StringIO()
    p = Progress("score", 100, stream=out)
    p.update(40, key=0)
    p.finish(0, 50)
    p.update(5, key=0)  # late report of a finished shard: ignored
    p.skip(1, 50)
    p.set_note("x")
    p.close()
    assert p.n == 50 and p.total == 50
    assert re.fullmatch(r"score: 50 docs in \d+\.\d s \([\d,.]+ docs/s\), 1 shard done earlier; x\n", out.getvalue())
    p = Progress("score", 5, enabled=False, stream=out)
    p.update(5)
    p.close()
    assert out.getvalue().count("\n") == 1


def test_train_and_train_proxy_print_a_line_per_phase(tmp_path: Path, capsys) -> None:
    import json

    from benchmarks.synthetic import redundant_corpus, write_shards
    from thresher.commands.train_proxy import main as proxy_main
    from thresher.training.trainer import train

    data = tmp_path / "data"
    write_shards(redundant_corpus(12, seed=2), data, n_shards=2)
    spec = {"steps": 4, "batch_size": 4, "block_size": 32, "log_every": 2,
            "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 300}}
    train(spec, str(data), str(tmp_path / "t"), seed=0)
    err = capsys.readouterr().err
    assert re.fullmatch(r"train: 4 steps in \d+\.\d s \([\d.]+ steps/s\); loss \d+\.\d{4}\n", err), err
    train(spec, str(data), str(tmp_path / "t"), seed=0)  # finished: resumes at step 4
    assert capsys.readouterr().err == "train: resumed, 0 steps trained\n"
    train({**spec, "resume": False}, str(data), str(tmp_path / "t"), seed=0, progress=False)
    assert capsys.readouterr().err == ""

    ref = tmp_path / "ref.jsonl"
    ref.write_text("\n".join(json.dumps({"text": f"doc {i} " + "the cat sat on the mat " * 8}) for i in range(60)))
    args = ["--input", str(ref), "--output", str(tmp_path / "p"), "--vocab-size", "300", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--context", "32", "--steps", "5", "--batch-size", "4",
            "--device", "cpu"]
    phase = re.compile(r"^(tokenizer|tokenize|train-proxy): ")  # (transformers may warn too)
    assert proxy_main(args) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if phase.match(ln)]
    assert [ln.split(":")[0] for ln in lines] == ["tokenizer", "tokenize", "train-proxy"] and "\r" not in err, err
    assert re.fullmatch(r"train-proxy: 5 steps in \d+\.\d s \([\d.]+ steps/s\); loss \d+\.\d{4}", lines[2])
    assert proxy_main(args + ["-q"]) == 0
    assert not [ln for ln in capsys.readouterr().err.splitlines() if phase.match(ln)]


LIVE_CLI = ("import sys; from thresher.common.progress import Progress; Progress.tty = True; "
            "from thresher.commands.cli import main; sys.exit(main(sys.argv[1:]))")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


@pytest.mark.timeout(120)
def test_live_channel_keeps_the_kill_guarantees(tmp_path: Path) -> None:
    """With live bars (the progress channel up): SIGKILL of the main pid still takes the workers
    with it and nothing is written after; SIGTERM still stops at once (exit 143, no worker left)."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    root = Path(__file__).resolve().parents[1]
    write_parquet_corpus(tmp_path / "c", 10, 100)
    for sig, name in ((signal.SIGKILL, "killed"), (signal.SIGTERM, "termed")):
        out = tmp_path / name
        job = tmp_path / f"{name}.yaml"
        job.write_text(yaml.safe_dump(job_dict(tmp_path / "c", out, engine={"local": {"workers": 2}}, **HEUR)))
        proc = subprocess.Popen([sys.executable, "-c", LIVE_CLI, "run", str(job)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(root), "THRESHER_FAULT": "delay:0.4"})
        done = out / "_thresher" / "done"
        deadline = time.time() + 60
        while time.time() < deadline and not list(done.glob("score-*.json")) and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len([c for c in children if "spawn_main" in " ".join(c.cmdline())]) == 2
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
        right_after = _snapshot(out)
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"{name}: orphaned workers {[c.pid for c in alive]}"
        if sig == signal.SIGTERM:
            assert rc == 143 and "Traceback" not in err, err
            assert "score:" in err  # the live bar was drawn
        time.sleep(0.6)  # longer than a worker's pre-commit sleep (0.4 s): an orphan would have committed by now
        assert _snapshot(out) == right_after
