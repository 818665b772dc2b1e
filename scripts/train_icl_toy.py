"""Train the tiny in-context key->value lookup model behind ``tests/test_icon_toy.py`` (SPEC 6.2.6).

The model is a 2-layer Llama-style causal LM over a word-level vocabulary built in code:
special tokens, the line separators ``"\\n"`` and ``"\\n\\n\\n"`` (ICon's demonstration separator),
keys ``k0..k15`` and values ``v0..v15``. Every training sequence draws its *own* random
key->value function, so the only way to predict a value is to find the same key earlier in the
sequence and copy what followed it (induction / associative recall). A sequence is

    <s> [noise "\\n\\n\\n"] k v SEP k v SEP ... k v

with SEP = ``"\\n"`` or (sometimes) ``"\\n\\n\\n"``, and an optional prefix of <unk> tokens, which
is what RICo's random-character control context tokenises to under this vocabulary. This is
exactly ICon's layout ``[bos] context "\\n\\n\\n" x_i y_i`` when the context is a candidate
``k v`` list and the assessment item has prompt ``k`` under the template ``"{prompt} "`` and
response ``v``. The loss is on value tokens only.

What it took (CPU, batch 64, lr 1e-3): the lookup circuit appears abruptly after a plateau at
"copy any value from the context" (~0.3 accuracy). With 64 keys/values, with a ``k = v`` line
format, or with the noise prefixes and ``"\\n\\n\\n"`` lines mixed in from the start, it had not
appeared after 1,000-3,000 steps; with 16 keys and values, ``k v`` lines and clean sequences
it appears within ~500-900 steps. So the first `--clean-steps` are clean and the noise and
separator variants are mixed in afterwards (the learned circuit carries over to them).

Regenerate the fixture (deterministic: seeded, one thread, deterministic kernels; bit-exact for
the same torch build and CPU)::

    .venv/bin/python scripts/train_icl_toy.py --out tests/fixtures/icl_toy

About 4-5 minutes on one (shared) CPU core; prints the held-out in-context lookup accuracy and
refuses to write a model that did not learn the lookup (accuracy < 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_KEYS = 16
N_VALUES = 16
SPECIALS = ["<s>", "</s>", "<unk>"]
LINE, SEP3 = "\n", "\n\n\n"
KEYS = [f"k{i}" for i in range(N_KEYS)]
VALUES = [f"v{i}" for i in range(N_VALUES)]
TEMPLATE = "{prompt} "  # assessment prompt = key; response = value


def vocabulary() -> list[str]:
    """All tokens in id order."""
    return SPECIALS + [LINE, SEP3] + KEYS + VALUES


def build_tokenizer(folder: Path | None = None):
    """Word-level tokenizer: words split on spaces, newline runs kept as tokens, BOS added."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+|[^\s]+"), behavior="removed", invert=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(folder)
    return fast


def build_model(seed: int):
    """The untrained 2-layer Llama (hidden 64, 2 heads of 32, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = vocabulary()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=vocab.index("<s>"), eos_token_id=vocab.index("</s>"),
                      tie_word_embeddings=True, attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def make_batch(rng: np.random.Generator, batch: int, n_lines: int, noise_prob: float = 0.3,
               sep3_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (-100 except value positions) of `batch` fresh-mapping sequences."""
    ids = {t: i for i, t in enumerate(vocabulary())}
    key0, val0 = ids[KEYS[0]], ids[VALUES[0]]
    rows, labels = [], []
    for _ in range(batch):
        active = rng.choice(N_KEYS, size=int(rng.integers(2, 13)), replace=False)
        mapping = rng.integers(0, N_VALUES, size=N_KEYS)  # a random function, values may repeat
        seq = [ids["<s>"]]
        lab = [-100]
        if rng.random() < noise_prob:  # what the random-character control context looks like here
            noise = [ids["<unk>"]] * int(rng.integers(1, 5))
            seq += noise + [ids[SEP3]]
            lab += [-100] * (len(noise) + 1)
        for line in range(n_lines):
            k = int(rng.choice(active))
            seq += [key0 + k, val0 + int(mapping[k])]
            lab += [-100, val0 + int(mapping[k])]
            if line < n_lines - 1:
                seq.append(ids[SEP3] if rng.random() < sep3_prob else ids[LINE])
                lab.append(-100)
        rows.append(seq)
        labels.append(lab)
    width = max(len(r) for r in rows)
    pad = ids["</s>"]
    x = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    y = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return x, y


@torch.no_grad()
def lookup_accuracy(model, rng: np.random.Generator, n: int = 512, n_lines: int = 16) -> tuple[float, float]:
    """Accuracy of the argmax at value positions whose key already appeared (and chance)."""
    x, y = make_batch(rng, n, n_lines)
    logits = model(input_ids=x).logits
    pred = logits[:, :-1].argmax(-1)
    target = y[:, 1:]
    xs = x.tolist()
    seen_hits, seen_total = 0, 0
    for b in range(n):
        keys_seen: set[int] = set()
        for t in range(target.shape[1]):
            if target[b, t] < 0:
                continue
            key = xs[b][t]  # lines are "key value": the value at t+1 follows its key at t
            if key in keys_seen:
                seen_total += 1
                seen_hits += int(pred[b, t] == target[b, t])
            keys_seen.add(key)
    return seen_hits / max(seen_total, 1), 1.0 / N_VALUES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/icl_toy"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--clean-steps", type=int, default=1200,
                    help="first steps without noise prefixes and '\\n\\n\\n' lines (they delay the circuit)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lines", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--noise-prob", type=float, default=0.3)
    ap.add_argument("--sep3-prob", type=float, default=0.15)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    model = build_model(args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # constant rate (the induction circuit appears after a plateau), linear decay over the last 30%
    decay_from = int(0.7 * args.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * min(1.0, (args.steps - s) / max(1, args.steps - decay_from)))
    t0 = time.time()
    for step in range(args.steps):
        clean = step < args.clean_steps
        x, y = make_batch(rng, args.batch, args.lines, 0.0 if clean else args.noise_prob,
                          0.0 if clean else args.sep3_prob)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            model.eval()
            acc, _ = lookup_accuracy(model, np.random.default_rng(args.seed + 20_000), n=128)
            model.train()
            print(f"step {step:5d} loss {loss.item():.4f} lookup {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    acc, chance = lookup_accuracy(model, np.random.default_rng(args.seed + 10_000))
    print(f"trained in {time.time() - t0:.0f}s; held-out in-context lookup accuracy {acc:.3f} (chance {chance:.3f})")
    if acc < 0.9:
        raise SystemExit(f"the model did not learn in-context lookup (accuracy {acc:.3f}); fixture not written")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    os.chmod(args.out / "model.safetensors", 0o644)
    build_tokenizer(args.out)
    meta = {"seed": args.seed, "steps": args.steps, "clean_steps": args.clean_steps, "batch": args.batch,
            "lines": args.lines, "lr": args.lr, "noise_prob": args.noise_prob, "sep3_prob": args.sep3_prob,
            "template": TEMPLATE, "lookup_accuracy": round(acc, 4), "torch": torch.__version__}
    (args.out / "training_args.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
