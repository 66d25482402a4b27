"""ckptlint beside other pickle scanners, on the same files: which malicious checkpoints each one
flags, and which real training checkpoints it flags by mistake.

    python bench/security_peers.py [--venv DIR] [--keep DIR] [--output FILE]

The peers (picklescan, modelscan, fickling) are installed into a throwaway virtual environment
outside the repository (``--venv``, $CKPTLINT_PEERS_VENV, default /tmp/ckptlint-peers-venv), never
into ckptlint's own. The files are tests/malicious_corpus.py's (every case in a torch zip file and
a legacy one, plus the container tricks) and tests/benign_corpus.py's. No tool runs a file: they
all scan statically. Prints a markdown table.

A file counts as *flagged* when the tool reports it unsafe: ckptlint an ``unsafe-pickle`` finding;
picklescan a dangerous global; modelscan any issue; fickling a severity above LIKELY_SAFE on a
pickle it could parse (zip files member by member, as its own Hub scan does). *Could not scan*:
the tool found or parsed no pickle in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import benign_corpus  # noqa: E402 - from tests/
import malicious_corpus  # noqa: E402 - from tests/

PEERS = ("picklescan", "modelscan", "fickling")
TOOLS = ("ckptlint", *PEERS)
# fickling 0.1.12 imports typing_extensions without declaring it
PEER_PACKAGES = ("picklescan", "modelscan", "fickling", "typing_extensions")

PEER_DRIVER = r"""
import json, logging, sys
logging.disable(logging.CRITICAL)

def picklescan(path):
    from picklescan.scanner import scan_file_path
    result = scan_file_path(path)
    if result.issues_count:
        return "flagged"
    return "error" if result.scan_err else "clean"

def modelscan(path):
    from modelscan.modelscan import ModelScan
    report = ModelScan().scan(path)
    if report["summary"]["total_issues"]:
        return "flagged"
    return "error" if report["errors"] or not report["summary"]["scanned"]["total_scanned"] else "clean"

def fickling(path):
    # as fickling's own Hub scan dispatches: zip archives member by member, anything else whole
    import zipfile
    import fickling
    from fickling.analysis import Severity
    if zipfile.is_zipfile(path):
        results = list(fickling.scan_zip_archive(path, graceful=True).values())
    else:
        results = [fickling.scan_file(path, graceful=True)]
    scanned = [r for r in results if r.results or not r.errors]
    if any(r.severity > Severity.LIKELY_SAFE for r in scanned):
        return "flagged"
    return "clean" if scanned else "error"

def verdict(scan, path):
    try:
        return scan(path)
    except Exception:
        return "error"

tool = globals()[sys.argv[1]]
print(json.dumps({path: verdict(tool, path) for path in sys.argv[2:]}))
"""


def peer_python(venv: Path) -> Path:
    """The throwaway environment's python, made and filled on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def run_peer(python: Path, tool: str, paths: list[Path]) -> dict[str, str]:
    done = subprocess.run([str(python), "-c", PEER_DRIVER, tool, *map(str, paths)], capture_output=True, text=True,
                          check=True, stdin=subprocess.DEVNULL)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ckptlint(paths: list[Path]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "ckptlint", "check", "--format", "json", "--no-hash",
                           "--select", "unsafe-pickle,unknown-pickle-global", *map(str, paths)],
                          capture_output=True, text=True)
    report = json.loads(done.stdout)
    flagged = {f["file"] for f in report["findings"] if f["name"] == "unsafe-pickle"}
    unreadable = {e["file"] for e in report["errors"]}
    return {str(p): "flagged" if str(p) in flagged else "error" if str(p) in unreadable else "clean" for p in paths}


def write_corpus(folder: Path) -> tuple[list[Path], list[Path], dict[str, str]]:
    """Malicious and benign files, and the case name of each malicious one."""
    malicious = malicious_corpus.build(folder / "malicious")
    benign = benign_corpus.build(folder / "benign")
    cases = {}
    for item in malicious:
        name = item.path.name
        cases[str(item.path)] = name.removesuffix(".pt").removesuffix(".pth").removesuffix(".legacy")
    return [item.path for item in malicious], benign, cases


def summary_table(verdicts: dict[str, dict[str, str]], malicious: list[Path], benign: list[Path]) -> str:
    rows = ["| tool | malicious flagged | missed | could not scan | benign false alarms | benign could not scan |",
            "| --- | --- | --- | --- | --- | --- |"]
    for tool in TOOLS:
        bad = Counter(verdicts[tool][str(p)] for p in malicious)
        good = Counter(verdicts[tool][str(p)] for p in benign)
        rows.append(f"| {tool} | {bad['flagged']}/{len(malicious)} | {bad['clean']} | {bad['error']} | "
                    f"{good['flagged']}/{len(benign)} | {good['error']} |")
    return "\n".join(rows)


MARK = {"flagged": "✓", "clean": "✗", "error": "err"}


def case_table(verdicts: dict[str, dict[str, str]], malicious: list[Path], cases: dict[str, str]) -> str:
    """One row per case: each tool's verdict on its zip file / its legacy file."""
    new = {case.name for case in malicious_corpus.allowlist_cases()}
    by_case: dict[str, list[Path]] = {}
    for path in malicious:
        by_case.setdefault(cases[str(path)], []).append(path)
    rows = ["| case | on no denylist | " + " | ".join(TOOLS) + " |", "| --- | --- |" + " --- |" * len(TOOLS)]
    for case, paths in by_case.items():
        cells = ["/".join(MARK[verdicts[tool][str(p)]] for p in paths) for tool in TOOLS]
        rows.append(f"| {case} | {'yes' if case in new else ''} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_venv = os.environ.get("CKPTLINT_PEERS_VENV", "/tmp/ckptlint-peers-venv")  # noqa: S108 - documented default
    parser.add_argument("--venv", type=Path, default=Path(default_venv))
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    python = peer_python(args.venv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        malicious, benign, cases = write_corpus(folder)
        everything = malicious + benign
        verdicts = {"ckptlint": run_ckptlint(everything)}
        verdicts.update({tool: run_peer(python, tool, everything) for tool in PEERS})
    versions = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                              check=True).stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(versions)}
    text = "\n\n".join([
        f"{len(malicious)} malicious files ({len(set(cases.values()))} cases, torch zip / legacy), "
        f"{len(benign)} benign ones; " + ", ".join(f"{tool} {installed.get(tool, '?')}" for tool in PEERS) + ".",
        summary_table(verdicts, malicious, benign),
        case_table(verdicts, malicious, cases),
    ]) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
