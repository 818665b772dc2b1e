"""ICon / RICo toy with a known answer (SPEC 6.2.6).

The fixture `tests/fixtures/icl_toy` is a 2-layer Llama trained by `scripts/train_icl_toy.py` to
do in-context key->value lookup: each training sequence had its own random key->value function,
written as lines ``"k3 v7"``, so a value can only be predicted by finding its key earlier in the
context. The assessment set asks for the values of a fixed "world" mapping M (prompt = key,
template ``"{prompt} "``, response = value). Candidates are three-line demonstrations:

- relevant: pairs of M for queried keys (the ICL context gives the answer: c > 0),
- irrelevant: well-formed pairs for keys the assessment never asks about (c ≈ 0),
- corrupted: queried keys with wrong values (the context misleads: c < 0).

They are scored by the real scorer (IConScorer: ICLEngine, prefix-shared PPLs, RICo's
random-character control, s_j = mean_i c_ij), and the scores must order relevant > irrelevant >
corrupted with AUC >= 0.8 for both separations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import conftest_models  # noqa: F401  (offline HF environment)
from thresher.models.icl import SEPARATOR, phi
from thresher.models.loading import ModelConfig, load_model
from thresher.scorers.icon import IConParams, IConScorer
from thresher.selectors.icon import auc

FIXTURE = Path(__file__).parent / "fixtures" / "icl_toy"
TEMPLATE = "{prompt} "  # as in the training script: lines are "key value"
N_QUERIED = 6  # keys the assessment set asks about
PAIRS = 3  # key->value lines per candidate
PER_KIND = 12
KINDS = ("relevant", "irrelevant", "corrupted")


def vocab_words(prefix: str) -> list[str]:
    """Key (`k`) or value (`v`) words of the fixture's vocabulary, in id order."""
    vocab = json.loads((FIXTURE / "tokenizer.json").read_text())["model"]["vocab"]
    words = [w for w in vocab if w[0] == prefix and w[1:].isdigit()]
    return sorted(words, key=vocab.get)


def candidate(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """(prompt, response) whose templated text is the lines "k v": the last value is the response."""
    lines = [f"{k} {v}" for k, v in pairs[:-1]] + [pairs[-1][0]]
    return "\n".join(lines), pairs[-1][1]


def build_world(seed: int = 7) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """Assessment items (key, M[key]) and the candidate (prompt, response) pairs of each kind."""
    rng = np.random.default_rng(seed)
    keys, values = vocab_words("k"), vocab_words("v")
    order = rng.permutation(len(keys))
    queried = [keys[i] for i in order[:N_QUERIED]]
    others = [keys[i] for i in order[N_QUERIED:]]
    world = {k: values[int(rng.integers(len(values)))] for k in queried}
    assessment = [(k, world[k]) for k in queried]

    def pick(pool: list[str]) -> list[str]:
        return [pool[i] for i in rng.choice(len(pool), size=PAIRS, replace=False)]

    def wrong(k: str) -> str:
        return str(rng.choice([v for v in values if v != world[k]]))

    cands: dict[str, list[tuple[str, str]]] = {kind: [] for kind in KINDS}
    for _ in range(PER_KIND):
        cands["relevant"].append(candidate([(k, world[k]) for k in pick(queried)]))
        cands["irrelevant"].append(candidate([(k, values[int(rng.integers(len(values)))]) for k in pick(others)]))
        cands["corrupted"].append(candidate([(k, wrong(k)) for k in pick(queried)]))
    return assessment, cands


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs faster on one thread than two on a shared CPU; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def score_candidates(model: Path, folder: Path) -> dict[str, np.ndarray]:
    """s_j of every toy candidate by kind, from the icon scorer over the toy assessment set."""
    assessment, cands = build_world()
    path = folder / "assessment.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in assessment))
    scorer = IConScorer(IConParams(model=str(model), assessment=str(path), template=TEMPLATE,
                                   device="cpu", seed=42))
    rows = [(kind, j, q, a) for kind in KINDS for j, (q, a) in enumerate(cands[kind])]
    batch = pa.record_batch({"id": [f"{kind}{j}" for kind, j, _, _ in rows],
                             "text": [q + " " + a for _, _, q, a in rows],
                             "prompt": [q for _, _, q, _ in rows], "response": [a for _, _, _, a in rows]})
    out = scorer(batch)
    assert out["icon_sampled"].to_pylist() == [True] * len(rows)
    score = out["icon_score"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(out["icon_phi"].to_numpy(zero_copy_only=False), phi(score))
    kinds = np.array([kind for kind, *_ in rows])
    return {kind: score[kinds == kind] for kind in KINDS}


def separation(scores: dict[str, np.ndarray]) -> tuple[dict[str, float], float, float]:
    """Mean s_j per kind, AUC(relevant vs the rest) and AUC(irrelevant vs corrupted)."""
    means = {kind: float(scores[kind].mean()) for kind in KINDS}
    rel, irr, cor = (scores[k] for k in KINDS)
    auc_rel = auc(np.r_[np.ones(len(rel)), np.zeros(len(irr) + len(cor))].astype(bool), np.r_[rel, irr, cor])
    auc_irr = auc(np.r_[np.ones(len(irr)), np.zeros(len(cor))].astype(bool), np.r_[irr, cor])
    return means, float(auc_rel), float(auc_irr)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return score_candidates(FIXTURE, tmp_path_factory.mktemp("icon_toy"))


def test_fixture_is_small_and_local() -> None:
    files = {p.name for p in FIXTURE.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 2_000_000


def test_model_does_in_context_lookup() -> None:
    """Sanity: on fresh random mappings, in the ICon layout, the value after a key that the
    context defines is predicted (argmax) far above chance; an undefined key is not."""
    lm = load_model(ModelConfig(str(FIXTURE), "causal_lm", device="cpu"))
    tok, model = lm.tokenizer, lm.model
    keys, values = vocab_words("k"), vocab_words("v")
    rng = np.random.default_rng(123)
    rows, targets, defined = [], [], []
    for n in range(200):
        ks = [keys[i] for i in rng.choice(len(keys), size=int(rng.integers(2, 7)), replace=False)]
        mapping = {k: values[int(rng.integers(len(values)))] for k in ks}
        context = "\n".join(f"{k} {mapping[k]}" for k in ks)
        inside = n % 4 != 0
        query = ks[int(rng.integers(len(ks)))] if inside else rng.choice([k for k in keys if k not in mapping])
        target = mapping[query] if inside else values[int(rng.integers(len(values)))]
        ids = tok(context + SEPARATOR + TEMPLATE.format(prompt=query))["input_ids"]  # BOS added once
        rows.append(ids)
        targets.append(tok.convert_tokens_to_ids(target))
        defined.append(inside)
    width = max(map(len, rows))
    x = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r in rows])
    last = torch.tensor([len(r) - 1 for r in rows])
    with torch.inference_mode():
        logits = model(input_ids=x).logits[torch.arange(len(rows)), last]
    hit = (logits.argmax(-1) == torch.tensor(targets)).numpy()
    defined_arr = np.array(defined)
    chance = 1.0 / len(values)
    acc_in, acc_out = hit[defined_arr].mean(), hit[~defined_arr].mean()
    print(f"lookup accuracy: key in context {acc_in:.3f}, key absent {acc_out:.3f}, chance {chance:.3f}")
    assert acc_in >= 0.9
    assert acc_out < 0.3  # nothing to copy: no better than a guess


def test_scores_order_relevant_irrelevant_corrupted(scored: dict[str, np.ndarray]) -> None:
    means, auc_rel, auc_irr = separation(scored)
    spread = {kind: (round(float(v.min()), 3), round(float(v.max()), 3)) for kind, v in scored.items()}
    print(f"mean s_j {means}; range {spread}; "
          f"AUC relevant vs rest {auc_rel:.3f}, irrelevant vs corrupted {auc_irr:.3f}")
    assert means["relevant"] > means["irrelevant"] > means["corrupted"]
    assert means["relevant"] > 0 > means["corrupted"]
    assert auc_rel >= 0.8 and auc_irr >= 0.8
    # irrelevant facts neither help nor hurt much next to the relevant gain
    assert abs(means["irrelevant"]) < 0.25 * means["relevant"]


def test_untrained_model_does_not_separate(tmp_path: Path) -> None:
    """Control: the same architecture and tokenizer, untrained, fails the separation above."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(FIXTURE, local_files_only=True))
    model.save_pretrained(tmp_path / "untrained")
    AutoTokenizer.from_pretrained(FIXTURE, local_files_only=True).save_pretrained(tmp_path / "untrained")
    means, auc_rel, auc_irr = separation(score_candidates(tmp_path / "untrained", tmp_path))
    print(f"untrained: mean s_j {means}; AUCs {auc_rel:.3f}, {auc_irr:.3f}")
    assert not (auc_rel >= 0.8 and auc_irr >= 0.8)
    assert max(abs(m) for m in means.values()) < 0.05
