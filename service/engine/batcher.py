"""Per-level queues and batch formation, earliest deadline first.

The event loop `put`s admitted images; the worker thread takes batches with `next_batch`.
A batch is formed at the level whose queue holds the earliest deadline, from that queue's
earliest deadlines, up to the max batch size, and no larger than lets its predicted compute
end before the deadlines it delays (late arrivals must not slow an admitted request down).
Growing a batch must not spend the controller's safety margin either: it is there for
prediction error, and a batch filled up to the very deadline turns any slower-than-predicted
batch into late answers. So the bound is each image's `finish_by_s` (deadline less the
margin) while a batch of one could still meet it, else the deadline itself. A batch that is
not full may wait for more images, but at most the max queue delay after its oldest image
arrived, and never past the latest moment its most urgent image can still start
(finish_by - predicted compute). Images
whose deadline has passed, or that could not finish before it even in a batch of one, are
handed back as `expired` (answered 504) and never computed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.engine.controller import LatencyPredictor
from service.errors import Unavailable

# How late a waiting thread may wake up (Condition.wait overshoots by about a millisecond).
_WAKE_GUARD_S = 0.005


@dataclass(eq=False)
class WorkItem:
    """One image waiting for compute.

    Args:
        image: uint8 [3,H,W] on the host.
        level: the level the controller chose.
        deadline_s: absolute deadline on the batcher's clock (time.perf_counter by default).
        enqueued_s: when it entered the queue (set by `put`).
        priority: Triton priority (1 highest, 0 default); breaks ties between equal deadlines.
        on_done: called once from the worker thread with an ItemResult or a ServiceError.
        finish_by_s: when it should be done to keep the controller's safety margin (None: the
            deadline); later arrivals may grow its batch only up to here.
    """

    image: torch.Tensor
    level: str
    deadline_s: float
    on_done: Callable[[object], None]
    priority: int = 0
    enqueued_s: float = 0.0
    finish_by_s: float | None = None
    seq: int = field(default=0)

    def sort_key(self) -> tuple:
        # Priority 0 is "default", which Triton ranks below every explicit priority.
        return (self.deadline_s, self.priority if self.priority > 0 else 1 << 30, self.seq)


@dataclass
class Batch:
    """What the worker gets: images to run at `level`, and images to answer 504."""

    level: str | None
    items: list[WorkItem]
    expired: list[WorkItem]


class Batcher:
    """Thread-safe per-level EDF queues.

    Args:
        levels: level names served.
        max_batch_size: largest batch.
        max_queue_delay_ms: longest wait to fill a batch.
        latency: predicts compute ms per (level, batch size), for the slack bound.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        *,
        levels: tuple[str, ...],
        max_batch_size: int,
        max_queue_delay_ms: float,
        latency: LatencyPredictor | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1e3
        self.latency = latency
        self.clock = clock
        self._queues: dict[str, list[tuple[tuple, WorkItem]]] = {level: [] for level in levels}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False

    # -- event loop side ----------------------------------------------------------------------
    def put(self, items: list[WorkItem]) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("server is shutting down; not accepting new requests")
            now = self.clock()
            for item in items:
                if item.level not in self._queues:
                    raise KeyError(f"no queue for level {item.level!r}")
                item.enqueued_s = now
                item.seq = next(self._seq)
                heapq.heappush(self._queues[item.level], (item.sort_key(), item))
            self._cond.notify()

    def snapshot(self) -> dict[str, int]:
        """Images queued per level."""
        with self._cond:
            return {level: len(q) for level, q in self._queues.items()}

    def close(self) -> None:
        """Refuse new images; queued ones are still handed out, then next_batch returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- worker side ----------------------------------------------------------------------------
    def next_batch(self, timeout_s: float | None = None) -> Batch | None:
        """Block until a batch (or expired images) is ready; None on timeout or when closed and empty."""
        give_up = None if timeout_s is None else self.clock() + timeout_s
        with self._cond:
            while True:
                now = self.clock()
                expired = self._pop_expired(now)
                if expired:
                    return Batch(level=None, items=[], expired=expired)
                level = self._most_urgent_level()
                if level is None:
                    if self._closed:
                        return None
                    wait = None if give_up is None else give_up - now
                    if wait is not None and wait <= 0:
                        return None
                    self._cond.wait(wait)
                    continue
                queue = self._queues[level]
                doomed = self._pop_doomed(level, queue, now)
                if doomed:
                    return Batch(level=None, items=[], expired=doomed)
                fill_until = self._fill_until(level, queue)
                if len(queue) >= self.max_batch_size or now >= fill_until or self._closed:
                    return Batch(level=level, items=self._take(level, queue, now), expired=[])
                wait = fill_until - now
                if give_up is not None:
                    wait = min(wait, max(give_up - now, 0.0))
                    if give_up <= now:
                        return None
                self._cond.wait(wait)

    def _pop_expired(self, now: float) -> list[WorkItem]:
        out = []
        for queue in self._queues.values():
            kept = [(k, it) for k, it in queue if it.deadline_s > now]
            if len(kept) != len(queue):
                out.extend(it for _, it in queue if it.deadline_s <= now)
                heapq.heapify(kept)
                queue[:] = kept
        return out

    def _pop_doomed(self, level: str, queue: list, now: float) -> list[WorkItem]:
        """The queue's most urgent images that cannot finish in time even in a batch of one.

        Computing them would only make them late and, worse, spend the time of the images
        behind them: under overload that turns into a cascade of tiny, late batches. They are
        answered 504 now instead, with no compute spent.
        """
        if self.latency is None:
            return []
        alone_s = self.latency.predict_ms(level, 1) / 1e3
        out = []
        while queue and queue[0][1].deadline_s < now + alone_s:
            out.append(heapq.heappop(queue)[1])
        return out

    def _most_urgent_level(self) -> str | None:
        heads = [(q[0][0], level) for level, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    def _fill_until(self, level: str, queue: list) -> float:
        oldest = min(it.enqueued_s for _, it in queue)
        until = oldest + self.max_queue_delay_s
        if self.latency is not None:
            n = min(len(queue), self.max_batch_size)
            head = queue[0][1]
            # Waiting longer would leave the most urgent image too little time to compute (less
            # a guard for the thread's wake-up delay, so that it does not wake up doomed).
            until = min(until, _finish_by(head) - self.latency.predict_ms(level, n) / 1e3 - _WAKE_GUARD_S)
        return until

    def _finish_limit_s(self, item: WorkItem, level: str, now: float) -> float:
        """When a batch holding `item` must end: its finish_by while a batch of one still makes
        that, else (prediction error has already spent the margin) its deadline."""
        finish_by = _finish_by(item)
        if now + self.latency.predict_ms(level, 1) / 1e3 <= finish_by:
            return finish_by
        return item.deadline_s

    def _take(self, level: str, queue: list, now: float) -> list[WorkItem]:
        """The most urgent images of `level`, as many as fit before the deadlines they delay.

        Images that arrived after a request was admitted must not make its batch (or the
        batch it waits behind) slower than the controller predicted: the batch shrinks until
        its predicted compute ends before its most urgent image's limit (`_finish_limit_s`)
        and leaves the most urgent image of every other queue time for a batch of its own.
        """
        n = min(len(queue), self.max_batch_size)
        if self.latency is not None and n > 1:
            bound = self._finish_limit_s(queue[0][1], level, now)
            for other, q in self._queues.items():
                if other != level and q:
                    alone_s = self.latency.predict_ms(other, 1) / 1e3
                    bound = min(bound, self._finish_limit_s(q[0][1], other, now) - alone_s)
            while n > 1 and now + self.latency.predict_ms(level, n) / 1e3 > bound:
                n -= 1
        return [heapq.heappop(queue)[1] for _ in range(n)]


def _finish_by(item: WorkItem) -> float:
    return item.deadline_s if item.finish_by_s is None else item.finish_by_s
