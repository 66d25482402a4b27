"""Baseline files: the fingerprints of findings a team has accepted."""

from __future__ import annotations

import json

from ckptlint.errors import ConfigError
from ckptlint.identity import finding_fingerprint, relative_path
from ckptlint.results import Finding

SCHEMA_VERSION = 1


def load_baseline(path: str) -> frozenset[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return frozenset(entry["fingerprint"] for entry in data["findings"])
    except OSError as exc:
        raise ConfigError(f"cannot read baseline ({exc.strerror})", path) from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError("not a ckptlint baseline (expected {\"findings\": [{\"fingerprint\": ...}]})", path) from None


def render_baseline(findings: list[Finding], root: str) -> str:
    """Every finding's fingerprint, with what it was about so a reviewer can read the file."""
    entries = sorted(
        ({"fingerprint": finding_fingerprint(f, root), "code": f.code, "name": f.name,
          "file": relative_path(f.file, root), "key": f.key} for f in findings),
        key=lambda e: (e["file"], e["key"] or "", e["code"]),
    )
    return json.dumps({"schema_version": SCHEMA_VERSION, "tool": "ckptlint", "findings": entries},
                      indent=2, sort_keys=True) + "\n"
