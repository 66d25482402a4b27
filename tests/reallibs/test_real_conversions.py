"""Conversions checked on DETRs built and saved by transformers 4 and 5 themselves, against the same
weights written in the original DETR's names (issue 14, part 1): every original tensor paired with
the right ``how``, and each planted conversion bug reported under its own cause, nothing else.

The builder (builders/build_hf.py, detr_conversion.py) records the HF key -> [original key, first
row, end row] map it converted with and, per bug, exactly what it planted; both are the expectations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

VERSIONS = ("hf4", "hf5")


def _check(scenarios, name: str) -> tuple[int, dict]:
    entry = scenarios.get(name)
    done = subprocess.run([sys.executable, "-m", "ckptlint", "check", entry["files"]["target"], "--pretrained",
                           entry["files"]["pretrained"], "--format", "json", "--no-hash"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _conversion_map(scenarios, version: str) -> dict[str, str]:
    """HF key -> the original key it was converted from, with its rows for a split part."""
    entry = scenarios.get(f"{version}-original")
    folder = Path(entry["files"]["checkpoint"]).parent
    mapping = json.loads((folder / "keys" / f"{version}-conversion-map.json").read_text())
    return {hf: key if start is None else f"{key}[{start}:{end}]" for hf, (key, start, end) in mapping.items()}


@pytest.mark.parametrize("name", ["hf4-converted", "hf5-converted", "hf5-converted-native"])
def test_a_faithful_conversion_pairs_all_458_original_tensors(reallibs_scenarios, name: str) -> None:
    version = name[:3]
    code, report = _check(reallibs_scenarios, name)
    expected = _conversion_map(reallibs_scenarios, version)
    pairs = {p["target"]: p for p in report["pairs"]}
    hows = Counter(p["how"] for p in pairs.values())
    if name.endswith("native"):  # transformers 5's own names: o_proj, mlp.fc1, model.backbone.model
        assert pairs["model.encoder.layers.0.self_attn.o_proj.weight"]["pretrained"] == \
            "transformer.encoder.layers.0.self_attn.out_proj.weight"
        fc1 = pairs["model.decoder.layers.5.mlp.fc1.weight"]
        assert fc1["pretrained"] == "transformer.decoder.layers.5.linear1.weight"
        assert len(pairs) == 530 and hows["split"] == 108
    else:
        assert {t: p["pretrained"] for t, p in pairs.items()} == expected
        assert hows == Counter({"prefix": 265, "renamed": 157, "split": 108})
    covered = {p["pretrained"].partition("[")[0] for p in pairs.values()}
    assert len(covered) == 458  # every tensor of the original, each in_proj by its three row blocks
    assert {p["verdict"] for p in pairs.values()} == {"copied"}
    assert code == 0 and report["findings"] == [] and report["diagnoses"] == []
    assert report["transfer"]["score"] == 1.0 and report["transfer"]["by_file"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("bug, error", [("qk-swapped", "swapped"), ("transposed", "transposed"),
                                        ("wrong-offset", "offset")])
def test_misplaced_values_are_conversion_errors(reallibs_scenarios, version: str, bug: str, error: str) -> None:
    name = f"{version}-conv-{bug}"
    code, report = _check(reallibs_scenarios, name)
    planted = reallibs_scenarios.get(name)["planted"]["changed"]
    found = {(f["key"], f["evidence"]["error"]) for f in report["findings"] if f["name"] == "conversion-error"}
    assert found == {(change["key"], error) for change in planted}
    assert Counter(f["name"] for f in report["findings"]) == Counter({"conversion-error": len(planted)})
    if bug == "wrong-offset":
        written = planted[0]["written"]["rows"]
        assert f"holds rows {written[0]}:{written[1]} of" in report["findings"][0]["message"]
    assert [d["kind"] for d in report["diagnoses"]] == ["conversion"] and code == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_a_dropped_bias_left_at_init_is_not_transferred(reallibs_scenarios, version: str) -> None:
    code, report = _check(reallibs_scenarios, f"{version}-conv-bias-dropped")
    key = reallibs_scenarios.get(f"{version}-conv-bias-dropped")["planted"]["changed"][0]["key"]
    assert [(f["name"], f["key"], f["evidence"]["init"]) for f in report["findings"]] == \
        [("not-transferred", key, "constant 0")]
    assert code == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_a_bias_missing_from_the_file_is_its_dropped_block(reallibs_scenarios, version: str) -> None:
    code, report = _check(reallibs_scenarios, f"{version}-conv-bias-missing")
    expected = reallibs_scenarios.get(f"{version}-conv-bias-missing")["planted"]["changed"][0]["expected"]
    block = f"{expected['pretrained_key']}[{expected['rows'][0]}:{expected['rows'][1]}]"
    assert [(f["name"], f["key"], f["severity"]) for f in report["findings"]] == \
        [("unused-pretrained-key", block, "error")]
    assert [d["kind"] for d in report["diagnoses"]] == ["conversion"] and code == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_a_renamed_layernorm_never_loaded_stays_at_its_init(reallibs_scenarios, version: str) -> None:
    code, report = _check(reallibs_scenarios, f"{version}-conv-layernorm-init")
    planted = reallibs_scenarios.get(f"{version}-conv-layernorm-init")["planted"]["changed"]
    found = {(f["key"], f["evidence"]["init"]) for f in report["findings"]}
    assert found == {(c["key"], "constant 1" if c["key"].endswith("weight") else "constant 0") for c in planted}
    assert {f["name"] for f in report["findings"]} == {"not-transferred"}
    assert [d["kind"] for d in report["diagnoses"]] == ["reinitialized"] and code == 1
