"""Every example runs at tiny size; an example missing from this list fails the suite."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY_ARGS = {
    "01_bradley_terry_recovery.py": ["--num-comparisons", "40", "--num-samples", "30", "--warmup-steps", "30", "--num-features", "3"],
    "02_gp_preferences.py": ["--tiny"],
    "03_active_learning.py": ["--tiny"],
    "04_full_loop.py": ["--tiny"],
    "05_guided_sampling.py": ["--num-samples", "8", "--steps", "5", "--labels", "6", "--pool-scale-samples", "8",
                              "--oversample", "2"],
    "06_resume_session.py": ["--tiny"],
    "07_custom_feature_map.py": ["--tiny"],
    "08_session_in_arviz.py": ["--tiny"],
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed():
    present = {p.name for p in EXAMPLES.glob("[0-9]*.py")}
    missing = present - set(TINY_ARGS)
    assert not missing, f"examples without tiny arguments in tests/test_examples.py: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_runs_tiny(name, tmp_path):
    path = EXAMPLES / name
    if not path.exists():
        pytest.fail(f"{name} is listed but does not exist")
    module = _load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.main([*TINY_ARGS[name], "--seed", "0", "--out", str(tmp_path)])
    assert any(tmp_path.iterdir()), "the example wrote no output"
