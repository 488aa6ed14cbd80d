"""The README against the code: its generated tables (ops, settings, metrics) are current,
every setting and op has its row, its links resolve, and it keeps a newcomer's order.
(Its commands are run against a real server by tests/e2e/test_readme.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from gradserve import docs_gen
from gradserve.config import Settings
from gradserve.metrics import Metrics
from gradserve.ops import build_registry

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_generated_tables_are_current() -> None:
    assert docs_gen.render(README) == README, "run: .venv/bin/python -m gradserve.docs_gen"
    assert docs_gen.main(["--check", "--readme", str(ROOT / "README.md")]) == 0


def test_readme_lists_every_setting_with_its_default_and_meaning() -> None:
    for name, field in Settings.model_fields.items():
        row = f"| `--{name.replace('_', '-')}` | `GRADSERVE_{name.upper()}` | `{field.default!r}` | {field.description} |"
        assert row in README, f"README settings table is out of date for {name}"


def test_readme_lists_every_op_and_metric() -> None:
    for spec in build_registry():
        assert re.search(rf"^\| `{spec.name}` \| {spec.family} \|", README, re.M), spec.name
    for name, kind, _, _ in Metrics().families():
        assert f"| `{name}` | {kind} |" in README, name


def test_a_stale_table_is_caught(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.replace("| `relu` |", "| `relu_old` |"))
    assert docs_gen.main(["--check", "--readme", str(stale)]) == 1
    assert docs_gen.main(["--readme", str(stale)]) == 0
    assert stale.read_text() == README


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README


def test_readme_sections_come_in_a_newcomers_order() -> None:
    headings = re.findall(r"^## (.+)$", README, re.M)
    order = ["Quick start", "The ops", "Native REST", "V2 and gRPC", "The Python SDK", "Deployment"]
    order += ["Settings", "Metrics", "Lab", "Development"]
    found = [next(i for i, h in enumerate(headings) if h.startswith(o)) for o in order]
    assert found == sorted(found), headings
    # What it is and who it is for, before anything else.
    intro = README.split("\n## ", 1)[0]
    assert "It is for " in intro


def test_readme_links_resolve_and_examples_use_the_venv() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target
    for doc in ("rest", "v2", "sdk", "deploy", "development", "lab"):
        assert f"docs/{doc}.md" in README, doc
    # Examples are run as written, with the venv's interpreter (no activated venv needed).
    assert not re.search(r"(?<![/\w])python3? examples/", README)
    # The README stands alone: no contract file or course material a clone lacks.
    assert "API.md" not in README and "lecture" not in README.lower()


def test_readme_stays_short() -> None:
    # The generated tables (settings grow with the code) are most of it; prose stays lean.
    generated = sum(
        len(m.group(2).splitlines())
        for m in re.finditer(r"(<!-- generated.*?-->\n)(.*?)<!-- end", README, re.S)
    )
    assert len(README.splitlines()) - generated < 180


def test_readme_and_landing_page_say_the_same_two_sentences() -> None:
    from gradserve.rest.pages import AUDIENCE, DESCRIPTION

    intro = " ".join(README.split("\n## ", 1)[0].split())
    assert DESCRIPTION in intro and AUDIENCE in intro


def test_op_summaries_end_at_a_full_stop_not_at_a_product_dot() -> None:
    # The ops table shows each op's doc up to its first sentence; maxout's doc has a
    # dot product ("x[n] . weight") that once cut its row short.
    assert docs_gen._summary("x for x > 0. More here.") == "x for x > 0."
    assert (
        docs_gen._summary("max_k (x[n] . w[k]); ties go first. More.")
        == "max_k (x[n] . w[k]); ties go first."
    )
    assert docs_gen._summary("a 0.5 scale") == "a 0.5 scale"
    for spec in build_registry():
        summary = docs_gen._summary(spec.doc)
        assert not summary.endswith(" ."), (spec.name, summary)
    assert "weight[k, m] + bias[k, m]" in docs_gen._summary(build_registry().get("maxout").doc)
