"""The wire between API processes and the engine process: frames, messages, shared-memory slots.

Control messages are msgpack maps behind a 4-byte little-endian length, over one Unix socket
per API process (asyncio streams at both ends: the cheapest of the transports measured by
`python -m bench.ipc_cost`, docs/benchmarks.md). Pixels never go through it: an API process
writes each image into a slot of its shared-memory arena and sends the slot numbers; the engine
copies the images out when the message arrives, so a slot is the API process's again as soon
as the engine has read the message (it frees it when the answer comes, which is later).

Messages, API process -> engine:
    hello   {arena, slots, slot_bytes, pid}          -> info {info, state}
    infer   {id, slots, arrival_s, dial, inflight}    -> result {id, ...} or error {id, ...}
    records {records: [[api, level, outcome, duration_s, deadline_met], ...], inflight, free_slots}
            (no answer; sent with the next message, or 0.25 s after the first record)
    call    {id, what: "metrics" | "stats", version}  -> reply {id, value}
Engine -> every API process, whenever it changes:
    state   {ready, live, draining, failed, ladder}
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import asdict
from multiprocessing import shared_memory

import msgpack
import numpy as np
import torch

from models.preprocess import DataConfig
from service.dial import Dial
from service.engine.cards import LevelFacts
from service.engine.controller import Decision
from service.errors import ERRORS_BY_STATUS, ServiceError

HEADER = struct.Struct("<I")
# A control message is small; anything this large is a bug or a stranger on the socket.
MAX_FRAME_BYTES = 64 * 2**20


def frame(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict:
    """The next message; asyncio.IncompleteReadError when the peer has gone."""
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if n > MAX_FRAME_BYTES:
        raise ValueError(f"control frame of {n} bytes is over the {MAX_FRAME_BYTES} limit")
    return msgpack.unpackb(await reader.readexactly(n), raw=False)


class Outbox:
    """Frames written to one stream, coalesced: everything queued in one turn of the event loop
    goes out in one write (the replies of a batch, the records of a burst)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._parts: list[bytes] = []

    def send(self, msg: dict) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self._flush)
        self._parts.append(frame(msg))

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self.writer.is_closing():
            self.writer.write(b"".join(parts))

    async def drain(self) -> None:
        """Write what is queued now, and wait until the transport has sent it."""
        self._flush()
        if not self.writer.is_closing():
            await self.writer.drain()


# -- the dial, the model's description, results and errors as msgpack-able values ---------------
def dial_to_wire(dial: Dial) -> list:
    return [dial.density, dial.latency_budget_ms, dial.min_accuracy, dial.top_k, dial.priority]


def dial_from_wire(values: list) -> Dial:
    density, budget, floor, top_k, priority = values
    return Dial(density=density, latency_budget_ms=budget, min_accuracy=floor, top_k=top_k, priority=priority)


def info_to_wire(info) -> dict:
    return asdict(info)  # LevelFacts and DataConfig become plain dicts too


def info_from_wire(doc: dict):
    from service.engine.core import ModelInfo

    dc = doc["data_config"]
    data_config = DataConfig(
        input_size=tuple(dc["input_size"]),
        mean=tuple(dc["mean"]),
        std=tuple(dc["std"]),
        crop_pct=dc["crop_pct"],
        interpolation=dc["interpolation"],
    )
    return ModelInfo(
        name=doc["name"],
        input_size=tuple(doc["input_size"]),
        data_config=data_config,
        num_classes=doc["num_classes"],
        labels=tuple(doc["labels"]),
        levels=tuple(doc["levels"]),
        facts={name: LevelFacts(**f) for name, f in doc["facts"].items()},
        has_card=doc["has_card"],
        ladder=tuple(doc["ladder"]),
        device=doc["device"],
    )


def result_to_wire(request_id: int, result) -> dict:
    """A served request's answer: the decision, per image its timings, and the tensors as bytes."""
    items = result.items
    return {
        "t": "result",
        "id": request_id,
        "decision": [
            result.decision.level,
            result.decision.reason,
            result.decision.predicted_ms,
            result.decision.budget_ms,
        ],
        "queue_s": [it.queue_s for it in items],
        "compute_s": [it.compute_s for it in items],
        "batch_size": [it.batch_size for it in items],
        # Each image's tensors are rows of its batch's output: their bytes, joined (no torch op).
        "probs": b"".join(it.probs.numpy().tobytes() for it in items),
        "topk_values": b"".join(it.topk_values.numpy().tobytes() for it in items),
        "topk_indices": b"".join(it.topk_indices.numpy().tobytes() for it in items),
        "k": int(items[0].topk_indices.numel()),
    }


def result_from_wire(msg: dict, *, arrival_s: float, now_s: float, top_k: int):
    from service.engine.core import RequestResult
    from service.engine.worker import ItemResult

    n, k = len(msg["queue_s"]), msg["k"]
    probs = torch.frombuffer(bytearray(msg["probs"]), dtype=torch.float32).view(n, -1)
    values = torch.frombuffer(bytearray(msg["topk_values"]), dtype=torch.float32).view(n, k)
    indices = torch.frombuffer(bytearray(msg["topk_indices"]), dtype=torch.int64).view(n, k)
    level, reason, predicted_ms, budget_ms = msg["decision"]
    items = [
        ItemResult(
            probs=probs[i],
            topk_values=values[i],
            topk_indices=indices[i],
            queue_s=msg["queue_s"][i],
            compute_s=msg["compute_s"][i],
            batch_size=msg["batch_size"][i],
        )
        for i in range(n)
    ]
    decision = Decision(level=level, reason=reason, predicted_ms=predicted_ms, budget_ms=budget_ms)
    return RequestResult(decision=decision, items=items, total_ms=(now_s - arrival_s) * 1e3, top_k=top_k)


def error_to_wire(request_id: int, exc: ServiceError) -> dict:
    return {
        "t": "error",
        "id": request_id,
        "status": exc.status,
        "message": exc.message,
        "retry_after_s": exc.retry_after_s,
        "level": exc.level,
    }


def error_from_wire(msg: dict) -> ServiceError:
    cls = ERRORS_BY_STATUS.get(msg["status"], ServiceError)
    exc = cls(msg["message"], status=msg["status"], retry_after_s=msg["retry_after_s"])
    exc.level = msg["level"]
    return exc


# -- shared-memory slots ----------------------------------------------------------------------------
class SlotArena:
    """`slots` fixed-size image slots in one shared-memory segment.

    The supervisor creates one arena per API process (`create`), so that a replaced process
    finds its arena again; the API process writes into it and keeps the free list (only its
    event loop touches it: no lock); the engine attaches by name and reads.

    Args:
        shm: the segment.
        slots: number of slots.
        slot_bytes: bytes per slot (one uint8 image).
    """

    def __init__(self, shm: shared_memory.SharedMemory, *, slots: int, slot_bytes: int):
        if shm.size < slots * slot_bytes:
            raise ValueError(f"shared memory {shm.name} holds {shm.size} bytes, fewer than {slots} x {slot_bytes}")
        self.shm = shm
        self.slots = slots
        self.slot_bytes = slot_bytes
        # NumPy, not torch, copies in and out: a torch copy may go to the intra-op thread pool,
        # which on a busy host made one 150 KB copy cost up to 0.8 ms against 20 us here.
        self._view = np.frombuffer(shm.buf, dtype=np.uint8, count=slots * slot_bytes)
        self._free = list(range(slots - 1, -1, -1))

    @classmethod
    def create(cls, name: str, *, slots: int, slot_bytes: int) -> SlotArena:
        return cls(
            shared_memory.SharedMemory(name=name, create=True, size=slots * slot_bytes),
            slots=slots,
            slot_bytes=slot_bytes,
        )

    @classmethod
    def attach(cls, name: str, *, slots: int, slot_bytes: int) -> SlotArena:
        return cls(shared_memory.SharedMemory(name=name), slots=slots, slot_bytes=slot_bytes)

    @property
    def name(self) -> str:
        return self.shm.name

    @property
    def free(self) -> int:
        return len(self._free)

    def put(self, images: list[torch.Tensor]) -> list[int] | None:
        """Copy each uint8 image into a free slot; the slots, or None when too few are free."""
        if len(images) > len(self._free):
            return None
        taken = [self._free.pop() for _ in images]
        for slot, image in zip(taken, images):
            flat = image.reshape(-1)
            if flat.numel() != self.slot_bytes or flat.dtype != torch.uint8:
                self._free.extend(taken)
                raise ValueError(
                    f"an image of {flat.numel()} {flat.dtype} values does not fit a {self.slot_bytes}-byte slot"
                )
            self._view[slot * self.slot_bytes : (slot + 1) * self.slot_bytes] = flat.numpy()
        return taken

    def release(self, slots: list[int]) -> None:
        self._free.extend(slots)

    def read(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A copy of the image in `slot` (the engine's own: the API process may reuse the slot)."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside the arena's {self.slots}")
        return torch.from_numpy(self._view[slot * self.slot_bytes : (slot + 1) * self.slot_bytes].reshape(shape).copy())

    def close(self) -> None:
        del self._view  # the exported buffer must go before the mapping can
        self.shm.close()

    def unlink(self) -> None:
        self.shm.unlink()
