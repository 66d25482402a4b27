"""The HTML report: a view model built from the Report, rendered by jinja2 template files.

One self-contained file: inline CSS, a little inline JS and inline SVG, no network requests.
Autoescaping is on because tensor keys come from hostile files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined

import ckptlint
from ckptlint.numbers import human_count, percent
from ckptlint.severity import SEVERITIES
from ckptlint.vocabulary import VERDICTS

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Diagnosis, Report

# Worst first: a module shows the worst verdict among its tensors; "unmatched" marks an in-scope
# target tensor without a pretrained source (as in the score table).
VERDICT_ORDER = ("unmatched", *VERDICTS)
# A diff's categories (vocabulary.DIFF_CATEGORIES), worst first: a module shows the worst of its tensors.
DIFF_ORDER = ("removed", "resized", "changed", "added", "cast", "unchanged")
HISTOGRAM_WIDTH, HISTOGRAM_HEIGHT = 240, 60

def _number(value: Any) -> Any:
    """Evidence for people: floats to four significant digits, lists shortened."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ... {len(value)} items]"
    return value


_ENVIRONMENT = Environment(loader=PackageLoader("ckptlint.report", "templates"), autoescape=True,
                           undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENVIRONMENT.filters["number"] = _number
_ENVIRONMENT.filters["percent"] = percent
_ENVIRONMENT.filters["count"] = human_count


def _worst(verdicts: list[str], order: tuple[str, ...] = VERDICT_ORDER) -> str:
    return min(verdicts, key=order.index)


def _tree(verdicts: dict[str, str], order: tuple[str, ...] = VERDICT_ORDER) -> list[dict[str, Any]]:
    """Nested modules (dotted paths) with the worst verdict beneath each, from tensor verdicts."""
    root: dict[str, Any] = {"children": {}, "tensors": [], "verdicts": []}
    for key, verdict in sorted(verdicts.items()):
        node = root
        node["verdicts"].append(verdict)
        parts = key.split(".")
        for part in parts[:-1]:
            node = node["children"].setdefault(part, {"children": {}, "tensors": [], "verdicts": []})
            node["verdicts"].append(verdict)
        node["tensors"].append({"name": parts[-1], "key": key, "verdict": verdict})

    def build(name: str, node: dict[str, Any], path: str) -> dict[str, Any]:
        counts = Counter(node["verdicts"])
        return {"name": name, "path": path, "verdict": _worst(node["verdicts"], order),
                "counts": [(v, counts[v]) for v in order if counts[v]],
                "tensors": node["tensors"],
                "children": [build(child, sub, f"{path}.{child}" if path else child)
                             for child, sub in node["children"].items()]}

    return [build(name, node, name) for name, node in root["children"].items()]


def _histogram(data: dict[str, list[float]]) -> dict[str, Any]:
    peak = max(max(data["target"]), max(data["pretrained"]), 1)
    width = HISTOGRAM_WIDTH / len(data["target"])

    def bars(counts: list[float]) -> list[dict[str, float]]:
        return [{"x": round(i * width, 2), "w": round(width, 2), "h": round(HISTOGRAM_HEIGHT * c / peak, 2),
                 "y": round(HISTOGRAM_HEIGHT * (1 - c / peak), 2)} for i, c in enumerate(counts)]

    return {"target": bars(data["target"]), "pretrained": bars(data["pretrained"]),
            "low": f"{data['edges'][0]:.3g}", "high": f"{data['edges'][-1]:.3g}",
            "width": HISTOGRAM_WIDTH, "height": HISTOGRAM_HEIGHT}


def _diagnosis(diagnosis: Diagnosis) -> dict[str, Any]:
    return {"severity": diagnosis.severity, "title": diagnosis.title, "fix": diagnosis.fix, "kind": diagnosis.kind,
            "file": diagnosis.file, "modules": diagnosis.modules, "tensors": len(diagnosis.tensors),
            "parameters": diagnosis.parameters, "evidence": diagnosis.evidence,
            "findings": sorted(diagnosis.findings, key=lambda f: f.sort_key())}


def view_model(report: Report) -> dict[str, Any]:
    counts = Counter(f.severity for f in report.findings)
    verdicts_by_file: dict[str, dict[str, str]] = defaultdict(dict)
    for pair in report.pairs:
        verdicts_by_file[pair.file][pair.target] = pair.verdict
    for file, target in (report.transfer.by_file.items() if report.transfer else ()):
        verdicts_by_file[file].update(dict.fromkeys(target.unmatched, "unmatched"))
    return {
        "version": ckptlint.__version__,
        "passed": report.ok,
        "counts": [(s, counts[s]) for s in reversed(SEVERITIES)],
        "errors": report.errors,
        "suppressed": len(report.suppressed),
        "files": report.files,
        "diagnoses": [_diagnosis(d) for d in report.diagnoses],
        "transfer": report.transfer,
        "trees": [(file, _tree(verdicts)) for file, verdicts in sorted(verdicts_by_file.items())],
        "findings": report.findings,
        "rules": report.rules,
        "rule_names": sorted({f.name for f in report.findings}),
        "histograms": [{"file": file, "key": key, **_histogram(data)}
                       for (file, key), data in sorted(report.histograms.items())],
        "verdict_order": VERDICT_ORDER,
        "diff": report.diff,
        "diff_tree": _tree({p.key: p.category for p in report.diff.pairs}, DIFF_ORDER) if report.diff else [],
        "diff_order": DIFF_ORDER,
        "diff_changed": [p for p in report.diff.pairs if p.category != "unchanged"] if report.diff else [],
        "severities": list(reversed(SEVERITIES)),
    }


def render_html(report: Report) -> str:
    return _ENVIRONMENT.get_template("report.html.j2").render(**view_model(report))
