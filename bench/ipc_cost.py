"""What one control message costs between an API process and the engine process, per transport.

    python -m bench.ipc_cost --messages 20000 --window 32

The multi-process server sends each request's control message (about 100 bytes: request id,
shared-memory slots, dial) from an API process to the engine process and gets a reply back
with the results (about 4 KB: 1000 float32 probabilities and a few fields). Pixels never go
through the channel (shared memory), so what matters here is the per-message cost: CPU time
on both sides and the round trip. Each transport runs the same exchange: an echo server in a
child process, a client in this process, `--window` messages in flight.

Transports:
- `asyncio-unix`: asyncio streams over a Unix socket, 4-byte length + msgpack frames, both
  ends on an event loop (what the API process and the engine already run);
- `mp-pipe`: `multiprocessing` connections (a socketpair), msgpack bytes with
  send_bytes/recv_bytes, blocking reads on a thread at the client;
- `zmq`: pyzmq DEALER/ROUTER over ipc://, msgpack frames, zmq.asyncio at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack

from models.machine import cpu_model

REQUEST = {"t": "infer", "id": 0, "slots": [3], "arrival_s": 0.0, "dial": ["l050", 100.0, None, 5, 0], "inflight": 3}
REPLY_PROBS = bytes(4000)
HEADER = struct.Struct("<I")
TRANSPORTS = ("asyncio-unix", "mp-pipe", "zmq")


def reply_for(msg: dict) -> bytes:
    return msgpack.packb(
        {"t": "result", "id": msg["id"], "level": "l050", "probs": REPLY_PROBS, "queue_s": [0.001], "compute_s": 0.002}
    )


# -- servers (child processes) -----------------------------------------------------------------
def _serve_asyncio(path: str, ready) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = HEADER.unpack(await reader.readexactly(4))
                msg = msgpack.unpackb(await reader.readexactly(n))
                body = reply_for(msg)
                writer.write(HEADER.pack(len(body)) + body)
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path=path)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve_pipe(conn, ready) -> None:
    ready.set()
    try:
        while True:
            conn.send_bytes(reply_for(msgpack.unpackb(conn.recv_bytes())))
    except EOFError:
        return


def _serve_zmq(path: str, ready) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(f"ipc://{path}")
    ready.set()
    while True:
        ident, body = sock.recv_multipart()
        sock.send_multipart([ident, reply_for(msgpack.unpackb(body))])


# -- clients (this process) ----------------------------------------------------------------------
async def _client_asyncio(path: str, messages: int, window: int) -> list[float]:
    reader, writer = await asyncio.open_unix_connection(path)
    rtts: list[float] = []
    sent_at: dict[int, float] = {}
    sem = asyncio.Semaphore(window)

    async def read_replies() -> None:
        for _ in range(messages):
            (n,) = HEADER.unpack(await reader.readexactly(4))
            msg = msgpack.unpackb(await reader.readexactly(n))
            rtts.append(time.perf_counter() - sent_at.pop(msg["id"]))
            sem.release()

    task = asyncio.create_task(read_replies())
    for i in range(messages):
        await sem.acquire()
        body = msgpack.packb({**REQUEST, "id": i})
        sent_at[i] = time.perf_counter()
        writer.write(HEADER.pack(len(body)) + body)
    await task
    writer.close()
    return rtts


def _client_pipe(conn, messages: int, window: int) -> list[float]:
    rtts: list[float] = []
    sent_at: dict[int, float] = {}
    slots = threading.Semaphore(window)

    def read_replies() -> None:
        for _ in range(messages):
            msg = msgpack.unpackb(conn.recv_bytes())
            rtts.append(time.perf_counter() - sent_at.pop(msg["id"]))
            slots.release()

    reader = threading.Thread(target=read_replies)
    reader.start()
    for i in range(messages):
        slots.acquire()
        sent_at[i] = time.perf_counter()
        conn.send_bytes(msgpack.packb({**REQUEST, "id": i}))
    reader.join()
    return rtts


async def _client_zmq(path: str, messages: int, window: int) -> list[float]:
    import zmq
    import zmq.asyncio

    sock = zmq.asyncio.Context().socket(zmq.DEALER)
    sock.connect(f"ipc://{path}")
    rtts: list[float] = []
    sent_at: dict[int, float] = {}
    sem = asyncio.Semaphore(window)

    async def read_replies() -> None:
        for _ in range(messages):
            msg = msgpack.unpackb(await sock.recv())
            rtts.append(time.perf_counter() - sent_at.pop(msg["id"]))
            sem.release()

    task = asyncio.create_task(read_replies())
    for i in range(messages):
        await sem.acquire()
        sent_at[i] = time.perf_counter()
        await sock.send(msgpack.packb({**REQUEST, "id": i}))
    await task
    sock.close(linger=0)
    return rtts


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(transport: str, *, messages: int, window: int) -> dict:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    with tempfile.TemporaryDirectory(prefix="sait-ipc-") as tmp:
        path = os.path.join(tmp, "s")
        if transport == "mp-pipe":
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve_pipe, args=(theirs, ready), daemon=True)
        elif transport == "asyncio-unix":
            proc = ctx.Process(target=_serve_asyncio, args=(path, ready), daemon=True)
        else:
            proc = ctx.Process(target=_serve_zmq, args=(path, ready), daemon=True)
        proc.start()
        if not ready.wait(60):
            raise RuntimeError(f"{transport} server did not start")
        server_cpu0, client_cpu0, start = _cpu_s(proc.pid), time.process_time(), time.perf_counter()
        if transport == "mp-pipe":
            rtts = _client_pipe(ours, messages, window)
        elif transport == "asyncio-unix":
            rtts = asyncio.run(_client_asyncio(path, messages, window))
        else:
            rtts = asyncio.run(_client_zmq(path, messages, window))
        wall_s = time.perf_counter() - start
        server_cpu_s, client_cpu_s = _cpu_s(proc.pid) - server_cpu0, time.process_time() - client_cpu0
        proc.kill()
        proc.join(5)
    rtts.sort()
    return {
        "transport": transport,
        "messages": messages,
        "window": window,
        "messages_per_s": messages / wall_s,
        "rtt_p50_us": statistics.median(rtts) * 1e6,
        "rtt_p99_us": rtts[int(0.99 * (len(rtts) - 1))] * 1e6,
        "client_cpu_us_per_msg": client_cpu_s / messages * 1e6,
        "server_cpu_us_per_msg": server_cpu_s / messages * 1e6,
    }


def markdown(doc: dict) -> str:
    lines = [
        f"Measured {doc['environment']['when']} on **{doc['environment']['machine']}**; "
        f"{doc['messages']} messages per transport, {doc['window']} in flight, {doc['rounds']} rounds (medians).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "| transport | messages/s | round trip p50 µs | p99 µs | API side CPU µs/msg | engine side CPU µs/msg |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['transport']} | {r['messages_per_s']:.0f} | {r['rtt_p50_us']:.0f} | {r['rtt_p99_us']:.0f} | "
            f"{r['client_cpu_us_per_msg']:.1f} | {r['server_cpu_us_per_msg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ipc_cost", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--window", type=int, default=32, help="messages in flight")
    p.add_argument("--rounds", type=int, default=3, help="turns of every transport (medians reported)")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--out", type=Path, default=Path("out/ipc_cost.json"))
    args = p.parse_args(argv)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or args.messages < 1 or args.window < 1 or args.rounds < 1:
        print(f"ipc_cost: unknown transport(s) {unknown} or a count below 1", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {t: [] for t in transports}
    for _ in range(args.rounds):
        for t in transports:  # interleaved, so a noisy minute hits every transport alike
            runs[t].append(measure(t, messages=args.messages, window=args.window))
    results = []
    for t, rs in runs.items():
        medians = {k: statistics.median([r[k] for r in rs]) for k in rs[0] if k.endswith(("_per_s", "_us", "_msg"))}
        results.append({"transport": t, **medians})
    doc = {
        "command": "python -m bench.ipc_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "messages": args.messages,
        "window": args.window,
        "rounds": args.rounds,
        "environment": {"machine": cpu_model(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "results": results,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
