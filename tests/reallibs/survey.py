"""Run ckptlint's natural command on every real-library scenario and tabulate what it says.

    python tests/reallibs/survey.py [--manifest PATH] [--out report.md] [--json-dir DIR]

For each scenario check in the merged manifest ($CKPTLINT_TEST_CACHE/scenarios/manifest.json,
written by the test fixtures or by ``python tests/reallibs/provision.py``), runs
``ckptlint check TARGET --pretrained PRETRAINED`` (text) and the same with ``--format json``, and
prints one row: exit code, findings per rule and severity, pair verdicts, and the transfer line.
A picture of the current behaviour, not a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from provision import cache_dir  # noqa: E402


def run(*args: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ckptlint", *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def survey(manifest: dict, json_dir: Path | None) -> list[dict]:
    rows = []
    for name, entry in manifest["scenarios"].items():
        for check in entry.get("checks", []):
            target, pretrained = entry["files"][check["target"]], entry["files"][check["pretrained"]]
            code, text, err, seconds = run("check", target, "--pretrained", pretrained)
            jcode, out, jerr, _ = run("check", target, "--pretrained", pretrained, "--format", "json", "--no-hash")
            row = {"scenario": name, "target": os.path.basename(target.rstrip("/")),
                   "pretrained": os.path.basename(pretrained.rstrip("/")), "exit": code, "json_exit": jcode,
                   "seconds": round(seconds, 2), "stderr": (err or jerr).strip()}
            row["transfer_line"] = next((ln.strip() for ln in text.splitlines() if ln.startswith("Transfer:")), "")
            row["summary_line"] = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
            try:
                report = json.loads(out)
            except json.JSONDecodeError:
                report = None
            if report is not None:
                if json_dir is not None:
                    json_dir.mkdir(parents=True, exist_ok=True)
                    tag = f"{name}--{row['pretrained']}".replace("/", "_")
                    (json_dir / f"{tag}.json").write_text(json.dumps(report, indent=1))
                findings = collections.Counter(f"{f['code']} {f['name']} {f['severity']}" for f in report["findings"])
                verdicts = collections.Counter(p.get("verdict") for p in report.get("pairs", []))
                transfer = report.get("transfer") or {}
                row.update(findings=dict(sorted(findings.items())), verdicts=dict(verdicts),
                           score=transfer.get("score"), expect=transfer.get("expect"),
                           scope=[v.get("scope") for v in (transfer.get("by_file") or {}).values()],
                           by_stage={s: (v.get("score"), v.get("verdicts")) for s, v in
                                     (transfer.get("by_stage") or {}).items()})
            rows.append(row)
            print(f"{name} vs {row['pretrained']}: exit {code} {row['summary_line']}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| scenario | pretrained | exit | findings (code name severity: count) | pair verdicts | transfer |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        findings = "<br>".join(f"{k}: {v}" for k, v in r.get("findings", {}).items()) or "none"
        verdicts = ", ".join(f"{k} {v}" for k, v in r.get("verdicts", {}).items()) or "-"
        transfer = r["transfer_line"].replace("Transfer: ", "") or "-"
        if r.get("expect"):
            transfer += f" (expect {r['expect']}, scope {', '.join(map(str, r.get('scope', [])))})"
        lines.append(f"| {r['scenario']} | {r['pretrained']} | {r['exit']} | {findings} | {verdicts} | {transfer} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", type=Path, default=cache_dir() / "scenarios" / "manifest.json")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json-dir", type=Path)
    opts = parser.parse_args()
    rows = survey(json.loads(opts.manifest.read_text()), opts.json_dir)
    text = markdown(rows)
    if opts.out:
        opts.out.write_text(text)
        opts.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
