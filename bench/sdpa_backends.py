"""Which scaled-dot-product-attention kernel runs, with and without the size bias, and its time.

    python -m bench.sdpa_backends --device cuda --precision bf16

Proportional attention (merged tokens) adds log(size) to the logits as a float `attn_mask`;
a fused kernel that takes no mask cannot run then, and the dispatcher picks another. For the
attention shapes of DeiT-Tiny and DeiT-Base at the token counts the levels run, this prints
the kernel the dispatcher chose (the ATen operator it dispatched to), every backend that
accepts the call when forced (`torch.nn.attention.sdpa_kernel`), and their median times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.environment import describe, headline
from models.device import resolve_device
from models.op_count import count_forward_ops

SHAPES = {"deit_tiny": (3, 64), "deit_base": (12, 64)}  # heads, head dim
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def chosen_kernel(q, k, v, mask) -> str:
    """The ATen attention operator the dispatcher runs for this call."""
    ops = count_forward_ops(F.scaled_dot_product_attention, q, k, v, attn_mask=mask).by_op
    names = [name for name in ops if "attention" in name]
    return names[0] if names else "math (" + ", ".join(sorted(ops)) + ")"


def _median_ms(fn, device: torch.device, calls: int) -> float:
    samples = []
    for _ in range(calls + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples[2:]) * 1e3


def probe(device: torch.device, dtype: torch.dtype, *, batch: int, tokens: tuple[int, ...], calls: int) -> list[dict]:
    backends = [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]
    if device.type == "cuda":
        backends += [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for model, (heads, dim) in SHAPES.items():
        for n in tokens:
            q, k, v = (torch.randn(batch, heads, n, dim, generator=gen).to(device, dtype) for _ in range(3))
            size = torch.randint(1, 5, (batch, n), generator=gen).float().to(device)
            for with_bias in (False, True):
                mask = size.log().view(batch, 1, 1, n).to(dtype) if with_bias else None
                times = {}
                for backend in backends:
                    try:
                        with sdpa_kernel([backend]), torch.inference_mode():
                            call = partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
                            times[backend.name.lower()] = _median_ms(call, device, calls)
                    except RuntimeError:  # this backend does not accept the call
                        continue
                kernel = chosen_kernel(q, k, v, mask)  # not under inference_mode: composites decompose below it
                rows.append(
                    {"model": model, "tokens": n, "size_bias": with_bias, "dispatched": kernel, "backends_ms": times}
                )
    return rows


def markdown(rows: list[dict], env: dict, command: str) -> str:
    out = [f"- Machine: {headline(env)}", f"- Command: `{command}`", ""]
    out += ["| model | tokens | size bias | dispatched to | backends that run (median ms) |", "|---|---|---|---|---|"]
    for r in rows:
        times = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["backends_ms"].items(), key=lambda kv: kv[1]))
        out.append(
            f"| {r['model']} | {r['tokens']} | {'yes' if r['size_bias'] else 'no'} | {r['dispatched']} | {times} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sdpa_backends", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", default="197,131,58", help="comma list of token counts")
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        tokens = tuple(int(t) for t in args.tokens.split(","))
        rows = probe(device, _DTYPES[precision], batch=args.batch, tokens=tokens, calls=args.calls)
    except (RuntimeError, ValueError) as exc:
        print(f"bench.sdpa_backends: {exc}", file=sys.stderr)
        return 2
    command = "python -m bench.sdpa_backends " + " ".join(sys.argv[1:] if argv is None else argv)
    print(markdown(rows, describe(device), command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
