"""Token-budget batching with length sorting, long-document policies and a prefetch thread.

Documents are tokenised on CPU in windows of `sort_window` documents. Within a window the
pieces ("segments") are sorted by length, longest first, and packed into batches whose padded
size (rows x longest row) stays within `max_tokens_per_batch`. Each batch is padded on the
right to its own longest row. Segments remember their document index and token offset, so
callers scatter results back to input order. A background thread tokenises and pads the next
batches while the model runs on the current one (fast tokenizers release the GIL).

Long documents (more tokens than `max_length`):
- `chunk` (default): split into pieces of at most `max_length` tokens. For causal LMs (`lm`
  mode) consecutive chunks overlap by one token, so every token after the first is predicted
  exactly once and the document NLL averages over all of its tokens. For encoders (`encoder`
  mode) chunks do not overlap and each gets the tokenizer's special tokens.
- `truncate`: keep the first `max_length` tokens.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch

LongDocPolicy = Literal["chunk", "truncate"]
Mode = Literal["lm", "encoder"]
T = TypeVar("T")


@dataclass
class Segment:
    """One model input row: a whole document or one chunk of it."""

    doc: int  # position of the document in the caller's list
    start: int  # offset of ids[0] in the document's token list (lm mode)
    ids: list[int]
    chunk: int = 0  # chunk number within the document
    truncated: bool = False


@dataclass
class Batch:
    """Padded model inputs for a group of segments (right padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    segments: list[Segment]
    lengths: list[int]

    @property
    def real_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class BatchStats:
    """Counters over all batches produced so far."""

    batches: int = 0
    segments: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    docs_chunked: int = 0
    docs_truncated: int = 0

    @property
    def padding_fraction(self) -> float:
        """Share of model input positions that are padding."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "segments": self.segments, "real_tokens": self.real_tokens,
                "padded_tokens": self.padded_tokens, "padding_fraction": round(self.padding_fraction, 4),
                "docs_chunked": self.docs_chunked, "docs_truncated": self.docs_truncated}


@dataclass
class TokenBatcher:
    """Tokenise, split long documents, sort by length and form batches by token budget."""

    tokenizer: Any
    max_length: int
    max_tokens_per_batch: int = 4096
    policy: LongDocPolicy = "chunk"
    mode: Mode = "lm"
    sort_window: int = 1024
    max_batch_size: int | None = None
    prefetch: int = 2
    text_prefix: str = ""
    max_padding: float = 0.05
    min_fill: float = 0.25
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        if self.policy not in ("chunk", "truncate"):
            raise ValueError(f"long_doc_policy must be 'chunk' or 'truncate', got {self.policy!r}")
        if self.mode not in ("lm", "encoder"):
            raise ValueError(f"mode must be 'lm' or 'encoder', got {self.mode!r}")
        self._prefix, self._suffix = special_frame(self.tokenizer) if self.mode == "encoder" else ([], [])
        self._n_special = len(self._prefix) + len(self._suffix)
        if self.max_length < self._n_special + 1 or (self.mode == "lm" and self.max_length < 2):
            raise ValueError(f"max_length {self.max_length} is too small for this tokenizer")
        if self.max_tokens_per_batch < 1:
            raise ValueError("max_tokens_per_batch must be positive")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0  # masked out: any id works for padding

    # -- tokenising and splitting -------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (lm: with the tokenizer's special tokens; encoder: without)."""
        if not texts:
            return []
        if self.text_prefix:
            texts = [self.text_prefix + t for t in texts]
        out = self.tokenizer(list(texts), add_special_tokens=self.mode == "lm", truncation=False,
                             return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return out["input_ids"]

    def split(self, doc: int, ids: list[int]) -> list[Segment]:
        """The segments of one document under the long-document policy."""
        if self.mode == "lm":
            n, size = len(ids), self.max_length
            if n <= size:
                return [Segment(doc, 0, ids)]
            if self.policy == "truncate":
                return [Segment(doc, 0, ids[:size], truncated=True)]
            step, segs, start = size - 1, [], 0
            while start + 1 < n:  # each chunk predicts at least one new token
                segs.append(Segment(doc, start, ids[start:start + size], chunk=len(segs)))
                start += step
            return segs
        body = self.max_length - self._n_special
        def wrap(body_ids: list[int]) -> list[int]:
            return self._prefix + body_ids + self._suffix

        if len(ids) <= body:
            return [Segment(doc, 0, wrap(ids))]
        if self.policy == "truncate":
            return [Segment(doc, 0, wrap(ids[:body]), truncated=True)]
        return [Segment(doc, s, wrap(ids[s:s + body]), chunk=i) for i, s in enumerate(range(0, len(ids), body))]

    # -- batching ------------------------------------------------------------------------------
    def plan(self, segments: Sequence[Segment]) -> list[list[int]]:
        """Indices of `segments` per batch: longest first, padded size within the token budget.

        A batch also closes early when the next (shorter) row would lift its padding share
        above `max_padding`, once it holds at least `min_fill` of the budget: small batches
        cost little, padded positions cost a full forward.
        """
        order = sorted(range(len(segments)), key=lambda i: -len(segments[i].ids))
        batches: list[list[int]] = []
        current: list[int] = []
        width = real = 0
        cap = self.max_batch_size or 1 << 30
        floor = self.min_fill * self.max_tokens_per_batch
        for i in order:
            length = max(1, len(segments[i].ids))
            if current:
                rows = len(current) + 1
                over = rows * width > self.max_tokens_per_batch or len(current) >= cap
                padded = 1.0 - (real + length) / (rows * width)
                if over or (padded > self.max_padding and len(current) * width >= floor):
                    batches.append(current)
                    current = []
            if not current:
                width, real = length, 0
            current.append(i)
            real += length
        if current:
            batches.append(current)
        return batches

    def collate(self, segments: Sequence[Segment]) -> Batch:
        """Pad a list of segments on the right into tensors."""
        lengths = [len(s.ids) for s in segments]
        width = max(max(lengths), 1)
        ids = np.full((len(segments), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(segments), width), dtype=np.int64)
        for row, seg in enumerate(segments):
            ids[row, : len(seg.ids)] = seg.ids
            mask[row, : len(seg.ids)] = 1
        return Batch(torch.from_numpy(ids), torch.from_numpy(mask), list(segments), lengths)

    def _generate(self, texts: Sequence[str], indices: Sequence[int]) -> Iterator[Batch]:
        for lo in range(0, len(texts), self.sort_window):
            window_ids = self.encode(texts[lo:lo + self.sort_window])
            segments: list[Segment] = []
            for doc, ids in zip(indices[lo:lo + self.sort_window], window_ids):
                segs = self.split(doc, ids)
                if len(segs) > 1:
                    self.stats.docs_chunked += 1
                elif segs[0].truncated:
                    self.stats.docs_truncated += 1
                segments.extend(segs)
            for group in self.plan(segments):
                batch = self.collate([segments[i] for i in group])
                self.stats.batches += 1
                self.stats.segments += len(group)
                self.stats.real_tokens += batch.real_tokens
                self.stats.padded_tokens += batch.padded_tokens
                yield batch

    def batches(self, texts: Sequence[str], indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """Batches for `texts` (document numbers `indices`, default 0..n-1), prefetched."""
        if indices is None:
            indices = range(len(texts))
        if len(indices) != len(texts):
            raise ValueError("texts and indices differ in length")
        gen = self._generate(texts, list(indices))
        return prefetch(gen, self.prefetch) if self.prefetch > 0 else gen


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. [CLS] / [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return list(full[:k]), list(full[k + len(plain):])
    raise ValueError("cannot locate the text inside the tokenizer's special-token template")


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, keeping up to `depth` items ready.

    Exceptions in the producer re-raise in the consumer; a consumer that stops early stops
    the producer at its next item.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=run, name="thresher-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def move(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and mask on `device` (non-blocking from pinned memory on CUDA)."""
    if device.type == "cuda":
        return (batch.input_ids.pin_memory().to(device, non_blocking=True),
                batch.attention_mask.pin_memory().to(device, non_blocking=True))
    return batch.input_ids, batch.attention_mask

