"""The model benchmark on CUDA measures both modes and reports the capture. Needs CUDA."""

from __future__ import annotations

import pytest
import torch

from bench.model_bench import ModelBenchConfig, run_model_bench
from bench.report import model_markdown

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (eager vs CUDA-graph timing)"),
]


def test_model_bench_compares_eager_and_graphs_on_cuda():
    cfg = ModelBenchConfig(
        model="vit_tiny_test",
        device="cuda",
        precision="bf16",
        batch_sizes=(1, 4, 8),
        levels=("dense", "l050"),
        max_graph_batch=4,
        min_time_s=0.0,
        min_calls=2,
        max_calls=2,
        matmul_n=1024,
    )
    r = run_model_bench(cfg)
    assert {t["mode"] for t in r["throughput"]} == {"eager", "graphs"}
    assert r["cuda_graphs"]["graphs"] == 2 * 3 and r["cuda_graphs"]["buckets"] == [1, 2, 4]
    assert r["cuda_graphs"]["capture_seconds"] > 0 and r["cuda_graphs"]["graph_memory_bytes"] > 0
    assert any("above the largest bucket" in n for n in r["notes"])
    assert r["matmul_peak_tflops"]["bf16"] > 1.0  # any CUDA GPU with tensor cores clears 1 TFLOP/s
    md = model_markdown(r)
    assert "graphs/eager" in md and "CUDA graphs: 6 captured" in md
