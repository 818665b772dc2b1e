"""Progress of long stages: a live bar on a terminal, one line per stage otherwise.

The driver creates a `Progress(label, total, unit)` per stage and closes it when the stage ends.
On a terminal (stderr is a TTY) it draws a tqdm bar with the rate and an ETA that moves while
the work runs; otherwise (a log file, a pipe) it draws nothing and prints ONE line when the
stage ends (`score: 2,225 docs in 72.4 s (30.7 docs/s)`, or `score: resumed, 0 docs scored`
when nothing was left to do); `enabled=False` (`-q`) prints nothing. Rates count only the work
done in this run: parts that a previous run finished are `skip`ped (out of the total and the rate).

Work reports increments through a `Report` callback, `report(n)`, once per batch (never per row):
- in the driver's process the callback is `Progress.reporter(key)`: a lock and a tqdm update;
- in pool workers it is a `_Reporter`: it sends `(token, key, n, steps)` at most every 0.1 s to a
  `Channel` (a multiprocessing queue handed to the workers by the pool initializer), which a
  daemon thread on the driver drains into the stage's `Progress`. Nothing blocks the worker:
  a put only appends to the queue's buffer, and a worker never waits for it when it exits.
When a part ends, the driver sets its count to the part's own total (`Progress.finish`), so
late or throttled reports never make the count wrong. Stage functions take `report` with a
no-op default (`no_report`), so engines without a channel (Spark, Beam) call them unchanged.

Work items that are not documents (DATAMASK blocks, training steps) use the same object with
another `unit`; an item can also count inner steps (`report_steps(n)`, shown beside the bar).
"""

from __future__ import annotations

import contextlib
import math
import queue as queue_mod
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

Report = Callable[[int], None]
_SEND_EVERY = 0.1  # seconds between a worker's messages (per task)


def no_report(n: int) -> None:
    """The default `report`: nothing."""


def _plural(unit: str, n: float) -> str:
    return unit if n == 1 else unit + "s"


def _rate(n: float, seconds: float) -> str:
    r = n / seconds
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}" if r >= 1 else f"{r:.2g}"


def _is_tty(stream: Any) -> bool:
    """A terminal, or a Jupyter kernel's stderr (tqdm.auto draws a widget there)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or not a file
        return False
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return stream is sys.stderr and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """One stage's progress, on the driver: see the module docstring.

    `total`: units expected (None: unknown, no ETA); `initial`: units a previous run already did
    (training resumed at a step); `verb` names the work in the resumed line ("scored");
    `leave`: keep the finished bar on the terminal; `line`: print the one line when no bar is
    drawn (False for the steps of a bigger stage, which prints its own line); `part`: what
    `skip`ped parts are (shards).
    Thread-safe: the channel's thread and the driver both update it. Subclasses may override
    `changed()` (called after every change) to watch the values (`n`, `total`), e.g. in tests;
    `tty` = True draws a live bar anywhere."""

    tty: bool | None = None  # None: ask the stream

    def __init__(self, label: str, total: float | None = None, *, unit: str = "doc", verb: str = "done",
                 enabled: bool = True, stream: TextIO | None = None, initial: int = 0, leave: bool = True,
                 part: str = "shard", line: bool = True) -> None:
        self.label, self.unit, self.verb, self.part = label, unit, verb, part
        self.line = line
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = self.draws_live(enabled, self.stream)
        self.total = total
        self.initial = initial
        self.n = 0  # units done in this run
        self.steps = 0  # inner steps (report_steps), shown beside the bar
        self.resumed_parts = 0  # parts a previous run finished (skipped)
        self.note = ""  # the last `set_note` text (e.g. "loss 3.21"), on the bar and the final line
        self._parts: dict[Any, int] = {}  # reported so far, per running part
        self._finished: set[Any] = set()
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._closed = False
        self._drawn = -math.inf  # when the postfix was last redrawn
        self._bar: Any = None
        if self.live:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=leave)

    @classmethod
    def draws_live(cls, enabled: bool = True, stream: TextIO | None = None) -> bool:
        """Whether a Progress made now would draw a live bar (else: one line, or nothing)."""
        stream = stream if stream is not None else sys.stderr
        return enabled and (cls.tty if cls.tty is not None else _is_tty(stream))

    # -- updates --------------------------------------------------------------------------

    def update(self, n: int = 1, key: Any = None) -> None:
        """`n` more units done (of part `key`; reports for a finished part are ignored)."""
        with self._lock:
            if key is not None:
                if key in self._finished:
                    return
                self._parts[key] = self._parts.get(key, 0) + n
            self._add(n)

    def finish(self, key: Any, n_total: int) -> None:
        """Part `key` is done with `n_total` units: its reported count is corrected to that."""
        with self._lock:
            if key in self._finished:
                return
            self._finished.add(key)
            self._add(n_total - self._parts.pop(key, 0))
            self._postfix()

    def skip(self, key: Any, n_total: int) -> None:
        """Part `key` was done by a previous run: out of the total (and the rate) of this run."""
        with self._lock:
            if key in self._finished:
                return
            self._finished.add(key)
            self._add(-self._parts.pop(key, 0))
            self.resumed_parts += 1
            if self.total is not None:
                self.set_total(max(self.total - n_total, 0), locked=True)
            self._postfix()

    def add_steps(self, n: int) -> None:
        with self._lock:
            self.steps += n
            self._postfix()

    def set_total(self, total: float | None, locked: bool = False) -> None:
        """Change the expected total (e.g. a better estimate)."""
        if not locked:
            with self._lock:
                return self.set_total(total, locked=True)
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()
        self.changed()

    def set_note(self, text: str) -> None:
        """A short note beside the bar and at the end of the final line (e.g. `loss 3.2100`)."""
        with self._lock:
            self.note = text
            self._postfix()

    def reporter(self, key: Any = None) -> Report:
        """An in-process `report(n)` for part `key` (a no-op when nothing is drawn live)."""
        if not self.live:
            return no_report
        return lambda n: self.update(n, key)

    def _add(self, n: int) -> None:
        if n:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
            self.changed()

    def _postfix(self, force: bool = False) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if not force and now - self._drawn < _SEND_EVERY:  # steps may come every millisecond
            return
        self._drawn = now
        bits = [self.note] if self.note else []
        if self.steps:
            bits.append(f"{self.steps:,} steps")
        if self.resumed_parts:
            bits.append(f"{self.resumed_parts} resumed")
        self._bar.set_postfix_str(", ".join(bits), refresh=True)

    def changed(self) -> None:
        """Called after every change of `n` or `total` (a hook for subclasses)."""

    # -- the end --------------------------------------------------------------------------

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def summary(self) -> str:
        """The stage's one line: units done in this run, time and rate (or that it was resumed)."""
        secs = self.seconds
        earlier = f"{self.resumed_parts} {_plural(self.part, self.resumed_parts)} done earlier"
        if self.n == 0 and (self.resumed_parts or self.initial):
            line = f"{self.label}: resumed, 0 {_plural(self.unit, 0)} {self.verb}"
            if self.resumed_parts:
                line += f" ({earlier})"
        else:
            line = done_line(self.label, self.n, secs, self.unit)
            if self.initial:
                line += f", resumed at {self.unit} {self.initial:,}"
            if self.resumed_parts:
                line += f", {earlier}"
        if self.steps:
            line += f", {self.steps:,} steps"
        if self.note:
            line += f"; {self.note}"
        return line

    def close(self, ok: bool = True) -> None:
        """End the stage: close the bar, or print the one line (nothing when disabled, or when
        the stage failed: `ok` False)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._postfix(force=True)
                if self.n == 0 and (self.resumed_parts or self.initial):
                    self._bar.set_postfix_str(f"resumed, 0 {_plural(self.unit, 0)} {self.verb}", refresh=True)
                self._bar.close()
            elif self.enabled and ok and self.line:
                print(self.summary(), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(ok=exc_type is None)


def done_line(label: str, n: int, seconds: float, unit: str = "doc") -> str:
    """`label: N units in S s (R units/s)`: the line a finished stage prints."""
    line = f"{label}: {n:,} {_plural(unit, n)} in {seconds:.1f} s"
    if n and seconds > 0:
        line += f" ({_rate(n, seconds)} {_plural(unit, 2)}/s)"
    return line


def print_done(label: str, n: int, seconds: float, unit: str = "doc", enabled: bool = True,
               stream: TextIO | None = None) -> None:
    """Print a finished stage's line (for a stage made of steps whose own bars print nothing)."""
    if enabled:
        print(done_line(label, n, seconds, unit), file=stream if stream is not None else sys.stderr, flush=True)


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """Inside: no Hugging Face tqdm bars (e.g. `Writing model shards` at every checkpoint save,
    which would redraw into a log file); restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# -- workers -> driver -----------------------------------------------------------------------

class Channel:
    """Worker increments to the driver: a queue drained by one daemon thread into the Progress
    `attach`ed under a token. Create it in the driver before the pool (its `queue` goes to the
    workers through the pool initializer: `set_worker_queue`); `close` it after the pool is shut
    down or killed (it never keeps the process alive: the thread is a daemon and stops within
    0.1 s)."""

    def __init__(self, context: Any) -> None:
        self.queue = context.Queue()
        self._sinks: dict[int, Progress] = {}
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="thresher-progress", daemon=True)
        self._thread.start()

    def attach(self, progress: Progress) -> int:
        self._next += 1
        self._sinks[self._next] = progress
        return self._next

    def detach(self, token: int) -> None:
        self._sinks.pop(token, None)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                token, key, n, steps = self.queue.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            except (EOFError, OSError, ValueError, TypeError):  # closed, or a torn message
                return
            sink = self._sinks.get(token)
            if sink is None:
                continue
            if n:
                sink.update(n, key)
            if steps:
                sink.add_steps(steps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sinks.clear()
        if not self._thread.is_alive():
            self.queue.close()


_worker_queue: Any = None  # in a pool worker: the Channel's queue
_current: _Reporter | _DirectSteps | None = None  # the task running in this worker process


def set_worker_queue(q: Any) -> None:
    """Pool initializer side: reports of this process go to `q` (None: nowhere)."""
    global _worker_queue
    _worker_queue = q
    if q is not None:
        q.cancel_join_thread()  # never wait at exit for progress messages to be read


class _Reporter:
    """A worker task's `report(n)`: adds up and sends at most every `_SEND_EVERY` seconds."""

    __slots__ = ("key", "last", "n", "steps", "token")

    def __init__(self, token: int, key: Any) -> None:
        self.token, self.key = token, key
        self.n = self.steps = 0
        self.last = -math.inf

    def __call__(self, n: int) -> None:
        self.n += n
        self._maybe_send()

    def add_steps(self, n: int) -> None:
        self.steps += n
        self._maybe_send()

    def _maybe_send(self) -> None:
        now = time.monotonic()
        if now - self.last >= _SEND_EVERY:
            self.last = now
            self.flush()

    def flush(self) -> None:
        if not (self.n or self.steps):
            return
        try:
            _worker_queue.put((self.token, self.key, self.n, self.steps))
        except (OSError, ValueError, AttributeError):  # queue gone: progress is best effort
            pass
        self.n = self.steps = 0


def report_steps(n: int = 1) -> None:
    """Inner steps of the work item running in this process (e.g. optimiser steps of a block):
    shown beside the item's bar; a no-op outside a reporting task."""
    if _current is not None:
        _current.add_steps(n)


def call_reporting(token: int | None, key: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                   pass_report: bool) -> Any:
    """Run one task in a pool worker: `fn(*args, report=...)` (`pass_report`) or `fn(*args)`,
    its reports (and `report_steps`) going to the driver's Progress under `token`."""
    global _current
    rep = _Reporter(token, key) if token is not None and _worker_queue is not None else None
    prev, _current = _current, rep
    try:
        if pass_report:
            return fn(*args, report=rep if rep is not None else no_report)
        return fn(*args)
    finally:
        _current = prev
        if rep is not None:
            rep.flush()


def call_in_process(progress: Progress, key: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                    pass_report: bool) -> Any:
    """`call_reporting` for a task run in the driver's own process (reports update `progress`)."""
    global _current
    rep = progress.reporter(key)
    prev = _current
    _current = _DirectSteps(progress) if progress.live else None
    try:
        return fn(*args, report=rep) if pass_report else fn(*args)
    finally:
        _current = prev


class _DirectSteps:
    __slots__ = ("progress",)

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def add_steps(self, n: int) -> None:
        self.progress.add_steps(n)


def item_progress(label: str, unit: str, step: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a `parallel_map` work function with the label and unit of its bar
    (e.g. `@item_progress("select", "block")`); undecorated: ("select", "item"). A `step` is part
    of a bigger stage: its bar is drawn while it runs, and without a terminal it prints no line."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__thresher_progress__ = (label, unit, step)  # type: ignore[attr-defined]
        return fn

    return mark


def item_label(fn: Callable[..., Any]) -> tuple[str, str, bool]:
    """(label, unit, step) of a work function (see `item_progress`)."""
    label = getattr(fn, "__thresher_progress__", ("select", "item"))
    return (label[0], label[1], label[2] if len(label) > 2 else False)
