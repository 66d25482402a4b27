"""The HTML report: its view model and markup checked directly, and the page as a person sees it
(headless Chromium loads it from disk; those tests need Chromium and Playwright)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckptlint
from ckptlint.options import Options
from ckptlint.report import html as html_report
from ckptlint.results import Report
from ckptlint.runner import check_paths
from conftest import CASES, FIXTURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None or find_spec("playwright") is None,
                                    reason="needs Chromium (apt-get install chromium) and playwright")
PRETRAINED = FIXTURES / "models" / "resnet50_tiny.pth"
BODY = "backbone.0.body"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# The view model and the markup, without a browser.

Node = dict[str, Any]


def _transfer_report(case: str, target: str = "detr.pth") -> Report:
    """A fixture case's target checked against the fixture ResNet-50, as ``check --pretrained
    --format html`` does."""
    return check_paths([str(CASES / case / target)],
                       Options(hash_files=False, histograms=True, pretrained=str(PRETRAINED)))


def _only_tree(view: dict[str, Any], target: Path) -> list[Node]:
    """The module tree of the run's one target (the pretrained file has none)."""
    assert [file for file, _ in view["trees"]] == [str(target)]
    return view["trees"][0][1]


def _nodes(tree: list[Node]) -> Iterator[Node]:
    """Every module node of a tree, depth first."""
    for node in tree:
        yield node
        yield from _nodes(node["children"])


def _node(tree: list[Node], path: str) -> Node:
    """The one node of a module path."""
    matches = [node for node in _nodes(tree) if node["path"] == path]
    assert len(matches) == 1, path
    return matches[0]


def _leaves(tree: list[Node]) -> dict[str, str]:
    """Every tensor in the tree: key -> verdict."""
    return {tensor["key"]: tensor["verdict"] for node in _nodes(tree) for tensor in node["tensors"]}


def _summary(node: Node) -> tuple[str, list[tuple[str, int]]]:
    """A node as the page shows it: its worst verdict and the count of each verdict beneath it."""
    return node["verdict"], node["counts"]


def test_view_model_of_a_selective_transfer() -> None:
    """layer4 re-initialised, layer1-3 copied: the tree shows the worst verdict of each module, with
    counts; only layer4's tensors get histograms; the diagnoses hold their findings in order."""
    report = _transfer_report("transfer-selective")
    view = html_report.view_model(report)
    tree = _only_tree(view, CASES / "transfer-selective" / "detr.pth")
    assert view["passed"] is False
    assert view["counts"] == [("error", 50), ("warning", 10), ("info", 2)]
    assert view["rule_names"] == ["default-bn-stats", "not-transferred", "unused-pretrained-key"]
    assert view["version"] == ckptlint.__version__ and view["errors"] == [] and view["suppressed"] == 0
    assert [node["name"] for node in tree] == ["backbone"]
    assert _summary(_node(tree, BODY)) == ("reinitialized", [("reinitialized", 50), ("copied", 215)])
    assert _summary(_node(tree, f"{BODY}.layer1")) == ("copied", [("copied", 50)])
    assert _summary(_node(tree, f"{BODY}.layer3")) == ("copied", [("copied", 95)])
    assert _summary(_node(tree, f"{BODY}.layer4")) == ("reinitialized", [("reinitialized", 50)])
    assert _summary(_node(tree, f"{BODY}.layer4.0")) == ("reinitialized", [("reinitialized", 20)])
    assert _node(tree, f"{BODY}.layer4.0.conv1")["tensors"] == [
        {"name": "weight", "key": f"{BODY}.layer4.0.conv1.weight", "verdict": "reinitialized"}]
    not_copied = {node["path"] for node in _nodes(tree) if node["verdict"] != "copied"}
    assert not_copied == {"backbone", "backbone.0", BODY} | {
        node["path"] for node in _nodes([_node(tree, f"{BODY}.layer4")])}
    assert _leaves(tree) == {pair.target: pair.verdict for pair in report.pairs}
    assert len(_leaves(tree)) == 265


def test_view_model_histograms_and_diagnoses_of_a_selective_transfer() -> None:
    """One histogram per re-initialised tensor, scaled into its box; a constant tensor is one bar."""
    view = html_report.view_model(_transfer_report("transfer-selective"))
    histograms = {h["key"]: h for h in view["histograms"]}
    assert len(histograms) == 50 and all(key.startswith(f"{BODY}.layer4.") for key in histograms)
    for histogram in histograms.values():
        assert (histogram["width"], histogram["height"]) == (240, 60)
        assert len(histogram["target"]) == len(histogram["pretrained"]) == 24
        assert max(bar["h"] for bar in histogram["target"] + histogram["pretrained"]) == 60
    bias = histograms[f"{BODY}.layer4.0.bn1.bias"]  # constant 0: everything in the bin holding 0
    assert [bar["h"] for bar in bias["target"]] == [0.0] * 11 + [60.0] + [0.0] * 12
    assert (bias["low"], bias["high"]) == ("-0.184", "0.189")
    summaries = [(d["kind"], d["severity"], d["modules"], d["tensors"], d["parameters"], len(d["findings"]))
                 for d in view["diagnoses"]]
    assert summaries == [("reinitialized", "error", (f"{BODY}.layer4",), 50, 61184, 60),
                         ("head-dropped", "info", ("fc",), 2, 12900, 2)]
    findings = view["diagnoses"][0]["findings"]
    assert findings == sorted(findings, key=lambda f: f.sort_key())
    assert view["diagnoses"][0]["title"].startswith("layer4 re-initialised (xavier_uniform convolutions")


def test_view_model_of_a_naive_copy() -> None:
    """Nothing loaded: every backbone tensor at its init, three small convolutions merely unrelated;
    a module shows the worse of the two."""
    view = html_report.view_model(_transfer_report("transfer-naive-copy"))
    tree = _only_tree(view, CASES / "transfer-naive-copy" / "detr.pth")
    assert _summary(_node(tree, BODY)) == ("unrelated", [("unrelated", 3), ("reinitialized", 262)])
    assert _summary(_node(tree, f"{BODY}.layer1")) == ("unrelated", [("unrelated", 2), ("reinitialized", 48)])
    assert _summary(_node(tree, f"{BODY}.layer3")) == ("reinitialized", [("reinitialized", 95)])
    assert _summary(_node(tree, f"{BODY}.bn1")) == ("reinitialized", [("reinitialized", 4)])
    assert sorted(key for key, verdict in _leaves(tree).items() if verdict == "unrelated") == [
        f"{BODY}.layer1.0.conv1.weight", f"{BODY}.layer1.0.downsample.0.weight", f"{BODY}.layer2.0.conv1.weight"]
    assert "copied" not in {verdict for verdict in _leaves(tree).values()}
    assert [(d["kind"], d["tensors"], d["parameters"], len(d["findings"])) for d in view["diagnoses"]] == [
        ("nothing-loaded", 265, 98812, 318), ("head-dropped", 2, 12900, 2)]


def test_view_model_of_a_correct_transfer_marks_nothing() -> None:
    """Every backbone tensor copied: no module is marked, no histogram is drawn, only the dropped
    classifier is diagnosed (as info)."""
    target = CASES / "detr-training-checkpoint" / "checkpoint.pth"
    view = html_report.view_model(check_paths([str(target)], Options(hash_files=False, pretrained=str(PRETRAINED))))
    tree = _only_tree(view, target)
    assert view["passed"] is True
    assert view["counts"] == [("error", 0), ("warning", 0), ("info", 2)]
    assert {node["verdict"] for node in _nodes(tree)} == {"copied"}
    assert set(_leaves(tree).values()) == {"copied"} and len(_leaves(tree)) == 265
    assert _summary(_node(tree, f"{BODY}.layer4")) == ("copied", [("copied", 50)])
    assert view["histograms"] == []
    assert [(d["kind"], d["severity"]) for d in view["diagnoses"]] == [("head-dropped", "info")]


def test_view_model_shows_unmatched_target_keys_as_unmatched() -> None:
    """An SE block new in layer4.0 has no pretrained source: its tensors are unmatched, and so is every
    module above them; the pretrained conv3 the target lost is no node of the target's tree."""
    view = html_report.view_model(_transfer_report("transfer-architecture-drift"))
    tree = _only_tree(view, CASES / "transfer-architecture-drift" / "detr.pth")
    se = f"{BODY}.layer4.0.se"
    assert {key for key, verdict in _leaves(tree).items() if verdict == "unmatched"} == {
        f"{se}.fc1.weight", f"{se}.fc2.weight"}
    assert _summary(_node(tree, se)) == ("unmatched", [("unmatched", 2)])
    assert _summary(_node(tree, f"{se}.fc1")) == ("unmatched", [("unmatched", 1)])
    assert _summary(_node(tree, f"{BODY}.layer4.0")) == ("unmatched", [("unmatched", 2), ("copied", 20)])
    assert _summary(_node(tree, f"{BODY}.layer4.2")) == ("copied", [("copied", 14)])
    assert f"{BODY}.layer4.2.conv3" not in {node["path"] for node in _nodes(tree)}


class _Markup(HTMLParser):
    """The elements of a page (tag and attributes) and its text, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]

    def attribute_values(self, name: str) -> list[str | None]:
        return [attrs[name] for _, attrs in self.elements if name in attrs]


def _assert_self_contained(page: str) -> _Markup:
    """Nothing the page shows comes from elsewhere: no URL, no loaded resource, no link but to
    an anchor of its own; one inline script."""
    markup = _Markup(page)
    assert not re.search(r"https?:|//[\w.-]+\.\w", page)
    assert markup.attribute_values("src") == [] and markup.tags("link") == []
    assert not {"iframe", "img", "object", "embed", "base", "form"} & {tag for tag, _ in markup.elements}
    ids = set(markup.attribute_values("id"))
    hrefs = markup.attribute_values("href")
    assert hrefs and all(href and href.startswith("#") and href[1:] in ids for href in hrefs), hrefs
    assert len(markup.tags("script")) == 1
    assert "@import" not in page and "url(" not in page
    return markup


def test_rendered_report_is_self_contained() -> None:
    """The transfer-selective page: every link is to a rule's section on the page itself."""
    markup = _assert_self_contained(html_report.render_html(_transfer_report("transfer-selective")))
    assert "#rule-not-transferred" in markup.attribute_values("href")
    assert len(markup.tags("svg")) == 50
    assert "38.0% transfer score" in "".join(markup.text)  # 37628 of 98812 rounded down, as every report shows it


def test_hostile_key_is_escaped_in_every_part_of_the_page() -> None:
    """A key holding markup is text in the tree, the findings, the diagnosis and the histogram
    label; it never becomes an element or an attribute."""
    generator = np.random.default_rng(0)
    target = {f"{HOSTILE}.weight": generator.standard_normal((64, 64)).astype(np.float32)}
    pretrained = {f"{HOSTILE}.weight": generator.standard_normal((64, 64)).astype(np.float32)}
    report = ckptlint.lint(target, pretrained)
    view = html_report.view_model(report)
    assert [node["name"] for node in view["trees"][0][1]] == [HOSTILE]  # the view model holds it raw
    assert [h["key"] for h in view["histograms"]] == [f"{HOSTILE}.weight"]
    page = html_report.render_html(report)
    markup = _assert_self_contained(page)
    assert HOSTILE not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") >= 3
    assert not any("onerror" in attrs for _, attrs in markup.elements)
    assert sum(HOSTILE in text for text in markup.text) >= 3  # shown, as text
    assert f"value histogram of {HOSTILE}.weight" in markup.attribute_values("aria-label")


# The page in a browser.

def _open(path: Path, action=None) -> dict:
    """Load a report from disk; return console errors, outside requests, texts and a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        requests: list[str] = []
        dialogs: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        result = {"shown": None}
        if action:
            result.update(action(page))
        shot = path.with_suffix(".png")
        page.screenshot(path=str(shot), full_page=True)
        result.update(errors=errors, outside=[u for u in requests if u != path.as_uri()], dialogs=dialogs,
                      text=page.inner_text("body"), scripts=page.locator("script").count(), shot=shot)
        browser.close()
    return result


@needs_chromium
def test_html_report_in_chromium(tmp_path: Path, run) -> None:
    out = tmp_path / "report.html"
    result = run("check", str(CASES / "transfer-selective" / "detr.pth"), "--pretrained",
                 str(FIXTURES / "models" / "resnet50_tiny.pth"), "--format", "html", "-o", str(out))
    assert result.code == 1
    html = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from anywhere

    def interact(page) -> dict:
        before = page.inner_text("#shown")
        page.select_option("#filter-rule", "default-bn-stats")
        filtered = page.inner_text("#shown")
        page.select_option("#filter-rule", "")
        page.click("th[data-sort='3']")
        first_key = page.locator("#findings tbody tr").first.locator("td").nth(3).inner_text()
        page.click("#findings a[href='#rule-not-transferred']")
        hash_after = page.evaluate("location.hash")
        diagnoses = page.locator("details.diagnosis")
        hidden_before = diagnoses.first.locator("tbody tr").first.is_visible()
        diagnoses.first.locator("summary").click()
        return {"before": before, "filtered": filtered, "first_key": first_key,
                "hash": hash_after, "svgs": page.locator("figure svg").count(),
                "stages": page.locator("text=layer4").count(),
                "diagnoses": [d.locator("summary").inner_text() for d in diagnoses.all()],
                "expanded": [hidden_before, diagnoses.first.locator("tbody tr").count(),
                             diagnoses.first.locator("tbody tr").first.is_visible()]}

    seen = _open(out, interact)
    assert seen["errors"] == [] and seen["outside"] == []
    assert seen["before"] == "62 of 62 shown" and seen["filtered"] == "10 of 62 shown"
    assert seen["first_key"].startswith("backbone.0.body.layer4.0.")
    assert seen["hash"] == "#rule-not-transferred"
    assert seen["svgs"] == 50  # one histogram per re-initialised tensor
    assert len(seen["diagnoses"]) == 2 and seen["diagnoses"][0].startswith("error layer4 re-initialised")
    assert seen["expanded"] == [False, 60, True]  # a diagnosis opens onto its findings
    assert "61.2k" in seen["text"] and "61184" not in seen["text"]  # numbers people read
    assert "38.0%" in seen["text"] and "Module tree" in seen["text"] and "Transfer by stage" in seen["text"]
    assert seen["shot"].stat().st_size > 20_000


@needs_chromium
def test_hostile_key_is_shown_as_text(tmp_path: Path, run) -> None:
    key = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    torch.save({key: torch.tensor([float("nan")])}, tmp_path / "hostile.pt")
    out = tmp_path / "report.html"
    run("check", str(tmp_path / "hostile.pt"), "--format", "html", "-o", str(out))
    seen = _open(out)
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert key in seen["text"]
    assert seen["scripts"] == 1  # ours only
    assert seen["outside"] == []  # the <img src=x> was never an element, so nothing was fetched


def test_histograms_are_computed_only_for_the_html_report() -> None:
    """Sorting every changed pair's values is wasted on a text run."""
    plain = check_paths([str(CASES / "transfer-selective" / "detr.pth")],
                        Options(hash_files=False, pretrained=str(PRETRAINED)))
    assert plain.histograms == {} and len(_transfer_report("transfer-selective").histograms) == 50
