"""The rule table as Markdown, generated from the rule folders, and written into README.md.

The README's table sits between two marker comments and is never edited by hand:
``python -m ckptlint.engine.rule_table`` (from the repository root) rewrites it from the built-in
rules, and a test fails when it is stale. ``ckptlint rules --format markdown`` prints the table of
every installed rule, packs included.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from ckptlint.engine.registry import builtin_rules_dir, load_rules_from
from ckptlint.engine.rules import Rule

BEGIN = "<!-- rule table: generated from rules/*/rule.toml by `python -m ckptlint.engine.rule_table` -->"
END = "<!-- end of rule table -->"
README_COMMAND = "python -m ckptlint.engine.rule_table README.md"


def markdown_table(rules: Iterable[Rule]) -> str:
    """One row per rule: code, name, default severity, and its docs' ``what``."""
    rows = ["| code | name | severity | what it finds |", "| --- | --- | --- | --- |"]
    rows += [f"| {rule.code} | `{rule.name}` | {rule.severity} | {_cell(rule.docs['what'])} |" for rule in rules]
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """One line, with pipes escaped: a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table_in(text: str) -> str:
    """What lies between the markers (the generated table)."""
    start, end = _marker_positions(text)
    return text[start:end]


def with_table(text: str, table: str) -> str:
    """``text`` with the table between the markers replaced."""
    start, end = _marker_positions(text)
    return text[:start] + table + text[end:]


def _marker_positions(text: str) -> tuple[int, int]:
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"no rule table markers: {BEGIN} ... {END}")
    return begin + len(BEGIN) + 1, end


def main(argv: list[str] | None = None) -> int:
    """Rewrite the table in the given file (default: README.md in the current folder) from the
    built-in rules (not installed packs: the README documents ckptlint's own)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    text = path.read_text("utf-8")
    updated = with_table(text, markdown_table(load_rules_from(builtin_rules_dir())))
    if updated != text:
        path.write_text(updated, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
