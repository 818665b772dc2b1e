"""``docs/reference.md``: every job key, scorer, selector and engine parameter, from the models.

The page is generated from the pydantic models that validate job files, so it cannot drift
from the code; a test regenerates it and compares it with the file in the repository.

    python -m thresher.commands.reference > docs/reference.md
"""

from __future__ import annotations

import sys
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from thresher.config import EngineSpec, FilterSpec, InputSpec, JobSpec, OutputSpec
from thresher.dedup.spec import DedupSpec
from thresher.scorers.registry import SCORERS, scorer_class
from thresher.selectors.registry import SELECTORS, selector_class
from thresher.training.spec import TrainSpec


def _type_name(annotation: Any) -> str:
    """A short, readable name for a field's type."""
    text = repr(annotation) if typing.get_origin(annotation) is not None else getattr(annotation, "__name__",
                                                                                       repr(annotation))
    for noise in ("typing.", "thresher.config.", "thresher.training.", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(see below)"
        return f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{field.default!r}`"


def _bounds(field: Any) -> str:
    out = []
    for m in field.metadata:
        for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, key, None) is not None:
                out.append(f"{sym} {getattr(m, key)}")
    return ", ".join(out)


def params_table(model: type[BaseModel], only: list[str] | None = None) -> list[str]:
    """A Markdown table of a parameter model: key, type, default, bounds, description."""
    fields = [(name, f) for name, f in model.model_fields.items() if not f.exclude and (only is None or name in only)]
    if not fields:
        return ["(no parameters)", ""]
    rows = ["| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for name, f in fields:
        desc = (f.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(f.annotation)} | {_default(f)} | {_bounds(f)} | {desc} |")
    return rows + [""]


def _nested(annotation: Any) -> type[BaseModel] | None:
    """The parameter model inside a field's type (`X`, `X | None`), if any."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def section(title: str, model: type[BaseModel]) -> list[str]:
    """`### title`, the model's docstring and table, then one section per nested model."""
    out = [f"### `{title}`", "", _doc(model), ""] + params_table(model)
    for name, f in model.model_fields.items():
        sub = _nested(f.annotation)
        if sub is not None:
            out += section(f"{title}.{name}", sub)
    return out


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def render() -> str:
    """The whole reference page."""
    out = ["# thresher: job reference", "",
           "Generated from the models that validate job files "
           "(`python -m thresher.commands.reference > docs/reference.md`; a test checks it is current). "
           "Unknown keys are errors everywhere.", ""]
    top = [n for n, f in JobSpec.model_fields.items() if _nested(f.annotation) is None and n not in (
        "scorers", "filters", "selector", "train")]
    out += ["## Top level", "", "Sections: " + ", ".join(f"`{n}`" for n in JobSpec.model_fields if n not in top) + ".",
            ""] + params_table(JobSpec, only=top)
    out += ["## Job sections", ""]
    for title, model in (("input", InputSpec), ("dedup", DedupSpec), ("filters", FilterSpec),
                         ("output", OutputSpec), ("train", TrainSpec)):
        out += section(title, model)
    out += ["## Engines", "", f"`engine.name`: one of {', '.join(f'`{n}`' for n in _engine_names())}.", ""]
    for name, field in EngineSpec.model_fields.items():
        if name == "name":
            continue
        out += section(f"engine.{name}", field.annotation)
    out += ["## Scorers", "", "Each `scorers:` entry has `type` and an optional `name` (the column prefix).", ""]
    for type_name in SCORERS:
        cls = scorer_class(type_name)
        out += [f"### scorer `{type_name}`", "", _doc(cls), ""] + params_table(cls.Params)
    out += ["## Selectors", ""]
    for type_name in SELECTORS:
        cls = selector_class(type_name)
        out += [f"### selector `{type_name}`", "", _doc(cls), ""] + params_table(cls.Params)
    return "\n".join(out).rstrip() + "\n"


def _engine_names() -> list[str]:
    return list(typing.get_args(EngineSpec.model_fields["name"].annotation))


def main(argv: list[str] | None = None) -> int:
    """Print the reference page."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
