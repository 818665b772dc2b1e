"""Where one big input file is cut into several shards, so it spreads over every worker.

- Parquet: row ranges. A file of R rows becomes n = ceil(R / shard_rows) ranges [start, end)
  of about s = R / n rows each. Cut k (1 <= k < n) lies at the row-group boundary nearest to
  k * R / n rows when one lies within s / 4 rows of it (a tie: the lower one), else at row
  floor(k * R / n), inside a row group: a file of many small row groups is cut between them,
  and a file written with one huge row group (pandas' and pyarrow's default, up to 1,048,576
  rows) is still split. A shard's reader decodes the row groups that overlap its range and
  keeps only the range's rows (what lies before the range in its first group is decoded and
  dropped), numbered through the file.
- JSONL (uncompressed, UTF-8): at line starts. Planning reads the file once and counts the
  lines that start in each block of B bytes (a line ends at \\r\\n, \\n or a lone \\r, as the
  reader splits them; B = the smallest power of two >= size / 65,536 and >= 4 KiB, so a file has
  at most 65,536 blocks); a file of L lines becomes n = ceil(L / shard_rows) byte ranges
  [start, end), each starting at the first line that starts in a block, the block whose line
  count is nearest to k * L / n. A shard holds shard_rows lines give or take one block's
  lines; a line belongs to the shard where it starts; a shard knows the file-global number
  of its first line, so row numbers (and default ids `<file>:<row>`) do not depend on the cut.

Both depend only on the file's metadata or bytes and `shard_rows`, so a resumed run plans the
same shards.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

MIN_BLOCK = 1 << 12  # JSONL cut granularity: a cut is the first line start inside a block of B bytes,
MAX_BLOCKS = 1 << 16  # B >= MIN_BLOCK a power of two, with at most MAX_BLOCKS blocks in the file


def block_size(size: int) -> int:
    """B for a file of `size` bytes (see the module docstring)."""
    block = MIN_BLOCK
    while block * MAX_BLOCKS < size:
        block *= 2
    return block


def row_ranges(sizes: list[int], target: int) -> list[tuple[int, int]]:
    """Row ranges [start, end) of a Parquet file whose row groups hold `sizes` rows, about
    `target` rows each (see the module docstring); [(0, R)] when the file holds at most `target`."""
    total = sum(sizes)
    n = math.ceil(total / target) if target > 0 else 1
    if n <= 1:
        return [(0, total)]
    bounds = sorted({b for b in itertools.accumulate(sizes) if 0 < b < total})  # inner row-group boundaries
    cuts = []
    for k in range(1, n):
        near = _nearest(bounds, k * total / n, bounds)
        # within a quarter of a shard (s = total / n): |near - k * total / n| <= s / 4, in integers
        cuts.append(near if near is not None and 4 * abs(near * n - k * total) <= total else k * total // n)
    edges = [0, *cuts, total]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _nearest(values: list[int], target: float, keys: list[int]) -> int | None:
    """The key whose value (sorted ascending) is nearest `target` (the lower one on a tie)."""
    if not values:
        return None
    j = bisect.bisect_left(values, target)
    if j == 0:
        return keys[0]
    if j == len(values):
        return keys[-1]
    return keys[j - 1] if target - values[j - 1] <= values[j] - target else keys[j]


@dataclass(frozen=True)
class LineIndex:
    """Line starts of a file, counted per block: `before[b]` lines start before byte b * block;
    `first[b]` is the offset of the first line starting in block b (-1: none)."""

    size: int
    lines: int
    before: tuple[int, ...]
    first: tuple[int, ...]


def scan_lines(chunks: Iterable[bytes], block: int) -> LineIndex:
    """One pass over a file's raw bytes (any chunk sizes) -> its `LineIndex` in blocks of `block` bytes."""
    before: list[int] = []
    first: list[int] = []
    count = 0
    pos = 0  # offset of the next block
    prev = b""  # the byte before the next block
    pending = b""
    for chunk in _blocks(chunks, block):
        pending = chunk
        buf = prev + pending
        base = pos - len(prev)  # file offset of buf[0]
        scan = buf[:-1]  # a terminator at buf[q] (q < len(buf) - 1) starts a line at q + 1 inside the block
        n = scan.count(b"\n") + scan.count(b"\r") - buf.count(b"\r\n")
        before.append(count)
        if pos == 0:
            first.append(0)
            n += 1  # the file's first line
        else:
            q = _first_terminator(buf)
            first.append(-1 if q < 0 else base + q + 1)
        count += n
        pos += len(pending)
        prev = pending[-1:]
    return LineIndex(pos, count, tuple(before), tuple(first))


def _first_terminator(buf: bytes) -> int:
    """Index q < len(buf) - 1 of the first line terminator's last byte (\\n, or a lone \\r), or -1."""
    last = len(buf) - 1
    i_nl = buf.find(b"\n", 0, last)
    j = buf.find(b"\r", 0, i_nl if i_nl >= 0 else last)
    if j >= 0 and buf[j + 1] != 0x0A:
        return j  # a lone \r before any \n
    return i_nl


def _blocks(chunks: Iterable[bytes], block: int) -> Iterable[bytes]:
    """The bytes re-cut into blocks of exactly `block` bytes (the last may be shorter)."""
    carry = b""
    for chunk in chunks:
        carry = carry + chunk if carry else chunk
        start = 0
        while len(carry) - start >= block:
            yield carry[start:start + block]
            start += block
        carry = carry[start:]
    if carry:
        yield carry


def line_ranges(index: LineIndex, target: int) -> list[tuple[int, int, int, int]]:
    """(start byte, end byte, first line, lines) of each shard of a JSONL file (module docstring);
    one range covering the whole file when it holds at most `target` lines."""
    n = math.ceil(index.lines / target) if target > 0 else 1
    if n <= 1:
        return [(0, index.size, 0, index.lines)]
    cand = [(index.first[b], index.before[b]) for b in range(1, len(index.first)) if index.first[b] > 0]
    lines_before = [c[1] for c in cand]
    picks = sorted({_nearest(lines_before, k * index.lines / n, list(range(len(cand)))) for k in range(1, n)}
                   - {None})
    cuts = [(0, 0), *(cand[i] for i in picks), (index.size, index.lines)]  # type: ignore[index]
    return [(a, b, la, lb - la) for (a, la), (b, lb) in zip(cuts, cuts[1:]) if b > a]
