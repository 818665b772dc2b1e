"""Task accuracy for instruction data: generate each answer greedily and exact-match it.

The instruction pool's six tasks have one right answer each (`instruction_pool`), so a
fine-tuned model is scored the way the papers score theirs: on what it answers, not only on
the loss of the reference answer. Used by the selection benchmark's instruction mode and by
the ssToken benchmark.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch


def normalise_answer(text: str) -> str:
    """Whitespace collapsed and stripped (case is part of the answer: `upper` asks for it)."""
    return " ".join(text.split())


@torch.no_grad()
def greedy_answers(model: torch.nn.Module, tok: Any, prompt_ids: Sequence[np.ndarray], eos: int,
                   context: int, max_new_tokens: int = 24, batch: int = 64) -> list[str]:
    """The decoded greedy continuation of `[eos] + prompt` for every prompt, up to the end token
    (or `max_new_tokens`, or the model's context). Prompts are left-padded in batches; GPT-2's
    `generate` derives position ids from the attention mask, so padding does not shift them."""
    model.eval()
    out: list[str] = [""] * len(prompt_ids)
    seqs = [np.concatenate([[eos], np.asarray(p, np.int64)])[-(context - 1):] for p in prompt_ids]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(seqs[i]) for i in idx)
        x = torch.full((len(idx), width), eos, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            x[row, width - len(seqs[i]):] = torch.from_numpy(seqs[i])
            mask[row, width - len(seqs[i]):] = 1
        new = max(1, min(max_new_tokens, context - width))
        gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
        for row, i in enumerate(idx):
            ids = gen[row, width:].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos)]
            out[i] = tok.decode(ids, skip_special_tokens=True)
    return out


def exact_match(predicted: Sequence[str], gold: Sequence[str], tasks: Sequence[str] | None = None
                ) -> dict[str, Any]:
    """Share of exact matches after `normalise_answer`, overall and per task (when given)."""
    if len(predicted) != len(gold):
        raise ValueError(f"exact_match: {len(predicted)} answers for {len(gold)} gold answers")
    hits = [normalise_answer(p) == normalise_answer(g) for p, g in zip(predicted, gold)]
    res: dict[str, Any] = {"accuracy": float(np.mean(hits)) if hits else float("nan"), "n": len(hits)}
    if tasks is not None:
        per: dict[str, list[bool]] = defaultdict(list)
        for t, h in zip(tasks, hits):
            per[t].append(h)
        res["by_task"] = {t: float(np.mean(v)) for t, v in sorted(per.items())}
    return res
