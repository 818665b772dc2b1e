"""ssToken: SPEC 6.3 checks 1-8, random baseline, EMA history, offline masks."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from thresher.training.data import ShardDataset, collate, tokenize_row  # noqa: E402
from thresher.training.loss import Objective, masked_loss  # noqa: E402
from thresher.training.sstoken import (  # noqa: E402
    LastLayerAttention, SSToken, SSTokenConfig, adjusted_prompt_attention, aligned_token_losses, attention_score,
    keep_counts, prompt_attention_score, prompt_positions, response_positions, select_tokens, top_tokens,
    write_token_masks)
from benchmarks.synthetic import DIGITS, instruction_rows, write_shards  # noqa: E402
from thresher.models.tiny import train_bpe_tokenizer  # noqa: E402

TEMPLATE = "{prompt} ="


@pytest.fixture(scope="module")
def tok():
    rows = instruction_rows(300, seed=0)
    return train_bpe_tokenizer([TEMPLATE.format(prompt=r["prompt"]) + " " + r["response"] for r in rows], 300)


def gpt2(tok, attn="sdpa", seed=0, dropout=0.0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2, n_head=4, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, eos_token_id=tok.eos_token_id)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg)


def llama(tok, attn="sdpa", seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def batch_of(tok, rows):
    samples = []
    for r in rows:
        ids, plen = tokenize_row(tok, r, True, template=TEMPLATE)
        t = torch.tensor(ids)
        lab = t.clone()
        lab[:plen] = -100
        samples.append({"input_ids": t, "labels": lab})
    return collate(samples, tok.eos_token_id)


@pytest.fixture(scope="module")
def batch(tok):
    return batch_of(tok, instruction_rows(6, seed=1, length=(3, 9)))


# 1 ---------------------------------------------------------------------------------------
def test_rho_one_equals_full_sft_loss(tok, batch):
    model = gpt2(tok).eval()
    obj = Objective(sstoken=SSTokenConfig(rho=1.0, gamma=0.5)).setup(model)
    loss, out = obj(model, batch, step=0)
    full = masked_loss(out.logits, batch["labels"])
    assert torch.equal(loss, full) or abs(float(loss.detach()) - float(full.detach())) < 1e-6
    with torch.no_grad():
        reference = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["labels"]).loss
    assert abs(float(full.detach()) - float(reference)) < 1e-5


# 2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.3, 0.6, 0.7, 1.0])
@pytest.mark.parametrize("mode", ["sstoken", "random"])
def test_keeps_exactly_ceil_rho_response_tokens_and_never_prompt(tok, batch, rho, mode):
    model = gpt2(tok).eval()
    sst = SSToken(SSTokenConfig(rho=rho, mode=mode)).setup(model)
    with sst.capture(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = sst.token_mask(batch, logits, cap, step=0)
    resp = response_positions(batch["labels"])
    n = resp.sum(1)
    expected = torch.tensor([int(np.ceil(round(rho * int(k), 6))) for k in n])
    assert torch.equal(keep.sum(1), expected)
    assert not (keep & ~resp).any()
    assert int(keep_counts(torch.ones(1, 10, dtype=torch.bool), 0.7)) == 7  # no float ceil trap


# 3 ---------------------------------------------------------------------------------------
def test_gamma_one_is_rel_and_gamma_zero_is_attention(tok, batch):
    model, his = gpt2(tok, seed=0).eval(), gpt2(tok, seed=1).eval()
    labels = batch["labels"]
    resp = response_positions(labels)
    with LastLayerAttention(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rel = aligned_token_losses(his(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               labels) - aligned_token_losses(logits, labels)
    attn = prompt_attention_score(cap.probs(batch["attention_mask"]), prompt_positions(labels, batch["attention_mask"]))
    for gamma, score in ((1.0, rel), (0.0, attn)):
        sst = SSToken(SSTokenConfig(rho=0.5, gamma=gamma, warmup_samples=0), history_model=his).setup(model)
        keep = sst.token_mask(batch, logits, cap, step=0)
        for b in range(labels.shape[0]):
            pos = resp[b].nonzero().flatten()
            k = int(np.ceil(0.5 * len(pos)))
            top = pos[torch.argsort(score[b, pos], descending=True, stable=True)[:k]]
            assert set(keep[b].nonzero().flatten().tolist()) == set(top.tolist())


# 4 ---------------------------------------------------------------------------------------
def test_history_equal_to_model_gives_zero_rel_and_attention_fallback(tok, batch):
    model = gpt2(tok).eval()
    sst = SSToken(SSTokenConfig(rho=0.5, gamma=0.5, warmup_samples=0)).setup(model)  # history = copy of model
    with sst.capture(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rel = sst.history_losses(batch) - aligned_token_losses(logits, batch["labels"])
    assert torch.allclose(rel, torch.zeros_like(rel), atol=1e-6)
    keep = sst.token_mask(batch, logits, cap, step=0)
    labels = batch["labels"]
    attn = prompt_attention_score(cap.probs(batch["attention_mask"]), prompt_positions(labels, batch["attention_mask"]))
    expected = top_tokens(attn, response_positions(labels), 0.5)
    assert torch.equal(keep, expected)
    # exact zero REL: the normalisation does not divide by zero
    z = select_tokens(torch.zeros_like(attn), attn, response_positions(labels), 0.5, 0.5)
    assert torch.equal(z, expected)


# 5 ---------------------------------------------------------------------------------------
def test_attention_score_range_and_row_sums(tok, batch):
    model = llama(tok).eval()
    with LastLayerAttention(model) as cap:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    probs = cap.probs(batch["attention_mask"])
    labels, am = batch["labels"], batch["attention_mask"]
    prompt = prompt_positions(labels, am)
    score = prompt_attention_score(probs, prompt)
    assert float(score.min()) >= 0 and float(score.max()) <= 1 + 1e-6
    resp = response_positions(labels)
    for b in range(labels.shape[0]):
        for i in resp[b].nonzero().flatten().tolist():
            to_prompt = probs[b, :, i][:, prompt[b]].sum(-1)
            so_far = torch.zeros(labels.shape[1], dtype=torch.bool)
            so_far[~prompt[b]] = True
            so_far[i + 1:] = False
            so_far &= am[b].bool()
            to_resp = probs[b, :, i][:, so_far].sum(-1)
            assert torch.allclose(to_prompt + to_resp, torch.ones(4), atol=1e-5)


# 6 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hook_attention_equals_eager_output_attentions(tok, batch, arch):
    build = gpt2 if arch == "gpt2" else llama
    fast = build(tok, attn="sdpa").eval()
    eager = build(tok, attn="eager").eval()
    eager.load_state_dict(fast.state_dict())
    with LastLayerAttention(fast) as cap:
        fast(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    mine = cap.probs(batch["attention_mask"])
    ref = eager(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_attentions=True).attentions[-1]
    am = batch["attention_mask"].bool()
    for b in range(am.shape[0]):
        rows = am[b].nonzero().flatten()
        assert torch.allclose(mine[b][:, rows], ref[b][:, rows].float(), atol=1e-5)


# 7 ---------------------------------------------------------------------------------------
def test_offline_history_losses_are_aligned_and_masks_train(tok, tmp_path):
    rows = instruction_rows(10, seed=3)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_shards(rows, src, n_shards=2)
    base, current = gpt2(tok, seed=0).eval(), gpt2(tok, seed=1).eval()
    summary = write_token_masks(src, dst, current, tok, history_model=base, template=TEMPLATE,
                                config=SSTokenConfig(rho=0.6, gamma=0.5))
    assert 0.55 < summary["kept_fraction"] < 0.8
    table = pq.read_table(dst)
    for row in table.to_pylist():
        ids, plen = tokenize_row(tok, row, True, template=TEMPLATE)
        with torch.no_grad():
            logits = base(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        hist = row["hist_token_loss"]
        assert len(hist) == len(ids) == len(row["token_mask"]) and hist[0] == 0.0
        for k in range(plen, len(ids)):  # index k = loss of token k under the history model
            assert abs(hist[k] + float(logp[k - 1, ids[k]])) < 1e-4
        assert all(h == 0.0 for h in hist[:plen]) and all(m == 1 for m in row["token_mask"][:plen])
        n_resp = len(ids) - plen
        assert sum(1 - m for m in row["token_mask"]) == n_resp - int(np.ceil(round(0.6 * n_resp, 6)))
    # the training feed carries the masks and the objective applies them
    ds = ShardDataset(dst, tok, prompt_template=TEMPLATE, shuffle=False)
    b = collate(list(ds), tok.eos_token_id)
    model = gpt2(tok).eval()
    loss, out = Objective()(model, b, step=0)
    assert torch.isclose(loss, masked_loss(out.logits, b["labels"], b["token_mask"]))
    assert not torch.isclose(loss, masked_loss(out.logits, b["labels"]))
    # history from the column gives the same selection as history from the base model
    sst_col = SSToken(SSTokenConfig(rho=0.6, history="column", warmup_samples=0))
    sst_mod = SSToken(SSTokenConfig(rho=0.6, warmup_samples=0), history_model=base).setup(current)
    with LastLayerAttention(current) as cap:
        logits = current(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.equal(sst_col.token_mask(b, logits, cap, 0), sst_mod.token_mask(b, logits, cap, 0))


# 8 ---------------------------------------------------------------------------------------
def signal_noise_rows(n, seed):
    """Response = each prompt word followed by a random digit: even slots signal, odd slots noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [DIGITS[int(rng.integers(10))] for _ in range(4)]
        resp = []
        for w in words:
            resp += [w, DIGITS[int(rng.integers(10))]]
        rows.append({"id": str(i), "prompt": "copy: " + " ".join(words), "response": " ".join(resp)})
    return rows


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", "copy:", "="] + DIGITS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def test_toy_rel_separates_signal_from_noise():
    tok = word_tokenizer()
    rows = signal_noise_rows(256, seed=0)
    b = batch_of(tok, rows)
    n_resp = (b["labels"] != -100).sum(1)
    assert bool((n_resp == 9).all())  # one token per response word + EOS
    model = gpt2(tok, seed=0)
    base = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(100):
        idx = torch.randint(0, len(rows), (32,), generator=g)
        mb = {k: v[idx] for k, v in b.items()}
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
        loss = masked_loss(out.logits, mb["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = batch_of(tok, signal_noise_rows(64, seed=1))
    with torch.no_grad():
        cur = aligned_token_losses(model(input_ids=test["input_ids"]).logits, test["labels"])
        his = aligned_token_losses(base(input_ids=test["input_ids"]).logits, test["labels"])
    rel = his - cur
    plen = (test["labels"] == -100).cumprod(1).sum(1)  # prompt length per row
    signal = torch.zeros_like(rel, dtype=torch.bool)
    noise = torch.zeros_like(signal)
    for r in range(rel.shape[0]):
        signal[r, [int(plen[r]) + 2 * j for j in range(4)]] = True
        noise[r, [int(plen[r]) + 2 * j + 1 for j in range(4)]] = True
    rel_signal, rel_noise = rel[signal].mean(), rel[noise].mean()
    assert rel_signal > rel_noise + 1.0, (float(rel_signal), float(rel_noise))
    # precision of the kept set for signal tokens (gamma = 1, rho = 0.5) beats random
    resp = response_positions(test["labels"])
    resp &= signal | noise  # EOS is neither signal nor noise
    keep = select_tokens(rel, None, resp, 0.5, 1.0)
    precision = (keep & signal).sum() / keep.sum()
    rand = SSToken(SSTokenConfig(rho=0.5, mode="random"), seed=3).token_mask({"labels": test["labels"].masked_fill(
        ~resp, -100)}, None, None, step=0)
    precision_random = (rand & signal).sum() / rand.sum()
    assert precision > 0.9 and precision > precision_random + 0.3


# extras ----------------------------------------------------------------------------------
def test_warmup_uses_attention_only(tok, batch):
    model, his = gpt2(tok, seed=0).eval(), gpt2(tok, seed=1).eval()
    sst = SSToken(SSTokenConfig(rho=0.5, gamma=1.0, warmup_steps=3, warmup_samples=0), history_model=his).setup(model)
    with sst.capture(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    attn_only = SSToken(SSTokenConfig(rho=0.5, gamma=0.0)).token_mask(batch, logits, cap, 0)
    assert torch.equal(sst.token_mask(batch, logits, cap, 2), attn_only)
    assert sst.last_stats["gamma"] == 0.0
    sst.token_mask(batch, logits, cap, 3)
    assert sst.last_stats["gamma"] == 1.0


def test_ema_history_moves_towards_model(tok):
    model = gpt2(tok, seed=0)
    sst = SSToken(SSTokenConfig(history="ema", ema_alpha=0.9)).setup(model)
    p0 = next(sst.history_model.parameters()).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    sst.update_history(model)
    p1 = next(sst.history_model.parameters())
    assert torch.allclose(p1, 0.9 * p0 + 0.1 * (p0 + 1.0), atol=1e-6)


def test_random_mode_is_seeded(batch):
    a = SSToken(SSTokenConfig(mode="random"), seed=1).token_mask(batch, None, None, step=4)
    b = SSToken(SSTokenConfig(mode="random"), seed=1).token_mask(batch, None, None, step=4)
    c = SSToken(SSTokenConfig(mode="random"), seed=1).token_mask(batch, None, None, step=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


# parity with the official release (scripts/finetune.py, read; not copied) -----------------
def official_selection(logits: torch.Tensor, labels: torch.Tensor, attn: torch.Tensor, hist: torch.Tensor,
                       attention_mask: torch.Tensor, rho: float, gamma: float) -> torch.Tensor:
    """The official per-sample rule, restated sample by sample: prompt length = count of -100
    labels of the unpadded sample; current loss aligned with a leading 0; REL = history - current
    min-max normalised (+1e-8) over positions prompt_len..end; attention = row of the token's own
    position (head mean) summed over keys 0..prompt_len-1; top ceil(rho * response length)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for b in range(labels.shape[0]):
        n = int(attention_mask[b].sum())
        lab = labels[b, :n]
        plen = int((lab == -100).sum())
        cur = torch.cat([torch.zeros(1), torch.nn.functional.cross_entropy(logits[b, :n - 1].float(), lab[1:],
                                                                          reduction="none")])
        diff = hist[b, plen:n] - cur[plen:]
        norm = (diff - diff.min()) / (diff.max() - diff.min() + 1e-8)
        score = gamma * norm + (1 - gamma) * attn[b, plen:n, :plen].sum(-1)
        k = int(np.ceil(round(rho * (n - plen), 6)))
        keep[b, plen + torch.topk(score, k).indices] = True
    return keep


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_selection_matches_the_official_rule(tok, batch, gamma):
    """History losses, REL min-max, attention row (the token's own query position, its loss the
    prediction at k - 1), prompt keys and the top-k count agree with the official code."""
    model, his = gpt2(tok, seed=0, attn="eager").eval(), gpt2(tok, seed=1).eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        hist = aligned_token_losses(his(**inputs).logits, batch["labels"])
        out = model(**inputs, output_attentions=True)
    attn = out.attentions[-1].mean(1)
    expected = official_selection(out.logits, batch["labels"], attn, hist, batch["attention_mask"], 0.6, gamma)
    sst = SSToken(SSTokenConfig(rho=0.6, gamma=gamma, history="column", warmup_samples=0))
    with sst.capture(model) as cap:
        logits = model(**inputs).logits
    keep = sst.token_mask({**batch, "hist_token_loss": hist}, logits, cap, step=0)
    assert torch.equal(keep, expected)


def test_loss_is_the_mean_over_the_batchs_selected_tokens(tok, batch):
    """The official loss: cross-entropy averaged over every kept token of the micro-batch."""
    model = gpt2(tok).eval()
    obj = Objective(sstoken=SSTokenConfig(rho=0.5, gamma=0.0)).setup(model)
    loss, out = obj(model, batch, step=0)
    sst = obj.sstoken
    with sst.capture(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = sst.token_mask(batch, logits, cap, step=0)
    new_labels = torch.where(keep, batch["labels"], torch.full_like(batch["labels"], -100))
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).float(),
                                            new_labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-5


def test_objective_runs_the_attention_warmup_with_gamma_one(tok, batch):
    """gamma 1 (REL only) still needs the attention term during the sample warm-up: the
    objective captures it while `needs_attention`, and selects by REL alone afterwards."""
    model = gpt2(tok).eval()
    rows = batch["labels"].shape[0]
    obj = Objective(sstoken=SSTokenConfig(rho=0.5, gamma=1.0, warmup_samples=rows)).setup(model)
    obj(model, batch, step=0)
    assert obj.sstoken.last_stats["gamma"] == 0.0
    obj(model, batch, step=1)
    assert obj.sstoken.last_stats["gamma"] == 1.0 and not obj.sstoken.needs_attention(2)


def test_warmup_samples_counts_the_samples_seen(tok, batch):
    """gamma is 0 until `warmup_samples` samples were trained (the official 10,000), then gamma;
    a selector created at a later step (a resumed run) continues the count from the step."""
    model, his = gpt2(tok, seed=0).eval(), gpt2(tok, seed=1).eval()
    rows = batch["labels"].shape[0]
    with LastLayerAttention(model) as cap:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cfg = SSTokenConfig(rho=0.5, gamma=0.5, warmup_samples=2 * rows + 1)
    sst = SSToken(cfg, history_model=his).setup(model)
    gammas = []
    for step in range(4):
        sst.token_mask(batch, logits, cap, step)
        gammas.append(sst.last_stats["gamma"])
    assert gammas == [0.0, 0.0, 0.0, 0.5]
    assert SSTokenConfig().warmup_samples == 10_000  # the official default (scripts/finetune.py)
    resumed = SSToken(cfg, history_model=his).setup(model)
    resumed.token_mask(batch, logits, cap, 3)
    assert resumed.last_stats["gamma"] == 0.5 and resumed.samples_seen == 4 * rows


def test_adjusted_attention_removes_the_uniform_position_trend():
    """Under uniform causal attention the prompt share falls as 1/(i + 1); the adjusted term is flat."""
    t, plen = 10, 4
    probs = torch.tril(torch.ones(t, t))
    probs = (probs / probs.sum(-1, keepdim=True))[None, None].expand(1, 2, t, t)
    labels = torch.arange(t)[None].clone()
    labels[:, :plen] = -100
    raw = attention_score(probs, labels, None, "prompt_sum")
    resp = response_positions(labels)
    vals = raw[0, resp[0]]
    assert torch.all(vals[1:] < vals[:-1])  # the official term falls with position
    assert torch.allclose(vals, plen / (torch.arange(plen, t).float() + 1))
    adj = attention_score(probs, labels, None, "prompt_sum_adjusted")
    assert torch.allclose(adj[0, resp[0]], torch.ones(t - plen)) and float(adj[0, ~resp[0]].abs().sum()) == 0
    # top-rho by the official term never keeps the end token here; the adjusted term is no position bias
    assert not top_tokens(raw, resp, 0.6)[0, -1]
    assert torch.allclose(adjusted_prompt_attention(raw, labels == -100, resp), adj)


def test_attention_option_is_validated():
    with pytest.raises(ValueError, match="attention"):
        SSTokenConfig(attention="prompt_mean")
    assert SSTokenConfig().attention == "prompt_sum"


def test_benchmark_quick_run_writes_paired_results(tmp_path):
    """`bench_sstoken.py --quick`: every method on two seeds, paired intervals, the attention profile."""
    from benchmarks import bench_sstoken

    out = tmp_path / "sstoken"
    assert bench_sstoken.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    methods = list(bench_sstoken.METHODS)
    assert {(r["method"], r["seed"]) for r in res["runs"]} == {(m, s) for m in ["base", *methods] for s in (0, 1)}
    for r in res["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["heldout_loss"])
    pairs = {(c["method"], c["baseline"]) for c in res["comparisons"]}
    assert {("sstoken", "random"), ("sstoken", "full"), ("sstoken_adjusted", "sstoken")} <= pairs
    for c in res["comparisons"]:
        assert c["accuracy"]["n"] == 2 and c["heldout_loss"]["lo"] <= c["heldout_loss"]["mean"] <= c["heldout_loss"]["hi"]
    prof = res["attention_profiles"]["tiny_base"]
    assert len(prof["prompt_attention_by_position"]) == 5
    assert all(0.0 <= v <= 1.0 for v in prof["eos_kept_attention_only"].values())
    assert "| sstoken | random |" in out.with_suffix(".md").read_text()
