"""Server overhead check: server throughput on preprocessed UINT8 inputs vs model-only throughput.

Target (issue 3): at the same level and batch size, a running server answering KServe v2
requests of UINT8 [b,3,224,224] (binary tensor data, binary FP32 output) reaches >= 85 % of
the images/s of the runner alone (normalize -> model at the level -> softmax/top-k).

How it measures, per (level, batch size):
- model-only: `runner.run(level, x)` back to back on one dedicated thread of this process
  that also warmed the runner up (as the server's worker thread does);
- server: `python -m service` in a subprocess with SAIT_MAX_BATCH_SIZE=b, the level pinned
  per request (density), and `--concurrency` keep-alive connections in this process that
  each keep one request in flight, so the worker always has the next batch queued;
- the two alternate in short windows (model, server, model, server, ..., model) and each
  server window is divided by the mean of the model-only windows on either side; the
  median of those ratios is the result (the CPU a shared machine leaves drifts by minutes).
The client runs on the same CPU as the server: its cost counts against the server.

    flock /tmp/sait-bench.lock python -m bench.throughput_check --levels dense,l050 --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from models.machine import cpu_model

TARGET_RATIO = 0.85


def model_only_images_per_s(runner, level: str, batch: int, seconds: float) -> float:
    """Back-to-back runner.run; call it on the thread that warmed the runner up."""
    x = torch.randint(0, 256, (batch, *runner.input_size), dtype=torch.uint8)
    for _ in range(2):
        runner.run(level, x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.run(level, x)
        n += batch
    return n / (time.perf_counter() - start)


def infer_body(model: str, level: str, batch: int, input_size) -> tuple[bytes, dict]:
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *input_size), dtype=np.uint8).tobytes()
    header = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [batch, *input_size],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": len(pixels)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        "parameters": {"density": level, "latency_budget_ms": 600_000},
    }
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + pixels, headers


def server_images_per_s(
    port: int, model: str, level: str, batch: int, input_size, seconds: float, concurrency: int, warmup_s: float = 1.0
) -> tuple[float, int]:
    """Images/s answered with 200 over `seconds`, after a short warm-up; and the error count."""
    body, headers = infer_body(model, level, batch, input_size)
    path = f"/v2/models/{model}/infer"
    counts = [0] * concurrency
    errors = [0] * concurrency
    measuring = threading.Event()
    stop = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if measuring.is_set():
                if resp.status == 200:
                    counts[i] += batch
                else:
                    errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup_s)  # connections open, a batch in flight
    measuring.set()
    start = time.perf_counter()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join(120)
    return sum(counts) / elapsed, sum(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput_check", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--levels", default="dense,l050", help="comma list of levels")
    parser.add_argument("--batch-sizes", default="1,8", help="comma list of batch sizes")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measuring window")
    parser.add_argument(
        "--rounds", type=int, default=5, help="server windows per point (each between two model-only windows)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="requests kept in flight")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "assets" / "hf-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench.loadgen.server import ServerProcess
    from models import load_model
    from service.device.factory import create_runner

    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    model = load_model(args.model)
    runner = create_runner(model, device="cpu", precision="fp32", cuda_graphs=False, max_batch_size=max(sizes))
    # Like the server's worker, one dedicated thread warms the runner up and runs every batch:
    # torch's intra-op threads behave differently per calling thread (on an oversubscribed CPU
    # a 4x difference was measured between threads), so baseline and server must match.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-only")
    model_thread.submit(runner.warmup).result()

    def model_only(level: str, batch: int) -> float:
        return model_thread.submit(model_only_images_per_s, runner, level, batch, args.seconds).result()

    input_size = tuple(model.data_config.input_size)
    rows = []
    for batch in sizes:
        settings = {
            "MODEL": args.model,
            "DEVICE": "cpu",
            "MAX_BATCH_SIZE": batch,
            "MAX_QUEUE_DELAY_MS": 1,
            "LEVELS": ",".join(levels),
            "QUEUE_LIMIT": 4096,
            "LOG_LEVEL": "warning",
        }
        with ServerProcess(settings=settings) as server:
            for lv in levels:
                # Alternate short windows, model-only (server idle) and server (baseline idle),
                # and compare each server window with the model-only windows on either side:
                # on a shared machine the available CPU drifts more between minutes than within.
                model_ips = [model_only(lv, batch)]
                server_ips, errors = [], 0
                for _ in range(args.rounds):
                    ips, err = server_images_per_s(
                        server.port, args.model, lv, batch, input_size, args.seconds, args.concurrency
                    )
                    server_ips.append(ips)
                    errors += err
                    model_ips.append(model_only(lv, batch))
                ratios = [s_ / ((a + b) / 2) for s_, a, b in zip(server_ips, model_ips, model_ips[1:])]
                ratio = statistics.median(ratios)
                rows.append(
                    {
                        "level": lv,
                        "batch_size": batch,
                        "model_images_per_s": round(statistics.median(model_ips), 2),
                        "server_images_per_s": round(statistics.median(server_ips), 2),
                        "model_windows": [round(x, 2) for x in model_ips],
                        "server_windows": [round(x, 2) for x in server_ips],
                        "window_ratios": [round(x, 3) for x in ratios],
                        "errors": errors,
                        "ratio": round(ratio, 3),
                        "meets_target": ratio >= TARGET_RATIO,
                    }
                )
    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "model": args.model,
    }
    print(
        f"# server vs model-only throughput ({env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
        f"load avg {env['load_average'][0]:.1f})"
    )
    print(
        "| level | batch | model-only img/s (median) | server img/s (median) "
        "| server/model (median of windows) | >= 85 % |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['level']} | {r['batch_size']} | {r['model_images_per_s']:.1f} | {r['server_images_per_s']:.1f} | "
            f"{r['ratio']:.2f} | {'yes' if r['meets_target'] else 'NO'} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
