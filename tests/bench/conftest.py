"""A model-bench result on the CPU with the tiny model, which several bench tests read."""

from __future__ import annotations

import pytest

from bench.model_bench import ModelBenchConfig, run_model_bench


@pytest.fixture(scope="module")
def model_result():
    cfg = ModelBenchConfig(
        model="vit_tiny_test",
        device="cpu",
        precision="fp32",
        batch_sizes=(1, 2),
        levels=("dense", "l050"),
        min_time_s=0.0,
        min_calls=1,
        max_calls=1,
        matmul_n=64,
        rounds=2,
    )
    return run_model_bench(cfg)
