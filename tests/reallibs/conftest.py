"""Session fixtures for the real-library scenarios (see provision.py for the layout of the cache).

``reallibs_env``        the side venv (torch 2.14.1, torchvision 0.29.1, timm, transformers 5, and
                        the transformers-4 overlay), found or created under $CKPTLINT_TEST_CACHE
                        (default tests/.cache/); skips the dependent tests with one message when
                        pip cannot install it.
``reallibs_scenarios``  the scenarios the builders wrote, with the merged manifest:
                        ``scenarios.get(name)`` is a manifest entry whose ``files`` are absolute
                        paths (skips when the part that builds it could not be provisioned).

CKPTLINT_SKIP_REALLIBS=1 skips them all without touching pip.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .provision import ProvisionError, build_all, cache_dir, merged_manifest, side_env


def _reporter(config: pytest.Config):
    """Print a progress line past pytest's capture: provisioning takes minutes, once."""
    capman = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")

    lock = threading.Lock()    # builders report from two threads

    def log(message: str) -> None:
        line = f"[reallibs {time.strftime('%H:%M:%S')}] {message}"
        if terminal is None:
            return
        with lock:
            if capman is not None:
                with capman.global_and_fixture_disabled():
                    terminal.write_line(line)
            else:
                terminal.write_line(line)

    return log


@pytest.fixture(scope="session")
def reallibs_env(pytestconfig: pytest.Config):
    if os.environ.get("CKPTLINT_SKIP_REALLIBS"):
        pytest.skip("real-library scenarios skipped: CKPTLINT_SKIP_REALLIBS is set")
    log = _reporter(pytestconfig)
    try:
        env = side_env(log=log)
    except ProvisionError as exc:
        pytest.skip(f"real-library scenarios skipped: cannot provision the side venv under {cache_dir()} "
                    f"({exc})")
    return env


@dataclass
class Scenarios:
    manifest: dict
    unavailable: dict[str, str] = field(default_factory=dict)   # part -> why it was not built

    def get(self, name: str) -> dict:
        if name in self.manifest["scenarios"]:
            return self.manifest["scenarios"][name]
        for part, why in self.unavailable.items():
            if name.startswith(f"{part}-"):
                pytest.skip(f"scenario {name} not built: {why}")
        raise KeyError(f"no scenario {name!r} in the manifest")

    def file(self, name: str, role: str = "target") -> Path:
        return Path(self.get(name)["files"][role])


@pytest.fixture(scope="session")
def reallibs_scenarios(reallibs_env, pytestconfig: pytest.Config) -> Scenarios:
    # A builder that fails is a bug in the builder or a library change: an error, not a skip.
    built, unavailable = build_all(reallibs_env, log=_reporter(pytestconfig))
    return Scenarios(merged_manifest(built), unavailable)
