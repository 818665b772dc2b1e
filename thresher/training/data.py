"""Training feed: a torch IterableDataset over thresher's Parquet output shards.

Work is split by *row group*: every (file, row group) pair is one unit. Per epoch the
units are shuffled with a generator seeded by (seed, epoch); rank r of W takes units
r, r+W, ...; DataLoader worker w of K on that rank takes every K-th of those. Rows
inside a unit are shuffled with a generator seeded by (seed, epoch, file, row group).
No unit is read twice, so every row is yielded exactly once per epoch over all ranks
and workers (ranks can differ by at most one unit).

Resume: the training loop counts the samples it consumed on this rank in this epoch and
calls ``load_state_dict({"epoch": e, "samples_consumed": n})``. With DataLoader workers
the loader interleaves the workers' streams batch by batch, so the dataset needs the
loader's batch size (``loader_batch_size``) to know how many samples each worker gave;
it reproduces that interleaving from the row counts in the Parquet metadata (exact for
unpacked data; for packed data exact until the first worker runs dry near epoch end).

Samples (dicts of tensors) carry ``input_ids`` and ``labels`` (prompt tokens -100 for
instruction data), and, when the shards have them, ``weight`` (float), ``token_mask``
(int8, aligned to ``input_ids``) and ``hist_token_loss`` (float, index k = loss of token
k, leading 0). ``collate`` pads a list of samples into a batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from thresher.common.atomic import atomic_path
from thresher.common.templates import ALPACA_TEMPLATE  # the default prompt template (also re-exported)

IGNORE_INDEX = -100


def list_shards(path: str | Path) -> list[Path]:
    """The ``part-*.parquet`` files of a shard folder, sorted (``_``/``.`` entries ignored)."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"shard folder not found: {root}")
    files = sorted(p for p in root.glob("*.parquet") if not p.name.startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"no Parquet shards (part-*.parquet) in {root}")
    return files


def write_shards_atomic(tables: dict[str, pa.Table], dst: Path, compression: str = "zstd") -> None:
    """Write each table to ``dst/name``, each under a temporary name renamed over the target."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        with atomic_path(Path(dst) / name) as tmp:
            pq.write_table(table, tmp, compression=compression)


@dataclass(frozen=True)
class Unit:
    """One row group of one shard file: the unit of work that ranks and workers split."""

    file_index: int
    row_group: int
    num_rows: int


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def tokenizer_ids(tokenizer: Any) -> tuple[int, int | None]:
    """(eos id, bos id or None) of a Hugging Face tokenizer; a clear error without EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token first")
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(eos), (int(bos) if bos is not None else None)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_row(tokenizer: Any, row: dict[str, Any], instruction: bool, *, template: str = ALPACA_TEMPLATE,
                 text_column: str = "text", prompt_column: str = "prompt", response_column: str = "response",
                 add_bos: bool = False) -> tuple[list[int], int]:
    """Tokenize one row the way the dataset and the offline writers do.

    Returns (ids, prompt_len): for instruction rows ids = [bos] + template(prompt) +
    response + [eos] and the first ``prompt_len`` ids are the prompt; for text rows
    ids = [bos] + text + [eos] and prompt_len = 0. Offline ``token_mask`` and
    ``hist_token_loss`` columns are aligned to these ids.
    """
    eos, bos = tokenizer_ids(tokenizer)
    head = [bos] if add_bos and bos is not None else []
    if instruction:
        prompt = row.get(prompt_column)
        response = row.get(response_column)
        if prompt is None or response is None:
            raise ValueError(f"row {row.get('id')!r}: instruction rows need {prompt_column!r} and {response_column!r}")
        p = head + encode(tokenizer, template.format(prompt=prompt))
        return p + encode(tokenizer, response) + [eos], len(p)
    text = row.get(text_column)
    if text is None:
        raise ValueError(f"row {row.get('id')!r}: column {text_column!r} is null")
    return head + encode(tokenizer, text) + [eos], 0


class ShardDataset(IterableDataset):
    """Stream tokenized samples from Parquet shards (see the module docstring).

    Args:
        path: shard folder (``part-*.parquet``) or one Parquet file.
        tokenizer: a Hugging Face tokenizer (needs ``eos_token_id``).
        mode: ``"auto"`` (instruction when the shards have prompt and response columns),
            ``"pretrain"`` or ``"instruction"``.
        max_length: truncate samples to this many tokens (unpacked mode).
        pack: concatenate pretraining documents (each ends with EOS) and cut blocks of
            ``block_size`` tokens; default: True for pretraining, never for instructions.
        block_size: block length when packing.
        seed, shuffle: deterministic shuffling of units and rows per epoch.
        rank, world_size: distributed position; default from torch.distributed.
        loader_batch_size: the DataLoader's batch size (only needed to resume with workers).
        prompt_template: format string with ``{prompt}`` for instruction data.
        add_bos: prepend BOS; default True when the tokenizer's BOS differs from EOS.
        use_weights, use_token_mask, use_hist_loss: read those columns when present.
        return_row_index: add ``row_index`` (global row number over the sorted shards;
            unpacked mode only), for bookkeeping and tests.
    """

    def __init__(self, path: str | Path, tokenizer: Any, *, mode: str = "auto", max_length: int = 512,
                 pack: bool | None = None, block_size: int = 512, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, loader_batch_size: int = 1,
                 prompt_template: str = ALPACA_TEMPLATE, text_column: str = "text",
                 prompt_column: str = "prompt", response_column: str = "response", add_bos: bool | None = None,
                 use_weights: bool = True, use_token_mask: bool = True, use_hist_loss: bool = True,
                 return_row_index: bool = False) -> None:
        super().__init__()
        if mode not in ("auto", "pretrain", "instruction"):
            raise ValueError(f"mode: expected auto|pretrain|instruction, got {mode!r}")
        if "{prompt}" not in prompt_template:
            raise ValueError("prompt_template: must contain {prompt}")
        self.files = list_shards(path)
        self.tokenizer = tokenizer
        self.eos_id, bos = tokenizer_ids(tokenizer)
        self.add_bos = (bos is not None and bos != self.eos_id) if add_bos is None else bool(add_bos)
        schema = pq.read_schema(self.files[0])
        names = set(schema.names)
        for f in self.files[1:]:
            other = set(pq.read_schema(f).names)
            if other != names:
                raise ValueError(f"{f}: columns {sorted(other)} differ from {self.files[0].name}: {sorted(names)}")
        has_instr = prompt_column in names and response_column in names
        if mode == "auto":
            mode = "instruction" if has_instr else "pretrain"
        if mode == "instruction" and not has_instr:
            raise ValueError(f"mode instruction: shards lack {prompt_column!r}/{response_column!r} (have {sorted(names)})")
        if mode == "pretrain" and text_column not in names:
            raise ValueError(f"mode pretrain: shards lack the {text_column!r} column (have {sorted(names)})")
        self.mode = mode
        self.pack = (mode == "pretrain") if pack is None else bool(pack)
        if self.pack and mode == "instruction":
            raise ValueError("pack: packing is for pretraining data; instruction samples are never packed")
        if max_length < 2 or block_size < 2:
            raise ValueError("max_length and block_size must be >= 2")
        self.max_length, self.block_size = int(max_length), int(block_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        if rank is None or world_size is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialised else 0 if rank is None else rank
            world_size = dist.get_world_size() if initialised else 1 if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        if loader_batch_size < 1:
            raise ValueError("loader_batch_size must be >= 1")
        self.loader_batch_size = int(loader_batch_size)
        self.template = prompt_template
        self.text_column, self.prompt_column, self.response_column = text_column, prompt_column, response_column
        self.columns = ["id"] if "id" in names else []
        self.columns += [prompt_column, response_column] if mode == "instruction" else [text_column]
        self.weight_column = "weight" if use_weights and "weight" in names else None
        self.mask_column = "token_mask" if use_token_mask and "token_mask" in names else None
        self.hist_column = "hist_token_loss" if use_hist_loss and "hist_token_loss" in names else None
        self.columns += [c for c in (self.weight_column, self.mask_column, self.hist_column) if c]
        self.units = []
        self._unit_offset: dict[tuple[int, int], int] = {}
        offset = 0
        for i, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                self.units.append(Unit(i, g, meta.row_group(g).num_rows))
                self._unit_offset[(i, g)] = offset
                offset += meta.row_group(g).num_rows
        self.return_row_index = bool(return_row_index)
        if self.return_row_index and self.pack:
            raise ValueError("return_row_index: not available for packed data")
        self.num_rows = sum(u.num_rows for u in self.units)
        self.epoch = 0
        self._skip = 0  # samples of this rank's epoch already consumed (set by load_state_dict)

    # -- epoch / resume state ----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the shuffle); clears a pending resume position."""
        self.epoch = int(epoch)
        self._skip = 0

    def state_dict(self, samples_consumed: int) -> dict[str, int]:
        """Resume state after ``samples_consumed`` samples of the current epoch on this rank."""
        return {"epoch": self.epoch, "samples_consumed": int(samples_consumed), "seed": self.seed,
                "world_size": self.world_size, "loader_batch_size": self.loader_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the epoch in ``state`` after its first ``samples_consumed`` samples."""
        for key in ("seed", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"resume state has {key}={state[key]}, dataset has {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self._skip = int(state["samples_consumed"])
        if self._skip < 0:
            raise ValueError("samples_consumed must be >= 0")

    # -- work split --------------------------------------------------------------------
    def epoch_units(self, epoch: int) -> list[Unit]:
        units = list(self.units)
        if self.shuffle:
            order = _rng(self.seed, epoch, 0x5EED).permutation(len(units))
            units = [units[i] for i in order]
        return units

    def rank_units(self, epoch: int) -> list[Unit]:
        return self.epoch_units(epoch)[self.rank::self.world_size]

    def worker_units(self, epoch: int, worker: int, num_workers: int) -> list[Unit]:
        return self.rank_units(epoch)[worker::num_workers]

    def __len__(self) -> int:
        """Unpacked samples this rank yields per epoch (packed: an estimate is impossible)."""
        if self.pack:
            raise TypeError("len() is unknown for packed data (depends on token counts)")
        return sum(u.num_rows for u in self.rank_units(self.epoch))

    def _resume_plan(self, num_workers: int) -> tuple[list[int], int]:
        """(samples each worker already gave, worker whose batch comes next) after ``_skip``.

        Replays the DataLoader's order: one batch per worker in turn, skipping workers
        that ran dry (their sizes come from the Parquet metadata; unknown when packing).
        """
        if num_workers <= 1:
            return [self._skip], 0
        counts = None if self.pack else [sum(u.num_rows for u in self.worker_units(self.epoch, w, num_workers))
                                         for w in range(num_workers)]
        left, b = self._skip, self.loader_batch_size
        given = [0] * num_workers
        nxt = 0
        idle = 0
        while left > 0 and idle < num_workers:
            avail = b if counts is None else min(b, counts[nxt] - given[nxt])
            if avail > 0:
                take = min(avail, left)
                given[nxt] += take
                left -= take
                idle = 0
            else:
                idle += 1
            nxt = (nxt + 1) % num_workers
        return given, nxt

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        given, start = self._resume_plan(num_workers)
        worker = (worker + start) % num_workers  # loader worker 0 continues the stream's next batch
        skip = given[worker]
        units = self.worker_units(self.epoch, worker, num_workers)
        stream = self._packed(units) if self.pack else self._rows(units, skip)
        if self.pack:
            for i, sample in enumerate(stream):
                if i >= skip:
                    yield sample
        else:
            yield from stream

    def _read_unit(self, unit: Unit) -> list[dict[str, Any]]:
        table = pq.ParquetFile(self.files[unit.file_index]).read_row_group(unit.row_group, columns=self.columns)
        rows = table.to_pylist()
        base = self._unit_offset[(unit.file_index, unit.row_group)]
        for k, row in enumerate(rows):
            row["__row_index"] = base + k
        if self.shuffle:
            order = _rng(self.seed, self.epoch, unit.file_index, unit.row_group).permutation(len(rows))
            rows = [rows[i] for i in order]
        return rows

    def _rows(self, units: Sequence[Unit], skip: int) -> Iterator[dict[str, torch.Tensor]]:
        for unit in units:
            if skip >= unit.num_rows:  # skip whole row groups without reading them
                skip -= unit.num_rows
                continue
            rows = self._read_unit(unit)[skip:]
            skip = 0
            for row in rows:
                yield self._sample(row)

    def _sample(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        ids, plen = tokenize_row(self.tokenizer, row, self.mode == "instruction", template=self.template,
                                 text_column=self.text_column, prompt_column=self.prompt_column,
                                 response_column=self.response_column, add_bos=self.add_bos)
        n = len(ids)
        ids = ids[:self.max_length]
        input_ids = torch.tensor(ids, dtype=torch.long)
        labels = input_ids.clone()
        labels[:plen] = IGNORE_INDEX
        out: dict[str, torch.Tensor] = {"input_ids": input_ids, "labels": labels}
        if self.return_row_index:
            out["row_index"] = torch.tensor(row["__row_index"], dtype=torch.long)
        if self.weight_column:
            w = row[self.weight_column]
            out["weight"] = torch.tensor(1.0 if w is None else float(w), dtype=torch.float32)
        for col, dtype in ((self.mask_column, torch.int8), (self.hist_column, torch.float32)):
            if not col:
                continue
            vals = row[col]
            if vals is None:
                vals = [1] * n if col == self.mask_column else [0.0] * n
            if len(vals) != n:
                raise ValueError(f"row {row.get('id')!r}: {col} has {len(vals)} entries but the row tokenizes to "
                                 f"{n} tokens; was it written with another tokenizer or template?")
            out[col] = torch.tensor(list(vals)[:self.max_length], dtype=dtype)
        return out

    def _packed(self, units: Sequence[Unit]) -> Iterator[dict[str, torch.Tensor]]:
        """Concatenate documents (each ends with EOS) and cut ``block_size`` blocks.

        A block's ``weight`` is the token-weighted mean of its documents' weights; a
        partial block at the end of a worker's stream is dropped.
        """
        buf: list[int] = []
        wbuf: list[float] = []
        for unit in units:
            for row in self._read_unit(unit):
                ids, _ = tokenize_row(self.tokenizer, row, False, text_column=self.text_column,
                                      add_bos=self.add_bos)
                buf.extend(ids)
                if self.weight_column:
                    w = row[self.weight_column]
                    wbuf.extend([1.0 if w is None else float(w)] * len(ids))
                while len(buf) >= self.block_size:
                    block = torch.tensor(buf[:self.block_size], dtype=torch.long)
                    out = {"input_ids": block, "labels": block.clone()}
                    if self.weight_column:
                        out["weight"] = torch.tensor(float(np.mean(wbuf[:self.block_size])), dtype=torch.float32)
                        del wbuf[:self.block_size]
                    del buf[:self.block_size]
                    yield out


def collate(samples: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad samples into a batch: input_ids, attention_mask, labels (+ optional columns)."""
    if not samples:
        raise ValueError("collate: empty batch")
    n = max(s["input_ids"].numel() for s in samples)
    b = len(samples)
    batch = {
        "input_ids": torch.full((b, n), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((b, n), dtype=torch.long),
        "labels": torch.full((b, n), IGNORE_INDEX, dtype=torch.long),
    }
    if "token_mask" in samples[0]:
        batch["token_mask"] = torch.zeros((b, n), dtype=torch.int8)
    if "hist_token_loss" in samples[0]:
        batch["hist_token_loss"] = torch.zeros((b, n), dtype=torch.float32)
    for i, s in enumerate(samples):
        k = s["input_ids"].numel()
        batch["input_ids"][i, :k] = s["input_ids"]
        batch["attention_mask"][i, :k] = 1
        batch["labels"][i, :k] = s["labels"]
        for col in ("token_mask", "hist_token_loss"):
            if col in batch:
                batch[col][i, :k] = s[col]
    for key in ("weight", "row_index"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


def make_loader(dataset: ShardDataset, batch_size: int, num_workers: int = 0, pad_id: int | None = None,
                **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` with ``collate``; sets ``dataset.loader_batch_size``."""
    dataset.loader_batch_size = int(batch_size)
    if pad_id is None:
        pad_id = getattr(dataset.tokenizer, "pad_token_id", None)
        pad_id = dataset.eos_id if pad_id is None else pad_id
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                       collate_fn=functools.partial(collate, pad_id=pad_id), **kwargs)
