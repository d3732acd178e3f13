"""Issue 20's attacks, rerun against real servers: what each case got, per server variant.

    flock /tmp/sait-cpu.lock python -m bench.hardening_probe \\
        --variant before@/tmp/wt-base: --variant hardened: --docs docs/security.md

Each variant is one `python -m service --model vit_tiny_test --device cpu` on loopback
(bench.loadgen.server.ServerProcess; `NAME@CHECKOUT:K=V;...` as bench.loadgen.compare reads
it), probed alone, case after case: malformed JSON and numbers, clients that vanish mid-body,
an endless header, idle and slow connections, duplicate outputs, huge images, a 20 MB JSON
body, a long URL, a 64 MB upload, a foreign Host, a cross-origin "simple" POST, and last a
SIGTERM with a stalled upload open. Every case is bounded in count and time (the slowest waits
45 s for connections to be closed; the SIGTERM case gives up after the drain + 35 s). The table
says what each case got: status and the start of the error, times, counts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import shlex
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.loadgen import compare
from bench.loadgen.docblock import cpu_model
from bench.loadgen.http1 import read_response
from bench.loadgen.server import ServerError, ServerProcess, rss_bytes

MODEL = "vit_tiny_test"
INFER = f"/v2/models/{MODEL}/infer"
DEFAULT_BLOCK = "hardening-probe"
# The rest of a request head that announces a body of 100000 bytes, of which a few come.
STALLED_HEAD = "Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
# What the issue saw on main before the change (issue 20's text), for the table's first column.
ISSUE = {
    "json_deep": "500 RecursionError",
    "bytes_deep": "500 RecursionError",
    "digits_5000": "500 ValueError",
    "uint8_2e70": "500 OverflowError",
    "disconnect": "a 30-line traceback each, not counted",
    "header_stream": "200 after 100 MB, RSS +180 MB",
    "slow_connections": "all open after 150 s",
    "amplification": "200, 70 MB in 3.6 s, liveness 1.95 s",
    "big_pngs": "2.1 s, +250 MB; a good 500 ms request 429 after 2.5 s",
    "json_20mb": "liveness 641 ms",
    "url_64k": "400 text/plain, not counted",
    "body_64mb": "connection reset",
    "host": "200",
    "simple_post": "200",
    "sigterm_stalled": "exit after 61.7 s; the upload got 500 text/plain",
}


# -- raw HTTP ---------------------------------------------------------------------------------------
def read_answer(sock: socket.socket, limit_s: float = 10.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of one response; (0, why, b"") when none came."""
    status, headers, body = read_response(sock, limit_s)
    return (status, headers.get("content-type", ""), body) if status else (0, "no answer (closed or reset)", b"")


def describe(status: int, kind: str, body: bytes) -> str:
    """`status error-start` for a table cell."""
    if status == 0:
        return kind
    try:
        text = json.loads(body).get("error", "")
    except ValueError:
        text = f"{kind or '?'}: {body[:40].decode('latin-1')}"
    return f"{status} {text[:55]}".strip()


def post_raw(port: int, path: str, body: bytes, headers: dict[str, str] | None = None, limit_s: float = 60.0) -> str:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        try:
            sock.sendall(head.encode() + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            return "reset while sending"
        return describe(*read_answer(sock, limit_s))


def liveness_during(url: str, work) -> tuple[object, float]:
    """(work's result, the slowest /v2/health/live answer in ms while it ran); polling starts
    (one answer in) before the work does."""
    worst, polling, done = [0.0], threading.Event(), threading.Event()

    def poll():
        with httpx.Client(base_url=url, timeout=30) as c:
            while not done.is_set():
                t = time.perf_counter()
                c.get("/v2/health/live")
                worst[0] = max(worst[0], (time.perf_counter() - t) * 1e3)
                polling.set()
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    polling.wait(30)
    try:
        return work(), worst[0]
    finally:
        done.set()
        poller.join(30)


def post_binary_v2(url: str, head: bytes, blob: bytes) -> tuple[httpx.Response, float]:
    """(response, seconds) of a v2 infer whose JSON header `head` is followed by `blob`."""
    start = time.perf_counter()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    r = httpx.post(url + INFER, content=head + blob, headers=headers, timeout=120)
    return r, time.perf_counter() - start


def counter(url: str, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the cases --------------------------------------------------------------------------------------
def pixels_json(value) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "data": [value] + [0] * 150527}]}
    ).encode()


def case_json_deep(server) -> str:
    return post_raw(server.port, INFER, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def case_bytes_deep(server) -> str:
    body = b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": '
    return post_raw(server.port, INFER, body + b"[" * 985 + b'"eA=="' + b"]" * 985 + b"}]}")


def case_digits_5000(server) -> str:
    return post_raw(server.port, INFER, b'{"parameters": {"top_k": ' + b"9" * 5000 + b'}, "inputs": []}')


def case_uint8_2e70(server) -> str:
    return post_raw(server.port, INFER, pixels_json(2**70))


def case_disconnect(server) -> str:
    log_before = server.log_path.read_text(errors="replace").count("Traceback")
    counted = counter(server.url, "sait_requests_total", outcome="client_disconnect")
    for i in range(50):
        path = "/v1/classify" if i % 2 else INFER
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{STALLED_HEAD}".encode() + b"\xff" * 1000)
            time.sleep(0.02)
    time.sleep(1.0)
    tracebacks = server.log_path.read_text(errors="replace").count("Traceback") - log_before
    counted = counter(server.url, "sait_requests_total", outcome="client_disconnect") - counted
    return f"50 clients: {tracebacks} tracebacks logged, {counted:.0f} counted as client_disconnect"


def case_header_stream(server) -> str:
    import select

    rss0, peak = rss_bytes(server.pid), 0
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            while sent < 100 * 2**20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"a" * 2**20)
                sent += 2**20
                peak = max(peak, rss_bytes(server.pid))
            if sent >= 100 * 2**20:
                sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = describe(*read_answer(sock, 30))
    return f"{answer} after {sent / 2**20:.0f} MB sent; RSS +{max(0, peak - rss0) / 2**20:.0f} MB"


def case_slow_connections(server) -> str:
    def opened(data: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        if data:
            sock.sendall(data)
        return sock

    idle = opened(b"")
    head = opened(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    body = opened(f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n{STALLED_HEAD}".encode() + b"ab")
    loris = [opened(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(100)]
    start = time.monotonic()
    normal = httpx.get(f"{server.url}/v2", timeout=30).status_code
    closed_at: dict[socket.socket, float] = {}
    answers: dict[socket.socket, str] = {}
    everyone = [idle, head, body, *loris]
    for s in everyone:
        s.setblocking(False)
    while time.monotonic() - start < 45 and len(closed_at) < len(everyone):
        for s in everyone:
            if s in closed_at:
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                answers[s] = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "?"
                continue
            closed_at[s] = time.monotonic() - start
        time.sleep(0.05)
    for s in everyone:
        s.close()

    def when(s) -> str:
        if s not in closed_at:
            return "open after 45 s"
        return f"closed at {closed_at[s]:.1f} s" + (f" ({answers[s]})" if s in answers else "")

    closed_loris = [closed_at[s] for s in loris if s in closed_at]
    loris_text = f"{len(closed_loris)}/100 slowloris closed" + (
        f" by {max(closed_loris):.1f} s" if closed_loris else " after 45 s"
    )
    return (
        f"idle {when(idle)}; partial head {when(head)}; partial body {when(body)}; {loris_text}; a normal GET {normal}"
    )


def case_amplification(server) -> str:
    pixels = np.zeros((8, 3, 224, 224), dtype=np.uint8).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [8, 3, 224, 224],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ],
            "outputs": [{"name": "probabilities"}] * 400,
            "parameters": {"density": "l040"},
        }
    ).encode()

    (r, took), worst = liveness_during(server.url, lambda: post_binary_v2(server.url, head, pixels))
    what = f"{r.status_code} {r.json().get('error', '')[:50]}" if r.status_code != 200 else "200"
    return f"{what}; {len(r.content) / 2**20:.1f} MB in {took:.2f} s; liveness {worst:.0f} ms"


def case_big_pngs(server) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (6300, 6300), (90, 140, 200)).save(buf, format="PNG", compress_level=9)
    png = buf.getvalue()
    blob = b"".join(struct.pack("<I", len(png)) + png for _ in range(8))
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [8], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
            ],
            "parameters": {"density": "l040"},
        }
    ).encode()
    small = io.BytesIO()
    Image.new("RGB", (320, 240), (10, 200, 30)).save(small, format="JPEG")
    rss0, peak, done = rss_bytes(server.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            time.sleep(0.05)

    def big():
        r, took = post_binary_v2(server.url, head, blob)
        return describe(r.status_code, "", r.content), took

    def good():
        time.sleep(0.2)
        t = time.perf_counter()
        r = httpx.post(
            f"{server.url}/v1/classify?latency_budget_ms=500",
            content=small.getvalue(),
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        return r.status_code, time.perf_counter() - t

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        big_f, good_f = pool.submit(big), pool.submit(good)
        (big_answer, big_s), (good_status, good_s) = big_f.result(), good_f.result()
    done.set()
    sampler.join(5)
    return (
        f"8 PNGs ({len(png) * 8 / 2**10:.0f} KB): {big_answer[:60]} in {big_s:.2f} s, RSS +"
        f"{max(0, peak[0] - rss0) / 2**20:.0f} MB; a 500 ms request meanwhile: {good_status} in {good_s:.2f} s"
    )


def case_json_20mb(server) -> str:
    # A valid v2 JSON body just under 20 MB (the default body limit is 20 MiB): 26 images of
    # pixels, five bytes a number.
    images = 26
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [images, 3, 224, 224],
                    "datatype": "UINT8",
                    "data": [255] * (images * 150528),
                }
            ]
        }
    ).encode()
    answer, worst = liveness_during(server.url, lambda: post_raw(server.port, INFER, body))
    return f"{len(body) / 2**20:.1f} MB: {answer[:60]}; liveness {worst:.0f} ms"


def case_url_64k(server) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2?q=" + b"a" * 65536 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, kind, body = read_answer(sock)
    return f"{describe(status, kind, body)[:50]} ({kind})"


def case_body_64mb(server) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/classify", body=b"\xff" * (64 * 2**20), headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        return describe(r.status, r.getheader("content-type", ""), r.read())
    except (ConnectionResetError, BrokenPipeError) as exc:
        return f"connection reset ({type(exc).__name__})"
    finally:
        conn.close()


def case_host(server) -> str:
    r = httpx.get(f"{server.url}/v2", headers={"Host": "rebind.attacker.example"}, timeout=10)
    return describe(r.status_code, "", r.content)


def case_simple_post(server) -> str:
    small = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(small, format="JPEG")
    r = httpx.post(
        f"{server.url}/v1/classify", content=small.getvalue(), headers={"Content-Type": "text/plain"}, timeout=30
    )
    return describe(r.status_code, "", r.content)


def case_sigterm_stalled(server) -> str:
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    stalled.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n{STALLED_HEAD}".encode() + b"\xff\xd8")
    time.sleep(0.5)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    drain_s = float(server.settings.get("DRAIN_TIMEOUT_S", 30))
    try:
        code = server.proc.wait(timeout=drain_s + 35)
        took = f"exit {code} after {time.monotonic() - start:.1f} s"
    except Exception:
        took = f"still running after {drain_s + 35:.0f} s"
    answer = describe(*read_answer(stalled, 5))
    stalled.close()
    return f"{took}; the upload got {answer[:60]}"


CASES = [
    ("json_deep", "JSON nested 100,000 deep (v2)", case_json_deep),
    ("bytes_deep", "BYTES data nested 985 deep", case_bytes_deep),
    ("digits_5000", "a 5000-digit top_k", case_digits_5000),
    ("uint8_2e70", "a UINT8 value of 2**70 in JSON", case_uint8_2e70),
    ("disconnect", "clients gone mid-body", case_disconnect),
    ("header_stream", "a header streamed in 1 MB chunks up to 100 MB", case_header_stream),
    ("slow_connections", "idle, partial head, partial body, 100 slowloris", case_slow_connections),
    ("amplification", "400 duplicate outputs, pixels [8,3,224,224]", case_amplification),
    ("big_pngs", "eight 6300x6300 PNGs in one v2 request", case_big_pngs),
    ("json_20mb", "a 20 MB JSON body", case_json_20mb),
    ("url_64k", "a 64 KB URL", case_url_64k),
    ("body_64mb", "a 64 MB upload, plain blocking client", case_body_64mb),
    ("host", "Host: rebind.attacker.example on loopback", case_host),
    ("simple_post", "/v1/classify with Content-Type text/plain", case_simple_post),
    ("sigterm_stalled", "SIGTERM with a stalled upload open (drain 30 s)", case_sigterm_stalled),
]


# -- running and reporting --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.hardening_probe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--cases", default="", help=f"comma list of cases (default all): {', '.join(k for k, _, _ in CASES)}"
    )
    p.add_argument("--out", type=Path, default=Path("out/hardening_probe.json"))
    compare.add_variant_options(p, default_block=DEFAULT_BLOCK)
    return p


def probe(variant: compare.Variant, *, only: list[str]) -> dict[str, str]:
    settings = {"MODEL": MODEL, "DEVICE": "cpu", **variant.settings}
    server = ServerProcess(settings=settings, root=variant.root, ready_timeout_s=300)
    server.start()
    results = {}
    try:
        for key, title, fn in CASES:
            if only and key not in only:
                continue
            print(f"[{variant.name}] {title} ...", file=sys.stderr, flush=True)
            try:
                results[key] = fn(server)
            except (httpx.HTTPError, OSError) as exc:
                results[key] = f"client error: {type(exc).__name__}: {str(exc)[:80]}"
            print(f"[{variant.name}]   {results[key]}", file=sys.stderr, flush=True)
    finally:
        server.stop(timeout_s=60)
    return results


def markdown(doc: dict) -> str:
    names = [v["name"] for v in doc["variants"]]
    lines = [
        f"Measured {doc['measured_utc']} on **{doc['cpu']}**, one `python -m service --model {MODEL} --device cpu` "
        f"per variant on loopback, default settings unless listed.",
        "",
        f"Command: `{doc['command']}`",
        "",
        "| case | issue 20 saw | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for key, title, _ in CASES:
        if any(key in r for r in doc["results"].values()):
            cells = [doc["results"][n].get(key, "").replace("|", "/") for n in names]
            lines.append(f"| {title} | {ISSUE.get(key, '')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += compare.variant_notes(doc["variants"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in only if c not in {k for k, _, _ in CASES}]
    if unknown:
        print(f"hardening_probe: unknown case(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        variants = [compare.parse_variant(v) for v in args.variant] or [compare.Variant(name="this")]
    except compare.UsageError as exc:
        print(f"hardening_probe: {exc}", file=sys.stderr)
        return 2
    if len({v.name for v in variants}) != len(variants):
        print("hardening_probe: variant names must differ", file=sys.stderr)
        return 2
    results = {}
    try:
        for v in variants:
            results[v.name] = probe(v, only=only)
    except ServerError as exc:
        print(f"hardening_probe: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 1
    doc = {
        "measured_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "command": "python -m bench.hardening_probe " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "variants": compare.variant_records(variants),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    print(table)
    if args.docs is not None:
        compare.write_block(args.docs, args.block, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
