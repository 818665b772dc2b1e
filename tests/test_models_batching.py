"""Token-budget batching: budgets, order restoration, long-document policies, prefetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest_models import sample_texts, train_tokenizer
from thresher.models.batching import Segment, TokenBatcher, prefetch, special_frame


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root: Path = tmp_path_factory.mktemp("tok")
    return {style: train_tokenizer(root / style, style) for style in ("gpt2", "llama", "bert")}


def test_batches_respect_budget_and_cover_every_doc(tokenizers: dict) -> None:
    texts = sample_texts(200, seed=1)
    batcher = TokenBatcher(tokenizers["gpt2"], max_length=512, max_tokens_per_batch=1024, sort_window=64)
    seen: list[int] = []
    for b in batcher.batches(texts):
        rows, width = b.input_ids.shape
        assert rows * width <= 1024
        assert width == max(b.lengths)
        for row, seg in enumerate(b.segments):
            assert b.input_ids[row, : len(seg.ids)].tolist() == seg.ids
            assert int(b.attention_mask[row].sum()) == len(seg.ids)
        seen += [s.doc for s in b.segments if s.chunk == 0]
    assert sorted(seen) == list(range(len(texts)))
    stats = batcher.stats
    assert stats.docs_chunked == 0 and stats.real_tokens == sum(len(s) for s in batcher.encode(texts))
    assert 0 <= stats.padding_fraction < 0.2  # sorted within windows of 64 docs


def test_sorting_beats_input_order_padding(tokenizers: dict) -> None:
    texts = sample_texts(256, seed=2)
    batcher = TokenBatcher(tokenizers["gpt2"], max_length=128, max_tokens_per_batch=512, sort_window=256)
    list(batcher.batches(texts))
    # the same budget filled greedily in input order
    lengths = [min(len(x), 128) for x in batcher.encode(texts)]
    padded = real = 0
    group: list[int] = []
    for n in lengths + [10**9]:
        if group and (len(group) + 1) * max(group + [n]) > 512:
            padded += len(group) * max(group)
            real += sum(group)
            group = []
        group.append(n)
    assert batcher.stats.padding_fraction < 0.1 < 1 - real / padded


def test_lm_chunks_predict_every_token_once(tokenizers: dict) -> None:
    tok = tokenizers["llama"]
    batcher = TokenBatcher(tok, max_length=10, policy="chunk", mode="lm")
    ids = list(range(37))
    segs = batcher.split(0, ids)
    assert all(len(s.ids) <= 10 for s in segs)
    predicted: list[int] = []
    for s in segs:
        assert s.ids == ids[s.start: s.start + len(s.ids)]
        predicted += list(range(s.start + 1, s.start + len(s.ids)))
    assert predicted == list(range(1, 37))
    trunc = TokenBatcher(tok, max_length=10, policy="truncate", mode="lm").split(0, ids)
    assert len(trunc) == 1 and trunc[0].ids == ids[:10] and trunc[0].truncated


def test_encoder_chunks_get_special_tokens(tokenizers: dict) -> None:
    tok = tokenizers["bert"]
    prefix, suffix = special_frame(tok)
    assert prefix == [tok.cls_token_id] and suffix == [tok.sep_token_id]
    batcher = TokenBatcher(tok, max_length=8, policy="chunk", mode="encoder")
    segs = batcher.split(3, list(range(100, 115)))
    assert [s.ids[1:-1] for s in segs] == [list(range(100, 106)), list(range(106, 112)), list(range(112, 115))]
    assert all(s.ids[0] == tok.cls_token_id and s.ids[-1] == tok.sep_token_id and s.doc == 3 for s in segs)
    # encode + split agrees with the tokenizer's own encoding when the text fits
    text = "The quick brown fox."
    wide = TokenBatcher(tok, max_length=128, mode="encoder")
    assert wide.split(0, wide.encode([text])[0])[0].ids == tok(text)["input_ids"]


def test_bad_settings(tokenizers: dict) -> None:
    with pytest.raises(ValueError, match="long_doc_policy"):
        TokenBatcher(tokenizers["gpt2"], max_length=8, policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        TokenBatcher(tokenizers["bert"], max_length=2, mode="encoder")


def test_plan_keeps_oversized_segment_alone(tokenizers: dict) -> None:
    batcher = TokenBatcher(tokenizers["gpt2"], max_length=64, max_tokens_per_batch=16, max_batch_size=3)
    segs = [Segment(i, 0, [1] * n) for i, n in enumerate([40, 5, 5, 5, 5, 5, 5, 5])]
    plan = batcher.plan(segs)
    assert plan[0] == [0]
    assert all(len(g) <= 3 for g in plan)
    assert sorted(i for g in plan for i in g) == list(range(8))


def test_prefetch_order_errors_and_early_stop() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def boom():
        yield 1
        raise RuntimeError("tokeniser broke")

    with pytest.raises(RuntimeError, match="tokeniser broke"):
        list(prefetch(boom()))
    produced: list[int] = []

    def counting():
        for i in range(10_000):
            produced.append(i)
            yield i

    for i in prefetch(counting(), depth=2):
        if i == 3:
            break
    assert len(produced) < 100
