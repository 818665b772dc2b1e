"""Output (and input) on an object store: a local S3 server (tests/s3_server.py, moto over HTTP).

- a job whose output is `s3://BUCKET/out` selects the same ids, with the same rows per part, as
  the same job on a local folder (input local, and input on S3 too);
- `THRESHER_FAULT=commit:N` kills a `python -m thresher run` at a commit point; the re-run on S3
  gives the same output; parts are whole objects at every moment;
- the lease lock: a second job on the same folder is refused, an expired lease is taken over;
- a marker whose object is gone is not trusted (the shard is redone);
- a bad URI, an unknown scheme, an unreachable endpoint, missing credentials, a missing bucket:
  one line naming the path, within seconds, nothing written;
- `output.storage_options` are used and never written (manifest, state, card);
- `storage` basics on S3 (write/read/list/glob/remove, StoragePath).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.common.atomic import write_json_atomic
from thresher.io import storage
from thresher.io.output import JobLock, OutputLayout
from thresher.io.storage import StoragePath
from thresher.specs import JobError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    write_parquet_corpus(tmp_path / "corpus", 3, 80)
    return tmp_path / "corpus"


def _ids_and_rows(out: str) -> tuple[list[str], list[int]]:
    manifest = storage.read_json(storage.join(out, "_manifest.json"))
    ids, rows = [], []
    for p in manifest["shards"]:
        t = storage.read_table(storage.join(out, p["file"]))
        assert t.num_rows == p["rows"]
        assert storage.size(storage.join(out, p["file"])) == p["bytes"]
        ids += t.column("id").to_pylist()
        rows.append(t.num_rows)
    return ids, rows


def _objects(uri: str) -> list[str]:
    fs, inner = storage.filesystem(uri)
    infos = fs.get_file_info(pa.fs.FileSelector(inner, allow_not_found=True, recursive=True))
    return sorted(i.path[len(inner) + 1:] for i in infos if i.type == pa.fs.FileType.File)


def test_s3_output_same_as_local(tmp_path: Path, small_corpus: Path, s3_bucket: str) -> None:
    local = run(job_dict(small_corpus, tmp_path / "out"), progress=False)
    remote = run(job_dict(small_corpus, f"{s3_bucket}/out"), progress=False)
    assert remote.output == f"{s3_bucket}/out"
    assert _ids_and_rows(remote.output) == _ids_and_rows(local.output)
    assert remote.manifest["counts"] == local.manifest["counts"]
    assert [p["sha256"] for p in remote.manifest["shards"]] == [p["sha256"] for p in local.manifest["shards"]]
    names = _objects(remote.output)
    assert {"_manifest.json", "_summary.txt", "_README.md", ".huggingface.yaml", "_thresher/state.json",
            "part-00000.parquet", "_scores/part-00002.parquet", "_thresher/done/select.json"} <= set(names)
    assert "_thresher/lock" not in names  # the lease is released
    assert not [n for n in names if ".tmp-" in n]  # nothing is written under a temporary name
    assert remote.to_pandas()["id"].tolist() == local.to_pandas()["id"].tolist()
    # the same job again resumes from the markers (all trusted: the objects exist with their sizes)
    again = run(job_dict(small_corpus, f"{s3_bucket}/out"), progress=False)
    assert again.manifest["resumed_shards"] == {"score": 3, "write": 3, "select": True}
    # a re-chunked write (staged parts under _thresher/staged, then parts of 25 rows)
    chunked = run(job_dict(small_corpus, f"{s3_bucket}/chunked", output={"path": f"{s3_bucket}/chunked",
                                                                         "target_rows_per_part": 25}),
                  progress=False)
    ids, rows = _ids_and_rows(chunked.output)
    assert ids == _ids_and_rows(local.output)[0] and rows[:-1] == [25] * (len(rows) - 1)
    assert not [n for n in _objects(chunked.output) if n.startswith("_thresher/staged")]


def test_s3_input_and_output(tmp_path: Path, small_corpus: Path, s3_bucket: str) -> None:
    for f in sorted(small_corpus.iterdir()):
        storage.write_bytes(f"{s3_bucket}/in/{f.name}", f.read_bytes())
    local = run(job_dict(small_corpus, tmp_path / "out"), progress=False)
    remote = run(job_dict(f"{s3_bucket}/in/", f"{s3_bucket}/out"), progress=False)
    assert _ids_and_rows(remote.output) == _ids_and_rows(local.output)


def _cli_run(job: dict, tmp_path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("THRESHER_FAULT", None)
    if fault:
        env["THRESHER_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "thresher", "run", str(path), "-q"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_s3_resume_after_kill_at_commit_points(tmp_path: Path, small_corpus: Path, s3_bucket: str) -> None:
    clean = run(job_dict(small_corpus, tmp_path / "clean"), progress=False)
    want = _ids_and_rows(clean.output)
    # commits: 1 state.json; 2-10 per shard scores, rejected, marker; 11-14 selections and their
    # marker; 15-20 per shard part and marker; 21-22 the card; 23 the manifest; 24 the summary
    for n in (6, 14, 21):
        out = f"{s3_bucket}/out-{n}"
        job = job_dict(small_corpus, out)
        killed = _cli_run(job, tmp_path, fault=f"commit:{n}")
        assert killed.returncode == 137, killed.stderr
        for name in _objects(out):  # every object there is whole
            if name.endswith(".parquet"):
                storage.read_table(f"{out}/{name}")
            elif name.endswith(".json") and name != "_thresher/lock":
                storage.read_json(f"{out}/{name}")
        assert not storage.exists(f"{out}/_manifest.json")
        # the killed run's lease names a dead process of this host: taken over at once
        again = _cli_run(job, tmp_path)
        assert again.returncode == 0, again.stderr
        assert _ids_and_rows(out) == want
        manifest = storage.read_json(f"{out}/_manifest.json")
        assert manifest["counts"] == clean.manifest["counts"]
        assert [p["sha256"] for p in manifest["shards"]] == [p["sha256"] for p in clean.manifest["shards"]]


def test_s3_lock_refuses_a_second_job_and_takes_over_an_expired_lease(small_corpus: Path, s3_bucket: str) -> None:
    out = f"{s3_bucket}/out"
    layout = OutputLayout(out)
    with JobLock(layout):
        lease = storage.read_json(f"{out}/_thresher/lock")
        assert lease["pid"] == os.getpid() and lease["expires"] > time.time()
        with pytest.raises(JobError, match=r"in use by another thresher job \(pid \d+ on "):
            run(job_dict(small_corpus, out), progress=False)
        with pytest.raises(JobError, match="in use by another thresher job"):
            JobLock(OutputLayout(out)).acquire()
    assert not storage.exists(f"{out}/_thresher/lock")
    # a live lease of another machine is respected; once expired it is taken over
    foreign = {"owner": "pid 1 on elsewhere", "host": "elsewhere", "pid": 1, "token": "x",
               "expires": time.time() + 600, "ttl": 600}
    storage.write_bytes(f"{out}/_thresher/lock", json.dumps(foreign).encode())
    with pytest.raises(JobError, match=r"in use by another thresher job \(pid 1 on elsewhere\)"):
        run(job_dict(small_corpus, out), progress=False)
    storage.write_bytes(f"{out}/_thresher/lock", json.dumps({**foreign, "expires": time.time() - 1}).encode())
    result = run(job_dict(small_corpus, out), progress=False)
    assert result.manifest["counts"]["selected"] > 0


def test_s3_lease_is_renewed(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRESHER_LOCK_TTL", "0.6")
    out = f"{s3_bucket}/renewed"
    with JobLock(OutputLayout(out)):
        first = storage.read_json(f"{out}/_thresher/lock")["expires"]
        time.sleep(1.0)  # past the first expiry: renewed every ttl/3
        assert storage.read_json(f"{out}/_thresher/lock")["expires"] > first
        with pytest.raises(JobError, match="in use by another thresher job"):
            JobLock(OutputLayout(out)).acquire()
        # another job takes the lease over: the next renewal fails its If-Match, commits stop
        storage.write_bytes(f"{out}/_thresher/lock", b'{"owner": "pid 1 on elsewhere", "expires": 1e12}')
        time.sleep(0.6)
        with pytest.raises(JobError, match="lost the lock to another thresher job"):
            write_json_atomic({"a": 1}, f"{out}/_thresher/state.json")
        assert not storage.exists(f"{out}/_thresher/state.json")
    write_json_atomic({"a": 1}, f"{out}/elsewhere.json")  # released: no guard any more


def test_s3_marker_without_its_object_is_not_trusted(tmp_path: Path, small_corpus: Path, s3_bucket: str) -> None:
    out = f"{s3_bucket}/out"
    first = run(job_dict(small_corpus, out), progress=False)
    want = _ids_and_rows(out)
    storage.remove_file(f"{out}/_scores/part-00001.parquet")  # lost behind its marker
    storage.remove_file(f"{out}/part-00002.parquet")
    again = run(job_dict(small_corpus, out), progress=False)
    assert again.manifest["resumed_shards"]["score"] == 2  # shard 1 scored again
    assert _ids_and_rows(out) == want
    assert again.manifest["counts"] == first.manifest["counts"]


def _one_line_error(job: dict, names: str, seconds: float = 10.0) -> str:
    t = time.perf_counter()
    with pytest.raises(JobError) as info:
        run(job, progress=False)
    took = time.perf_counter() - t
    msg = str(info.value)
    assert "\n" not in msg and names in msg, msg
    assert took < seconds, f"{took:.1f} s: {msg}"
    return msg


def test_bad_storage_paths_fail_fast_on_one_line(tmp_path: Path, small_corpus: Path, s3_bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from s3_server import free_port

    msg = _one_line_error(job_dict(small_corpus, "s3:///out"), "s3:///out")
    assert "no bucket" in msg
    msg = _one_line_error(job_dict(small_corpus, "nosuchscheme://host/out"), "nosuchscheme://host/out")
    assert "unknown storage scheme nosuchscheme://" in msg
    msg = _one_line_error(job_dict(small_corpus, "s3://no-such-bucket-here/out"), "s3://no-such-bucket-here/out")
    _one_line_error(job_dict(small_corpus, f"{s3_bucket}/out", output={"path": f"{s3_bucket}/out",
                                                                       "storage_options": {"nope": 1}}),
                    f"{s3_bucket}/out")
    assert _objects(s3_bucket) == []
    with monkeypatch.context() as mp:  # an endpoint where nothing listens
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        msg = _one_line_error(job_dict(small_corpus, f"{s3_bucket}/out"), f"{s3_bucket}/out")
        assert "endpoint reachable" in msg
    with monkeypatch.context() as mp:
        mp.delenv("AWS_ACCESS_KEY_ID")
        mp.delenv("AWS_SECRET_ACCESS_KEY")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        msg = _one_line_error(job_dict(small_corpus, f"{s3_bucket}/out"), f"{s3_bucket}/out")
        assert "no S3 credentials" in msg
    with monkeypatch.context() as mp:  # gs:// with no Google credentials anywhere
        for k in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "STORAGE_EMULATOR_HOST"):
            mp.delenv(k, raising=False)
        mp.setenv("CLOUDSDK_CONFIG", str(tmp_path / "none"))
        try:
            on_gce = "Google" in Path("/sys/class/dmi/id/product_name").read_text()
        except OSError:
            on_gce = False
        if not on_gce:
            msg = _one_line_error(job_dict(small_corpus, "gs://some-bucket/out"), "gs://some-bucket/out")
            assert "no Google Cloud credentials" in msg
    assert _objects(s3_bucket) == []
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_storage_options_are_used_and_never_written(tmp_path: Path, small_corpus: Path, s3_bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # no credentials in the environment: without storage_options the path is refused
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    out = f"{s3_bucket}/out"
    with pytest.raises(JobError, match="no S3 credentials"):
        run(job_dict(small_corpus, out), progress=False)
    opts = {"endpoint_url": endpoint, "key": "KEYMARKER123", "secret": "SECRETMARKER456"}
    job = job_dict(small_corpus, out, output={"path": out, "storage_options": opts},
                   engine={"local": {"workers": 2}})
    result = run(job, progress=False)
    assert "storage_options" not in result.manifest["job"]["output"]
    for name in ("_manifest.json", "_thresher/state.json", "_README.md", "_summary.txt",
                 "_thresher/done/select.json"):
        text = storage.read_text(f"{out}/{name}")
        assert "KEYMARKER123" not in text and "SECRETMARKER456" not in text, name
        assert '"storage_options"' not in text and "storage_options:" not in text, name
    assert storage.exists(f"{out}/part-00000.parquet")


def test_storage_basics_on_s3(s3_bucket: str) -> None:
    base = StoragePath(f"{s3_bucket}/a")
    storage.write_bytes(base / "x" / "one.json", b'{"a": 1}')
    storage.write_bytes(base / "x" / "two.txt", b"two")
    storage.write_bytes(base / "y" / "deep" / "three.json", b"[]")
    assert storage.read_json(base / "x" / "one.json") == {"a": 1}
    assert (base / "x" / "two.txt").read_text() == "two" and (base / "x" / "two.txt").stat().st_size == 3
    assert storage.list_names(base) == ["x", "y"] and storage.list_names(base / "missing") == []
    assert storage.glob(f"{base}/x/*.json") == [f"{base}/x/one.json"]
    assert storage.glob(f"{base}/**/*.json") == [f"{base}/x/one.json", f"{base}/y/deep/three.json"]
    assert [p.name for p in (base / "x").glob("*")] == ["one.json", "two.txt"]
    assert base.is_dir() and (base / "x" / "one.json").is_file() and not (base / "nothing").exists()
    assert (base / "x").parent == base and base.parent == s3_bucket and StoragePath(s3_bucket).parent == s3_bucket
    assert storage.mtime(base / "x" / "one.json") > 0
    with storage.open_input(base / "x" / "two.txt") as fh:
        fh.seek(1)
        assert fh.read() == b"wo"
    storage.remove_tree(base / "x")
    assert storage.list_names(base) == ["y"]
    (base / "y" / "deep" / "three.json").unlink()
    with pytest.raises(FileNotFoundError):
        (base / "y" / "deep" / "three.json").unlink()
    assert storage.local_path_or_none("file:///tmp/x/../y") == "/tmp/y" and storage.local_path_or_none(base) is None
    assert storage.normalize(f"{s3_bucket}//a/./b/../c/") == f"{s3_bucket}/a/c"
    layout = OutputLayout(f"{s3_bucket}/out/")
    assert layout.root == f"{s3_bucket}/out" and layout.part(3) == f"{s3_bucket}/out/part-00003.parquet"
    with pytest.raises(JobError, match="escapes the output folder"):
        layout._inside("..", "elsewhere")
    pq_path = f"{s3_bucket}/t.parquet"
    storage.write_bytes(pq_path, _parquet_bytes(pa.table({"a": [1, 2, 3]})))
    assert storage.read_table(pq_path, columns=["a"]).column("a").to_pylist() == [1, 2, 3]
    assert storage.read_schema(pq_path).names == ["a"] and storage.parquet_file(pq_path).metadata.num_rows == 3


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_select_in_place_and_into_a_bucket(tmp_path: Path, small_corpus: Path, s3_bucket: str) -> None:
    from thresher.commands.cli import main as cli_main

    out = f"{s3_bucket}/out"
    run(job_dict(small_corpus, out), progress=False)
    assert cli_main(["select", out, "--set", "selector.budget=0.5", "-q"]) == 0  # in place, on the bucket
    assert storage.read_json(f"{out}/_manifest.json")["resumed_shards"]["score"] == 3
    local = run(job_dict(small_corpus, tmp_path / "local"), progress=False)
    assert cli_main(["select", str(tmp_path / "local"), "--set", "selector.budget=0.5", "-q",
                     "--output", f"{s3_bucket}/copy"]) == 0  # local scores seeded into a bucket
    assert _ids_and_rows(f"{s3_bucket}/copy") == _ids_and_rows(out)
    assert local.manifest["counts"]["selected"] < storage.read_json(f"{out}/_manifest.json")["counts"]["selected"]


def test_select_from_a_bucket_into_a_local_folder_and_another_prefix(tmp_path: Path, small_corpus: Path,
                                                                      s3_bucket: str) -> None:
    """Saved scores on a bucket seed a new local folder or another prefix of the bucket."""
    from thresher.commands.cli import main as cli_main

    out = f"{s3_bucket}/out"
    run(job_dict(small_corpus, out), progress=False)
    assert cli_main(["select", out, "--set", "selector.budget=0.5", "-q", "--output", str(tmp_path / "here")]) == 0
    assert cli_main(["select", out, "--set", "selector.budget=0.5", "-q", "--output", f"{s3_bucket}/again"]) == 0
    assert _ids_and_rows(str(tmp_path / "here")) == _ids_and_rows(f"{s3_bucket}/again")
    assert storage.read_json(f"{s3_bucket}/again/_manifest.json")["resumed_shards"]["score"] == 3
