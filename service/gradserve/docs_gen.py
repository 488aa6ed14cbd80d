"""The README's generated tables: every op, every setting, every metric, from the code.

Flow position: none at run time. It reads the three sources of truth (the op registry,
the ``Settings`` fields, the ``Metrics`` families) and writes the README's tables
between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` markers, so a
new op, setting or metric cannot be left out of the docs:

    python -m gradserve.docs_gen            # rewrite the tables in README.md
    python -m gradserve.docs_gen --check    # exit 1 when they are stale (tests/unit/test_docs.py)

Only the text between the markers is touched; everything else in the README is prose.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gradserve.config import Settings
from gradserve.metrics import Metrics
from gradserve.ops import build_registry
from gradserve.ops.registry import OpSpec, ParamSpec

README = Path(__file__).resolve().parents[2] / "README.md"
# Choices are listed in the op table up to this many; longer lists are in /v1/ops/{op}.
_MAX_CHOICES = 4


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _param(p: ParamSpec) -> str:
    if p.default is None:
        return f"{p.name}?" if p.nullable else p.name
    text = f"{p.name}={_value(p.default)}"
    if p.choices and len(p.choices) <= _MAX_CHOICES:
        text += "".join(f"/{c}" for c in p.choices if c != p.default)
    return text


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes (|x| in the ops' docs) escaped."""
    return text.replace("|", "\\|")


_SENTENCE_END = re.compile(r"(?<=\S)\.(?=\s)")


def _summary(doc: str) -> str:
    """An op's doc up to its first full stop: what the op computes, in one sentence.
    A full stop ends a word; a dot between spaces (maxout's "x[n] . weight") is a product."""
    end = _SENTENCE_END.search(doc)
    return _cell(doc if end is None else doc[: end.start() + 1])


def _common_params(specs: Sequence[OpSpec]) -> list[ParamSpec]:
    """Params every op of a family shares (name and default): written once, under the table."""
    if len(specs) < 2:
        return []
    first = specs[0].params
    return [p for p in first if all(p in s.params for s in specs[1:])]


def ops_table() -> str:
    registry = build_registry()
    families: dict[str, list[OpSpec]] = {}
    for spec in registry:
        families.setdefault(spec.family, []).append(spec)
    rows = [
        "| op | family | computes | inputs | params | outputs | gradients |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for family, specs in families.items():
        common = _common_params(specs)
        for s in specs:
            inputs = ", ".join(f"`{t.name}{'?' if t.optional else ''}`" for t in s.inputs) or "none"
            params = ", ".join(f"`{_param(p)}`" for p in s.params if p not in common) or "none"
            outputs = ", ".join(f"`{o}`" for o in s.output_names)
            grads = ", ".join(f"`{o}`" for o in s.grad_output_names) or "none"
            rows.append(
                f"| `{s.name}` | {family} | {_summary(s.doc)} | {inputs} | {params} | {outputs} | {grads} |"
            )
        if common:
            shared = ", ".join(f"`{_param(p)}`" for p in common)
            notes.append(f"Every `{family}` op also takes {shared}.")
    legend = (
        "`?`: optional. `name=default/other/choices`. Gradients are returned with "
        '`"grad": true` (native) or when named as outputs (V2); `grad_y`, `grad_loss` and '
        "`grad_penalty` are the upstream gradient (all ones when absent)."
    )
    return "\n".join([*rows, "", *notes, legend])


def settings_table() -> str:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(
            f"| `--{name.replace('_', '-')}` | `GRADSERVE_{name.upper()}` | `{field.default!r}` | {field.description} |"
        )
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, labels, doc in Metrics().families():
        rows.append(f"| `{name}` | {kind} | {', '.join(labels)} | {doc} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {
    "ops": ops_table,
    "settings": settings_table,
    "metrics": metrics_table,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name} .*?-->\n)(.*?)(<!-- end generated: {name} -->)", re.DOTALL)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, build in TABLES.items():
        pattern = _block(name)
        found = pattern.search(text)
        if found is None:
            raise ValueError(f"README has no generated block {name!r}")
        text = text[: found.start(2)] + build() + "\n" + text[found.end(2) :]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradserve.docs_gen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    fresh = render(text)
    if args.check:
        if fresh != text:
            print(
                f"{args.readme}: generated tables are stale; run python -m gradserve.docs_gen",
                file=sys.stderr,
            )
            return 1
        return 0
    if fresh != text:
        args.readme.write_text(fresh)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
