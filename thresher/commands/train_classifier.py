"""Train a fastText quality classifier from positive and negative examples (DCLM-style).

Positives get label `hq`, negatives `cc` (names configurable). Texts are lower-cased when
`lowercase` is on (off by default) and newlines become spaces, as the `fasttext` scorer
does at prediction time. A seeded `valid_fraction` of each class is held out and scored
(accuracy and precision/recall of the positive label go to `<output>.metrics.json`).
Training is deterministic with `threads=1` (the default).

    thresher train-classifier --positive good.jsonl --negative web.jsonl --output hq.bin

The larger class is cut to the size of the smaller one (a line says so); `--no-balance` keeps all.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from thresher.commands._textio import read_texts
from thresher.commands._util import run_command
from thresher.common.atomic import atomic_path


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _line(label: str, text: str, lowercase: bool) -> str:
    clean = " ".join(text.split())
    return f"__label__{label} {clean.lower() if lowercase else clean}"


def train_classifier(positive: Sequence[str], negative: Sequence[str], output: str, *, text_field: str = "text",
                     pos_label: str = "hq", neg_label: str = "cc", max_per_class: int | None = None,
                     balance: bool = True, valid_fraction: float = 0.1, epoch: int = 25, lr: float = 0.2,
                     word_ngrams: int = 2, dim: int = 64, bucket: int = 200_000, min_count: int = 1,
                     threads: int = 1, seed: int = 0,
                     lowercase: bool = False, file_per_doc: bool = False, quantize: bool = False,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and save a fastText classifier; returns its metrics (also saved next to it).

    `balance` (on by default) cuts the larger class to the size of the smaller one, and says
    so in one line through `log` (default: standard error)."""
    log = log or _stderr
    try:
        import fasttext
    except ImportError as exc:
        raise RuntimeError("training needs `fasttext-numpy2-wheel`") from exc
    if not hasattr(fasttext, "train_supervised"):
        raise RuntimeError("the installed `fasttext` module cannot train (fasttext-predict); "
                           "install fasttext-numpy2-wheel")
    if pos_label == neg_label:
        raise ValueError("pos_label and neg_label must differ")
    pos = read_texts(positive, text_field, file_per_doc=file_per_doc)
    neg = read_texts(negative, text_field, file_per_doc=file_per_doc)
    if not pos or not neg:
        raise ValueError(f"need examples of both classes: {len(pos)} positive, {len(neg)} negative")
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    if balance and len(pos) != len(neg):
        n = min(len(pos), len(neg))
        cut = "negatives" if len(neg) > n else "positives"
        log(f"balanced classes: {max(len(pos), len(neg)):,} {cut} -> {n:,} (--no-balance keeps all)")
        pos, neg = pos[:n], neg[:n]
    if max_per_class is not None:
        pos, neg = pos[:max_per_class], neg[:max_per_class]
    n_val_pos = int(len(pos) * valid_fraction)
    n_val_neg = int(len(neg) * valid_fraction)
    train = [_line(pos_label, t, lowercase) for t in pos[n_val_pos:]] + [_line(neg_label, t, lowercase) for t in neg[n_val_neg:]]
    valid = [(pos_label, t) for t in pos[:n_val_pos]] + [(neg_label, t) for t in neg[:n_val_neg]]
    rng.shuffle(train)
    out = Path(output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(input=str(train_file), epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim,
                                          bucket=bucket, minCount=min_count, thread=threads, seed=seed, verbose=0)
    if quantize:
        model.quantize(input=None, retrain=False)
    with atomic_path(out) as tmp_out:
        model.save_model(str(tmp_out))
    metrics: dict[str, Any] = {"train_positive": len(pos) - n_val_pos, "train_negative": len(neg) - n_val_neg,
                               "valid": len(valid), "labels": [pos_label, neg_label]}
    if valid:
        tp = fp = fn = correct = 0
        for gold, text in valid:
            clean = " ".join(text.split())
            pred = model.predict(clean.lower() if lowercase else clean, k=1)[0][0].removeprefix("__label__")
            correct += pred == gold
            tp += pred == pos_label and gold == pos_label
            fp += pred == pos_label and gold != pos_label
            fn += pred != pos_label and gold == pos_label
        metrics.update(accuracy=correct / len(valid), precision=tp / (tp + fp) if tp + fp else None,
                       recall=tp / (tp + fn) if tp + fn else None)
    out.with_name(out.name + ".metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of `thresher train-classifier`."""
    parser.add_argument("--positive", nargs="+", required=True, help="files/folders of good examples (JSONL, Parquet, txt)")
    parser.add_argument("--negative", nargs="+", required=True, help="files/folders of other examples")
    parser.add_argument("--output", "-o", required=True, help="where to write the .bin model")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--pos-label", default="hq")
    parser.add_argument("--neg-label", default="cc")
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--no-balance", action="store_true",
                        help="keep every example (default: the larger class is cut to the smaller one's size)")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    # fastText's own defaults (5 epochs, lr 0.1) leave a model trained on a few thousand
    # documents near 0.5 probability; these work from ~1k documents up
    parser.add_argument("--epoch", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--word-ngrams", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--bucket", type=int, default=200_000, help="hashed n-gram buckets (model size ~ bucket x dim)")
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lowercase", action="store_true")
    parser.add_argument("--file-per-doc", action="store_true", help="each .txt file is one document")
    parser.add_argument("--quantize", action="store_true", help="write a smaller quantised model")


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments; prints the metrics as JSON."""
    metrics = train_classifier(
        args.positive, args.negative, args.output, text_field=args.text_field, pos_label=args.pos_label,
        neg_label=args.neg_label, max_per_class=args.max_per_class, balance=not args.no_balance,
        valid_fraction=args.valid_fraction, epoch=args.epoch, lr=args.lr, word_ngrams=args.word_ngrams,
        dim=args.dim, bucket=args.bucket, min_count=args.min_count, threads=args.threads, seed=args.seed, lowercase=args.lowercase,
        file_per_doc=args.file_per_doc, quantize=args.quantize)
    print(json.dumps(metrics, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`thresher train-classifier ...`"""
    return run_command("thresher train-classifier", __doc__, add_arguments, run, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
