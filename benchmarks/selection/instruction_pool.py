"""A synthetic instruction (SFT) pool with planted junk and near-duplicate prompts.

Every pair comes from one of six deterministic tasks, so the right answer is known:
`add` (two numbers), `reverse` (a word), `upper` (two words in capitals), `copy` (repeat a
list of words), `sort` (numbers ascending) and `lookup` (a fixed word -> code table: the same
"facts" everywhere, so wrong facts contradict right ones).

Planted kinds (labels kept beside the pool, never given to a selector):

- `clean`: a correct answer;
- `wrong`: a plausible wrong answer of the right form (a sum off by a few, another word
  reversed, the wrong code, words out of order, ...);
- `garbled`: the answer's characters shuffled into noise plus random characters;
- `dup`: near-duplicate prompt clusters: one clean pair and copies whose prompt is lightly
  reworded (a polite prefix, a suffix, case, spacing), all with the same correct answer.

`wrong` and `garbled` count as junk. Three roles are drawn from the clean distribution
with their own seeds: the pool's clean pairs, a held-out evaluation set (the loss every
selection is judged on) and a small assessment set (ICon's; no prompt shared with the
evaluation set, and prompts distinct within each set).
Facts of `lookup` and words of `reverse` recur across roles by design (a task has a finite
world); `info["eval_prompts_in_pool"]` says how many eval prompts also occur in the pool.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from benchmarks.selection.pool import PlantedLabels

TASKS = ("add", "reverse", "upper", "copy", "sort", "lookup")
JUNK_KINDS = ("wrong", "garbled")
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"

WORDS = sorted(set("""
apple river stone cloud market garden silver window bridge forest candle mirror pocket rabbit
orange planet winter summer valley castle dragon pencil rocket ticket engine butter yellow purple
coffee doctor farmer hunter island jacket kitten ladder magnet needle ocean parrot quartz saddle
tiger violin wagon zebra anchor basket cactus dancer eagle falcon guitar hammer iceberg jungle
kettle lemon meadow nectar oyster pepper rain sugar tunnel velvet walnut yogurt button carpet
desert fabric glacier harbor insect jigsaw lantern marble noodle orchid pillow quiver ribbon
shadow thunder umbrella vessel whistle blanket cobalt dolphin ember fossil granite honey
""".split()))
CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
FACT_SEED = 20240  # the lookup "world" is the same for every pool seed
PREFIXES = ["Please ", "Quick question: ", "Task: ", "Hi! ", "Could you help? ", "Now, "]
SUFFIXES = [" Thanks.", " Answer briefly.", " Be exact.", " Thank you!", " Please.", ""]


def lookup_table() -> dict[str, str]:
    """The fixed word -> three-letter code table of the `lookup` task."""
    rng = np.random.default_rng(FACT_SEED)
    codes: set[str] = set()
    table = {}
    for w in WORDS:
        while True:
            c = "".join(rng.choice(list(CODE_ALPHABET), 3))
            if c not in codes:
                codes.add(c)
                table[w] = c
                break
    return table


FACTS = lookup_table()


def _words(rng: np.random.Generator, k: int) -> list[str]:
    return [WORDS[int(i)] for i in rng.integers(0, len(WORDS), k)]


def make_pair(task: str, rng: np.random.Generator) -> tuple[str, str, Callable[[np.random.Generator], str]]:
    """(prompt, correct answer, a function drawing a plausible wrong answer) of one task instance."""
    if task == "add":
        a, b = (int(x) for x in rng.integers(1, 100, 2))
        phr = ["Add {a} and {b}.", "What is {a} plus {b}?", "Compute {a} + {b}."][int(rng.integers(3))]

        def wrong_add(r: np.random.Generator) -> str:
            d = int(r.choice([-10, -3, -2, -1, 1, 2, 3, 10]))
            return str(max(a + b + d, 0) if a + b + d != a + b else a + b + 11)
        return phr.format(a=a, b=b), str(a + b), wrong_add
    if task == "reverse":
        w = _words(rng, 1)[0]
        phr = ["Reverse the word '{w}'.", "Spell '{w}' backwards."][int(rng.integers(2))]

        def wrong_rev(r: np.random.Generator) -> str:
            other = [x for x in WORDS if x != w]
            return other[int(r.integers(len(other)))][::-1]
        return phr.format(w=w), w[::-1], wrong_rev
    if task == "upper":
        ws = " ".join(_words(rng, 2))
        phr = ["Write '{w}' in capital letters.", "Convert '{w}' to upper case."][int(rng.integers(2))]

        def wrong_up(r: np.random.Generator) -> str:
            other = " ".join(_words(r, 2))
            return (other if other != ws else ws[::-1]).upper()
        return phr.format(w=ws), ws.upper(), wrong_up
    if task == "copy":
        ws = _words(rng, int(rng.integers(3, 6)))
        phr = ["Repeat exactly: {w}", "Copy this list: {w}"][int(rng.integers(2))]

        def wrong_copy(r: np.random.Generator) -> str:
            out = list(ws)
            i = int(r.integers(len(out)))
            out[i] = [x for x in WORDS if x != out[i]][int(r.integers(len(WORDS) - 1))]
            return " ".join(out[::-1] if r.random() < 0.5 else out)
        return phr.format(w=" ".join(ws)), " ".join(ws), wrong_copy
    if task == "sort":
        nums = [int(x) for x in rng.choice(100, int(rng.integers(4, 7)), replace=False)]
        phr = ["Sort these numbers in ascending order: {n}", "Order from smallest to largest: {n}"][int(rng.integers(2))]

        def wrong_sort(r: np.random.Generator) -> str:
            s = sorted(nums)
            i = int(r.integers(len(s) - 1))
            s[i], s[i + 1] = s[i + 1], s[i]
            return " ".join(map(str, s if r.random() < 0.6 else sorted(nums, reverse=True)))
        return phr.format(n=" ".join(map(str, nums))), " ".join(map(str, sorted(nums))), wrong_sort
    if task == "lookup":
        w = _words(rng, 1)[0]
        phr = ["What is the code for '{w}'?", "Look up the code of '{w}'."][int(rng.integers(2))]

        def wrong_look(r: np.random.Generator) -> str:
            other = [x for x in WORDS if x != w]
            return FACTS[other[int(r.integers(len(other)))]]
        return phr.format(w=w), FACTS[w], wrong_look
    raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")


def garble(answer: str, rng: np.random.Generator) -> str:
    """Noise in place of an answer: its characters shuffled, with random characters mixed in."""
    noise = string.ascii_letters + string.digits + "#@%&*+=/?!"
    chars = list(answer.replace(" ", "")) + [noise[int(i)] for i in rng.integers(0, len(noise), int(rng.integers(3, 9)))]
    rng.shuffle(chars)
    cut = sorted(int(i) for i in rng.integers(1, len(chars), 2))  # break it into a few "words"
    return " ".join(x for x in ("".join(chars[:cut[0]]), "".join(chars[cut[0]:cut[1]]), "".join(chars[cut[1]:])) if x)


def reword(prompt: str, rng: np.random.Generator) -> str:
    """A light rewording of a prompt (a near-duplicate): prefix, suffix, case or spacing."""
    p = prompt
    if rng.random() < 0.6:
        p = PREFIXES[int(rng.integers(len(PREFIXES)))] + p[0].lower() + p[1:]
    if rng.random() < 0.6:
        p = p + SUFFIXES[int(rng.integers(len(SUFFIXES)))]
    if rng.random() < 0.2:
        p = p.replace(" ", "  ", 1)
    if rng.random() < 0.15:
        p = p.lower()
    return p


@dataclass
class InstructionPool(PlantedLabels):
    """Candidate (prompt, response) pairs with planted labels, plus eval and assessment sets."""

    ids: list[str]
    prompts: list[str]
    responses: list[str]
    tasks: list[str]
    kinds: list[str]  # clean | dup | wrong | garbled
    clusters: list[int]  # near-duplicate cluster id, -1 for the rest
    eval_pairs: list[tuple[str, str]]
    assessment_pairs: list[tuple[str, str]]
    info: dict[str, object] = field(default_factory=dict)
    eval_tasks: list[str] = field(default_factory=list)  # the task of each evaluation pair
    JUNK = JUNK_KINDS

    @property
    def texts(self) -> list[str]:
        """Templated prompt + response of every candidate."""
        return [TEMPLATE.format(prompt=q) + a for q, a in zip(self.prompts, self.responses)]


def clean_pairs(n: int, rng: np.random.Generator, exclude: set[str] | None = None
                ) -> list[tuple[str, str, str]]:
    """`n` correct (task, prompt, response) triples with distinct prompts, none in `exclude`;
    tasks balanced in rotation, then shuffled."""
    seen = set(exclude or ())
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        for _ in range(1000):  # a task's world is finite: give up on distinctness only if it is exhausted
            q, a, _ = make_pair(task, rng)
            if q not in seen:
                break
        seen.add(q)
        out.append((task, q, a))
    return [out[i] for i in rng.permutation(n)]


def build_instruction_pool(n: int = 3000, wrong: float = 0.15, garbled: float = 0.10, dup: float = 0.25,
                           dup_clusters: int = 30, eval_pairs: int = 300, assessment: int = 48,
                           seed: int = 0) -> InstructionPool:
    """The pool of `n` pairs: clean, planted wrong / garbled answers and near-duplicate clusters."""
    if not 0 <= wrong + garbled + dup < 1:
        raise ValueError("instruction pool: wrong + garbled + dup must be below 1")
    rng = np.random.default_rng(seed)
    n_wrong, n_garbled, n_dup = (int(round(f * n)) for f in (wrong, garbled, dup))
    n_clean = n - n_wrong - n_garbled - n_dup
    k = min(dup_clusters, n_dup) if n_dup else 0
    prompts, responses, tasks, kinds, clusters = [], [], [], [], []
    for i in range(n_clean + n_wrong + n_garbled):
        task = TASKS[int(rng.integers(len(TASKS)))]
        q, a, wrong_answer = make_pair(task, rng)
        if i < n_clean:
            kind = "clean"
        elif i < n_clean + n_wrong:
            kind, a = "wrong", wrong_answer(rng)
        else:
            kind, a = "garbled", garble(a, rng)
        prompts.append(q)
        responses.append(a)
        tasks.append(task)
        kinds.append(kind)
        clusters.append(-1)
    sizes = np.full(k, n_dup // k if k else 0)
    sizes[: n_dup - int(sizes.sum())] += 1
    for c, size in enumerate(sizes):
        task = TASKS[c % len(TASKS)]
        q, a, _ = make_pair(task, rng)
        for m in range(int(size)):
            prompts.append(q if m == 0 else reword(q, rng))
            responses.append(a)
            tasks.append(task)
            kinds.append("dup")
            clusters.append(c)
    perm = rng.permutation(len(prompts))  # pool order carries no label information
    prompts, responses, tasks, kinds, clusters = ([xs[i] for i in perm] for xs in
                                                  (prompts, responses, tasks, kinds, clusters))
    ev_triples = clean_pairs(eval_pairs, np.random.default_rng([seed, 1]))
    ev = [(q, a) for _, q, a in ev_triples]
    assess = [(q, a) for _, q, a in clean_pairs(assessment, np.random.default_rng([seed, 2]),
                                                exclude={q for q, _ in ev})]
    pool_prompts = set(prompts)
    info = {"docs": len(prompts), "clean": n_clean, "junk": n_wrong + n_garbled, "wrong": n_wrong,
            "garbled": n_garbled, "dup": n_dup, "dup_clusters": k, "eval_docs": len(ev),
            "assessment": len(assess), "tasks": list(TASKS),
            "eval_prompts_in_pool": sum(q in pool_prompts for q, _ in ev),
            "kinds": {kd: kinds.count(kd) for kd in sorted(set(kinds))}}
    ids = [f"ins-{i:06d}" for i in range(len(prompts))]
    return InstructionPool(ids, prompts, responses, tasks, kinds, clusters, ev, assess, info,
                           [t for t, _, _ in ev_triples])


def world_line(task: str, rng: np.random.Generator) -> str:
    """One correct instance of `task` in a plain, template-free notation (the base model's
    "pre-training" text: the tasks' world, not the instruction format)."""
    if task == "add":
        a, b = (int(x) for x in rng.integers(1, 100, 2))
        return f"{a} + {b} = {a + b}"
    if task == "reverse":
        w = _words(rng, 1)[0]
        return f"{w} backwards: {w[::-1]}"
    if task == "upper":
        ws = " ".join(_words(rng, 2))
        return f"{ws} -> {ws.upper()}"
    if task == "copy":
        ws = " ".join(_words(rng, int(rng.integers(3, 6))))
        return f"{ws} | {ws}"
    if task == "sort":
        nums = [int(x) for x in rng.choice(100, int(rng.integers(4, 7)), replace=False)]
        return f"sorted({' '.join(map(str, nums))}) = {' '.join(map(str, sorted(nums)))}"
    if task == "lookup":
        w = _words(rng, 1)[0]
        return f"code of {w}: {FACTS[w]}"
    raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")


def world_corpus(n_docs: int, seed: int, lines: int = 4) -> list[str]:
    """`n_docs` documents of `lines` correct task instances each in the plain notation of
    `world_line` (tasks drawn uniformly; its own seed stream, no instruction template). The
    selection benchmark pre-trains its base model on it, so fine-tuning teaches the format and
    elicits what the base knows, as SFT does for an LLM."""
    rng = np.random.default_rng([seed, 3])
    return ["\n".join(world_line(TASKS[int(rng.integers(len(TASKS)))], rng) for _ in range(lines))
            for _ in range(n_docs)]
