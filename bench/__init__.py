"""Benchmarks of the GPU path, run with `python -m bench <suite>` (see docs/benchmarks.md).

Suites: `model` (images/s per level and batch, batch-1 latency, FLOP utilization; eager vs
CUDA graphs), `e2e` (the server end to end over loopback, UINT8 and JPEG inputs), `precision`
(top-1 agreement of bf16/fp16 with fp32 on the real images). Every run writes JSON and a
markdown table that name the device, the torch/CUDA versions and the settings.
"""
