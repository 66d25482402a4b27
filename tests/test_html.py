"""The HTML report as a person sees it: headless Chromium loads it from disk."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import CASES, FIXTURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")


def _open(path: Path, action=None) -> dict:
    """Load a report from disk; return console errors, outside requests, texts and a screenshot."""
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
    assert "38.1%" in seen["text"] and "Module tree" in seen["text"] and "Transfer by stage" in seen["text"]
    assert seen["shot"].stat().st_size > 20_000


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
