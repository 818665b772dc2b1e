"""`thresher report`: sections and figures, multi-run comparison, and the page in headless Chromium."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.commands.cli import main as cli_main
from thresher.config import JobError
from thresher.report import plots
from thresher.report.html import (
    BENCH_FILE,
    RunData,
    build_report,
    cluster_section,
    informative_columns,
    load_run,
    reward_section,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
html_unescape = html.unescape


def fake_bench(folder: Path) -> Path:
    """A benchmark results file of the shape `python -m benchmarks.selection` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = [{"method": "full", "budget": 1.0, "loss_mean": 4.1, "loss_std": 0.02, "diff_mean": None,
                "diff_std": None, "wins": None, "junk_frac": 0.25, "dup_frac": 0.2, "docs": 1000}]
    for b in (0.1, 0.2):
        for m, loss, junk in (("random", 4.6, 0.25), ("topk_quality", 4.4, 0.01), ("datamask", 4.35, 0.02)):
            summary.append({"method": m, "budget": b, "loss_mean": loss - b, "loss_std": 0.03,
                            "diff_mean": None if m == "random" else loss - 4.6, "diff_std": 0.01,
                            "wins": None if m == "random" else "3/3", "junk_frac": junk, "dup_frac": 0.1,
                            "docs": int(1000 * b)})
    res = {"methods": ["full", "random", "topk_quality", "datamask"], "seeds": [0, 1, 2],
           "config": {"pool_docs": 1000, "train_tokens": 50000}, "summary": summary, "runs": []}
    (folder / BENCH_FILE).write_text(json.dumps(res))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runs over one heuristics-scored corpus: top-k at two budgets and random."""
    tmp = tmp_path_factory.mktemp("report")
    corpus = tmp / "corpus"
    write_parquet_corpus(corpus, 2, 200)
    sel = {"type": "topk", "column": "heuristics_mean_word_length", "budget": 0.25}
    base = job_dict(corpus, tmp / "topk25", scorers=[{"type": "heuristics"}], selector=sel)
    run(base, progress=False)
    out = {"topk25": tmp / "topk25"}
    for name, selector in (("topk50", {**sel, "budget": 0.5}), ("random25", {"type": "random", "budget": 0.25})):
        run({**base, "selector": selector, "output": {"path": str(tmp / name)}}, progress=False)
        out[name] = tmp / name
    out["bench"] = fake_bench(tmp / "bench")
    return out


def synthetic_run(n: int = 600, k: int = 12) -> RunData:
    """A run with a cluster column and a DATAMASK reward curve, built in memory."""
    rng = np.random.default_rng(0)
    cid = rng.integers(0, k, n)
    q = rng.normal(size=n)
    status = np.where(q > 0.8, "selected", "not_selected").astype(object)
    status[:5] = "rejected"
    frame = pd.DataFrame({"id": [f"d{i}" for i in range(n)], "status": status, "reason": None,
                          "quality": q, "clusters_id": cid, "datamask_logit": q * 2})
    manifest = {"job": {"name": "syn", "selector": {"type": "datamask", "quality": "quality", "budget": 0.2}},
                "selection": {"selector_stats": {"reward_curve": list(np.log1p(np.arange(50.0))), "lam": 0.5,
                                                 "diversity": "pws", "objective": 1.2}},
                "counts": {"input_rows": n, "selected": int((status == "selected").sum()),
                           "not_selected": {"total": 0, "by_reason": {}}, "rejected": {"total": 5, "by_reason": {}}}}
    return RunData(Path("syn"), "syn", manifest, frame, ["quality", "datamask_logit"], ["clusters_id"])


def test_single_run_report(runs: dict[str, Path]) -> None:
    assert cli_main(["report", str(runs["topk25"])]) == 0
    folder = runs["topk25"] / "_report"
    page = (folder / "report.html").read_text()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["counts.png", "scores-0.png"]
    for p in folder.glob("*.png"):
        assert p.read_bytes().startswith(PNG_MAGIC)
    # every image is embedded, none is linked
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (folder / "counts.png").read_bytes()
    assert "Budgets differ" not in page  # one run: nothing to compare
    m = json.loads((runs["topk25"] / "_manifest.json").read_text())
    assert f"<td>{m['counts']['selected']:,}</td>" in page
    # the counts table adds up to the input rows
    assert f"<td>total (= input rows)</td><td>{m['counts']['input_rows']:,}</td>" in page


def test_informative_columns_put_selector_column_first(runs: dict[str, Path]) -> None:
    r = load_run(runs["topk25"])
    assert isinstance(r, RunData)
    cols = informative_columns(r)
    assert cols[0] == "heuristics_mean_word_length"
    assert 1 <= len(cols) <= 9
    assert not {"n_words", "heuristics_n_words"} <= set(cols)  # identical columns are shown once


def test_cluster_and_reward_sections() -> None:
    r = synthetic_run()
    sec = cluster_section([r])
    assert sec is not None and [f.name for f in sec.figures] == ["clusters-0-0"]
    pool = r.frame[r.frame.status != "rejected"]
    covered = pool.groupby("clusters_id")["status"].apply(lambda s: (s == "selected").any()).mean()
    assert f"{100 * covered:.1f}%" in sec.html
    rw = reward_section([r])
    assert rw is not None and rw.figures[0].png.startswith(PNG_MAGIC)


def test_comparison_of_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.html"
    items = [load_run(runs[k]) for k in ("topk25", "topk50", "random25")]
    sections = build_report(items)
    titles = [s.title for s in sections]
    assert "Comparison of runs" in titles
    cmp_sec = sections[titles.index("Comparison of runs")]
    names = {f.name for f in cmp_sec.figures}
    assert {"jaccard", "score-means"} <= names
    # top-k at 25% is a subset of top-k at 50%: Jaccard = |25%| / |50%|
    a = load_run(runs["topk25"]).frame
    b = load_run(runs["topk50"]).frame
    expect = (a.status == "selected").sum() / (b.status == "selected").sum()
    assert f"<td>{expect:.4g}</td>" in cmp_sec.html
    write_report([runs["topk25"], runs["topk50"], runs["random25"], runs["bench"]], out)
    assert (tmp_path / "heldout-loss.png").exists() and (tmp_path / "jaccard.png").exists()


def test_budget_sweep_only_for_one_selector_type(runs: dict[str, Path]) -> None:
    sections = build_report([load_run(runs["topk25"]), load_run(runs["topk50"])])
    figs = {f.name for s in sections for f in s.figures}
    assert "sweep-budget" in figs
    sections = build_report([load_run(runs["topk25"]), load_run(runs["random25"])])
    assert "sweep-budget" not in {f.name for s in sections for f in s.figures}


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no _manifest.json"):
        load_run(tmp_path)
    assert cli_main(["report", str(tmp_path / "missing")]) == 2


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_budget_note_names_each_runs_budget(runs: dict[str, Path]) -> None:
    sections = build_report([load_run(runs["topk25"]), load_run(runs["topk50"])])
    html_all = "".join(s.html for s in sections)
    runs_sec = sections[[s.title for s in sections].index("Runs")]
    assert 'id="budgets-differ"' in runs_sec.html  # at the top, in the first section with the runs
    for name, pct in (("topk25", "25%"), ("topk50", "50%")):
        assert re.search(rf"<b>{name}</b>: budget {pct} of the valid documents", runs_sec.html), runs_sec.html
    assert html_all.count("Budgets differ") == 2  # and again above the comparison
    same = build_report([load_run(runs["topk25"]), load_run(runs["random25"])])
    assert "Budgets differ" not in "".join(s.html for s in same)


def test_counts_are_one_grouped_figure(runs: dict[str, Path]) -> None:
    sections = build_report([load_run(runs[k]) for k in ("topk25", "topk50", "random25")])
    counts = sections[[s.title for s in sections].index("Counts")]
    assert [f.name for f in counts.figures] == ["counts"]
    assert "side by side" in counts.figures[0].title


def test_axis_scale_for_heavy_tails() -> None:
    rng = np.random.default_rng(0)
    assert plots.axis_scale(rng.normal(size=500)) == "linear"  # signed
    assert plots.axis_scale(rng.uniform(1, 2, size=500)) == "linear"
    heavy = rng.lognormal(0, 3, size=2000)  # max/median in the thousands
    assert plots.axis_scale(heavy) == "log"
    assert plots.axis_scale(np.concatenate([heavy, np.zeros(300)])) == "symlog"
    assert plots.axis_scale(rng.integers(0, 3, 500).astype(float)) == "linear"  # few distinct values
    png = plots.score_histograms([("ppl", heavy, heavy[:200]), ("zeroish", np.concatenate([heavy, np.zeros(300)]),
                                                                heavy[:50]), ("z", rng.normal(size=300), np.zeros(0))])
    assert png.startswith(PNG_MAGIC)


def test_figures_keep_their_labels() -> None:
    """bbox_inches='tight': a long tick label widens the image instead of being cut off."""
    short = plots.counts_grouped(["a"], [{"selected": 5, "x": 3}])
    long = plots.counts_grouped(["a"], [{"selected": 5, "rejected: " + "a very long reason " * 4: 3}])
    assert _png_size(long)[0] > _png_size(short)[0]


def test_cluster_figure_labels_bars_with_integer_ids() -> None:
    r = synthetic_run(k=12)
    from thresher.report.html import cluster_stats

    st = cluster_stats(r, "clusters_id")
    assert sorted(int(i) for i in st["ids"]) == list(range(12)) and len(st["ids"]) == len(st["total"])
    assert plots.cluster_coverage(st["total"], st["selected"], "clusters_id", ids=st["ids"]).startswith(PNG_MAGIC)
    many = np.random.default_rng(1).integers(1, 2000, 300)
    assert plots.cluster_coverage(many, many // 3, "clusters_id", ids=np.arange(300)).startswith(PNG_MAGIC)


def test_examples_per_decile_are_bounded_escaped_and_read_from_the_input(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import make_docs

    docs = make_docs(120, seed=4)
    docs[7] = "<script>alert('x')</script> & <b>bold</b> " + docs[7]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [f"d{i:03d}" for i in range(len(docs))], "text": docs}),
                   tmp_path / "in" / "a.parquet")
    sel = {"type": "topk", "column": "heuristics_mean_word_length", "budget": 0.3}
    run(job_dict(tmp_path / "in", tmp_path / "out", scorers=[{"type": "heuristics"}], selector=sel,
                 input={"path": str(tmp_path / "in"), "id_column": "id"}), progress=False)
    r = load_run(tmp_path / "out")
    sections = build_report([r])
    ex = sections[[s.title for s in sections].index("Example documents per score decile")]
    tables = ex.html.split("<h4>")[1:]
    assert 1 <= len(tables) <= 3
    for t in tables:
        cells = re.findall(r'<td class="doc">(.*?)</td>', t, flags=re.S)
        real = [c for c in cells if c != "–"]
        assert 0 < len(real) <= 10
        for c in real:
            body = c.split("<br>", 1)[1]
            assert "text not available" not in body
            assert len(html_unescape(body)) <= 301
    assert "<script>" not in ex.html
    text = {f"d{i:03d}": d for i, d in enumerate(docs)}
    not_selected = set(r.frame.loc[r.frame.status != "selected", "id"])
    shown = set(re.findall(r'<span class="docid">(d\d{3}) ', ex.html))
    assert shown & not_selected, "no not-selected example (their text comes from the input)"
    for i in shown & not_selected:
        assert html.escape(" ".join(text[i].split())[:60]) in ex.html
    # an input that is gone: the examples stay, without their text, and the page says why
    shutil.rmtree(tmp_path / "in")
    ex = [s for s in build_report([load_run(tmp_path / "out")]) if s.title.startswith("Example")][0]
    assert "could not be read again" in ex.html and "text not available" in ex.html


# -- headless Chromium ----------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == name for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {name} within {timeout}s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def browser_check(page: Path, screenshot: Path, segments: Path | None = None) -> dict[str, Any]:
    """Open `page` in headless Chromium; return body flags, console errors; write a screenshot.

    With `segments`, the whole page is also captured as 1280x1600 PNGs `page-NN.png` there
    (THRESHER_ARTIFACTS keeps them, to look at)."""
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="thresher-chromium-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
           "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--remote-debugging-port={port}", "--remote-allow-origins=*", "--window-size=1280,1600", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        targets: list[dict[str, Any]] = []
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert targets, "chromium opened no page target"
        dt = DevTools(targets[0]["webSocketDebuggerUrl"])
        try:
            for domain in ("Page", "Runtime", "Log"):
                dt.call(f"{domain}.enable")
            dt.call("Page.navigate", url=page.resolve().as_uri())
            dt.wait_event("Page.loadEventFired")
            flags = dt.call("Runtime.evaluate", returnByValue=True, expression=(
                "JSON.stringify({checked: document.body.getAttribute('data-checked'),"
                " ok: document.body.getAttribute('data-images-ok'),"
                " total: document.body.getAttribute('data-images-total'),"
                " bad: document.body.getAttribute('data-images-bad'),"
                " errors: document.body.getAttribute('data-errors'),"
                " budget_note: (function () { var e = document.getElementById('budgets-differ');"
                "   return e ? {height: e.offsetHeight, text: e.innerText} : null; })(),"
                " examples: document.querySelectorAll('table.examples td.doc').length,"
                " overflow: Array.from(document.images).filter(function (im) {"
                "   return im.getBoundingClientRect().right > document.documentElement.clientWidth + 1; }).length,"
                " height: document.documentElement.scrollHeight})"))
            info = json.loads(flags["result"]["value"])
            shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            if segments is not None:
                segments.mkdir(parents=True, exist_ok=True)
                for k, y in enumerate(range(0, int(info["height"]), 1600)):
                    seg = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                  clip={"x": 0, "y": y, "width": 1280, "height": min(1600, int(info["height"]) - y),
                                        "scale": 1})
                    (segments / f"page-{k:02d}.png").write_bytes(base64.b64decode(seg["data"]))
            problems = []
            for e in dt.events:
                m, p = e.get("method"), e.get("params", {})
                if m == "Runtime.exceptionThrown":
                    problems.append(p["exceptionDetails"].get("text", "exception"))
                elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    problems.append(str(p.get("args")))
                elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                    problems.append(p["entry"].get("text", ""))
            info["console_errors"] = problems
            return info
        finally:
            dt.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    page = write_report([runs["bench"], runs["topk25"], runs["topk50"], runs["random25"]], tmp_path / "all.html")
    shot = tmp_path / "report.png"
    keep = os.environ.get("THRESHER_ARTIFACTS")
    info = browser_check(page, shot, segments=Path(keep) / "report-pages" if keep else None)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(keep) / "report-screenshot.png")
        shutil.copy2(page, Path(keep) / "report.html")
    # the budgets of the compared runs differ (25% / 50%): a visible note names each
    note = info["budget_note"]
    assert note and note["height"] > 0, info
    assert all(name in note["text"] for name in ("topk25", "topk50", "random25")) and "50%" in note["text"], note
    assert 0 < info["examples"] <= 10 * 3 * 3 * 2, info  # <= 10 documents per column, 3 columns, 3 runs (2 cells)
    assert info["overflow"] == 0, info  # no figure wider than the page
    assert info["checked"] == "true", info
    assert info["console_errors"] == [], info
    assert info["errors"] == "", info
    assert info["ok"] == "true", info
    assert int(info["total"]) == page.read_text().count("<img ")
    assert info["height"] > 2000  # the page laid out its tables and figures
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_check_catches_a_broken_image(tmp_path: Path) -> None:
    """The check is not vacuous: a corrupt image and a script error are reported."""
    page = tmp_path / "broken.html"
    from thresher.report.html import CHECK_JS

    page.write_text(f"<!DOCTYPE html><html><head><script>{CHECK_JS}</script></head><body>"
                    f"<img data-name='bad' src='data:image/png;base64,iVBORw0KGgoAAAAA'>"
                    f"<script>undefinedFunction();</script></body></html>")
    info = browser_check(page, tmp_path / "broken.png")
    assert info["ok"] == "false" and info["bad"] == "bad"
    assert "undefinedFunction" in info["errors"]
    assert info["console_errors"]
