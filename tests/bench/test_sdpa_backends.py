"""The SDPA probe on the CPU: the fused CPU kernel runs with the size bias too."""

from __future__ import annotations

import torch

from bench.sdpa_backends import chosen_kernel, main, probe


def test_cpu_dispatches_the_fused_kernel_with_and_without_the_size_bias():
    q, k, v = (torch.randn(2, 3, 17, 64) for _ in range(3))
    bias = torch.rand(2, 1, 1, 17)
    assert chosen_kernel(q, k, v, None) == chosen_kernel(q, k, v, bias) == "_scaled_dot_product_flash_attention_for_cpu"


def test_probe_reports_every_backend_that_runs(capsys):
    rows = probe(torch.device("cpu"), torch.float32, batch=1, tokens=(9,), calls=1)
    assert {(r["model"], r["size_bias"]) for r in rows} == {(m, b) for m in ("deit_tiny", "deit_base") for b in (0, 1)}
    assert all({"math", "flash_attention"} <= set(r["backends_ms"]) for r in rows)
    assert main(["--device", "cpu", "--batch", "1", "--tokens", "9", "--calls", "1"]) == 0
    assert "| deit_base | 9 | yes |" in capsys.readouterr().out
