"""Each benchmark runs at a tiny size (proof that it runs, not a timing)."""

from __future__ import annotations

import importlib
import json

import pytest

BENCHMARKS = ["bench_inference", "bench_gp", "bench_queries", "bench_diffusion", "bench_finetune", "bench_alignment"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_tiny(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(["--tiny", "--out", str(tmp_path)])
    outputs = list(tmp_path.glob("*.json"))
    assert outputs, "no JSON written"
    payload = json.loads(outputs[0].read_text())
    assert isinstance(payload, dict) and payload
    assert list(tmp_path.glob("*.md"))
