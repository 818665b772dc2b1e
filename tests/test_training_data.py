"""ShardDataset: splitting over ranks x workers, deterministic shuffle, resume, labels, packing."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from thresher.training.data import ShardDataset, collate, make_loader, tokenize_row  # noqa: E402
from benchmarks.synthetic import diverse_doc, instruction_rows, write_shards  # noqa: E402
from thresher.models.tiny import train_bpe_tokenizer  # noqa: E402

import numpy as np  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

TEMPLATE = "Q: {prompt}\nA: "


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    texts = [diverse_doc(rng) for _ in range(200)] + [r["prompt"] + " " + r["response"] for r in instruction_rows(200)]
    return train_bpe_tokenizer(texts, 400)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    rng = np.random.default_rng(1)
    rows = [{"id": f"d{i}", "text": diverse_doc(rng, (1, 3))} for i in range(103)]
    d = tmp_path_factory.mktemp("text")
    write_shards(rows, d, n_shards=3, row_group_size=7)  # 15 units of uneven sizes
    return d


def _rows_of(loader) -> list[int]:
    return [int(i) for b in loader for i in b["row_index"]]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 2)])
def test_every_row_exactly_once_across_ranks_and_workers(tok, text_dir, world, workers):
    seen: list[int] = []
    for rank in range(world):
        ds = ShardDataset(text_dir, tok, pack=False, seed=3, rank=rank, world_size=world, return_row_index=True)
        seen += _rows_of(make_loader(ds, 4, num_workers=workers))
    assert sorted(seen) == list(range(103))


def test_shuffle_is_deterministic_by_seed_and_epoch(tok, text_dir):
    def order(seed, epoch):
        ds = ShardDataset(text_dir, tok, pack=False, seed=seed, return_row_index=True)
        ds.set_epoch(epoch)
        return _rows_of(make_loader(ds, 5))
    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and sorted(a) == sorted(order(0, 1))
    assert a != order(1, 0)
    assert a != sorted(a)


@pytest.mark.parametrize("workers,stop_batches", [(0, 5), (2, 3), (2, 7), (3, 8), (3, 14), (3, 16), (2, 15)])
def test_resume_mid_epoch_continues_where_it_stopped(tok, text_dir, workers, stop_batches):
    bs = 3

    def fresh():
        ds = ShardDataset(text_dir, tok, pack=False, seed=5, rank=1, world_size=2, return_row_index=True)
        ds.set_epoch(2)
        return ds

    ds = fresh()
    full = [[int(i) for i in b["row_index"]] for b in make_loader(ds, bs, num_workers=workers)]
    # first run: stop after `stop_batches` batches and save the state
    ds = fresh()
    first, consumed = [], 0
    for k, b in enumerate(make_loader(ds, bs, num_workers=workers)):
        if k == stop_batches:
            break
        first.append([int(i) for i in b["row_index"]])
        consumed += len(b["row_index"])
    state = ds.state_dict(consumed)
    # second run: a new dataset object resumes
    ds2 = ShardDataset(text_dir, tok, pack=False, seed=5, rank=1, world_size=2, return_row_index=True)
    ds2.load_state_dict(state)
    rest = [[int(i) for i in b["row_index"]] for b in make_loader(ds2, bs, num_workers=workers)]
    assert first + rest == full
    # the pending skip is cleared by the next epoch
    ds2.set_epoch(3)
    assert len(_rows_of(make_loader(ds2, bs))) == len(ds2)


def test_resume_rejects_other_seed(tok, text_dir):
    ds = ShardDataset(text_dir, tok, pack=False, seed=5)
    with pytest.raises(ValueError, match="seed"):
        ds.load_state_dict({"epoch": 0, "samples_consumed": 3, "seed": 6})


def test_instruction_labels_mask_prompt_with_template(tok, tmp_path):
    rows = instruction_rows(10, seed=2)
    write_shards(rows, tmp_path, n_shards=1)
    ds = ShardDataset(tmp_path, tok, prompt_template=TEMPLATE, shuffle=False)
    assert ds.mode == "instruction" and not ds.pack
    for row, s in zip(rows, ds):
        prompt_ids = tok(TEMPLATE.format(prompt=row["prompt"]), add_special_tokens=False)["input_ids"]
        resp_ids = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert s["input_ids"].tolist() == prompt_ids + resp_ids
        assert (s["labels"][:len(prompt_ids)] == -100).all()
        assert s["labels"][len(prompt_ids):].tolist() == resp_ids


def test_default_alpaca_template(tok, tmp_path):
    write_shards(instruction_rows(3), tmp_path, n_shards=1)
    ds = ShardDataset(tmp_path, tok, shuffle=False)
    s = next(iter(ds))
    text = tok.decode(s["input_ids"][s["labels"] == -100])
    assert "### Instruction:" in text and text.rstrip().endswith("### Response:")


def test_packing_concatenates_with_eos_in_fixed_blocks(tok, tmp_path):
    rng = np.random.default_rng(4)
    rows = [{"id": str(i), "text": diverse_doc(rng), "weight": float(i % 3 + 1)} for i in range(40)]
    write_shards(rows, tmp_path, n_shards=1)
    ds = ShardDataset(tmp_path, tok, block_size=32, shuffle=False)
    assert ds.pack
    blocks = list(ds)
    stream = []
    for r in rows:
        stream += tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(blocks) == len(stream) // 32
    assert all(b["input_ids"].numel() == 32 for b in blocks)
    assert torch.cat([b["input_ids"] for b in blocks]).tolist() == stream[:32 * len(blocks)]
    assert all(1.0 <= float(b["weight"]) <= 3.0 for b in blocks)


def test_optional_columns_flow_into_batches(tok, tmp_path):
    rows = instruction_rows(6, seed=3)
    for r in rows:
        ids, _ = tokenize_row(tok, r, True, template=TEMPLATE)
        r["token_mask"] = [1 if k % 2 else 0 for k in range(len(ids))]
        r["hist_token_loss"] = [0.0] + [float(k) for k in range(1, len(ids))]
        r["weight"] = 0.5
    write_shards(rows, tmp_path, n_shards=1,
                 schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
                                   ("clean", pa.string()), ("noisy_words", pa.list_(pa.int64())),
                                   ("token_mask", pa.list_(pa.int8())), ("hist_token_loss", pa.list_(pa.float32())),
                                   ("weight", pa.float32())]))
    ds = ShardDataset(tmp_path, tok, prompt_template=TEMPLATE, shuffle=False)
    b = collate(list(ds)[:3], pad_id=tok.eos_token_id)
    assert b["token_mask"].dtype == torch.int8 and b["hist_token_loss"].shape == b["input_ids"].shape
    n0 = int(b["attention_mask"][0].sum())
    assert b["token_mask"][0, :n0].tolist() == [k % 2 for k in range(n0)]
    assert b["hist_token_loss"][0, 5] == 5.0
    assert torch.allclose(b["weight"], torch.full((3,), 0.5))
    # a mask written with another template no longer lines up: clear error
    bad = ShardDataset(tmp_path, tok, shuffle=False)
    with pytest.raises(ValueError, match="token_mask has"):
        next(iter(bad))


def test_clear_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError):
        ShardDataset(tmp_path / "missing", tok)
    write_shards([{"id": "a", "text": "x"}], tmp_path, n_shards=1)
    with pytest.raises(ValueError, match="instruction"):
        ShardDataset(tmp_path, tok, mode="instruction")
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(tmp_path, tok, rank=2, world_size=2)
