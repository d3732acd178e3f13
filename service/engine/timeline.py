"""The last few minutes of traffic, one sample per second: what the page's live charts draw.

The engine sees every arrival (in `infer`, before the controller) and every outcome (in
`request_finished`), so it keeps this ring; the front end serves it as JSON (`GET /v1/live`).
It is not a metrics system: Prometheus keeps the history, this keeps only `window_s` seconds
in a fixed-size ring so that a browser can draw them without one.

A sample is one wall-clock second (so a browser can label its axis) with what happened in
it: requests and images that reached the controller, requests served per level, deadlines
met and missed, requests shed, expired, refused as bad or failed, and the deepest queue seen.
Seconds without traffic are present as zeros (an idle spell must show as one on a chart).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Five minutes: "the last few minutes" of the page; at about 150 bytes a sample the whole
# ring is some 45 kB of JSON, and the page asks only for the seconds it has not seen.
WINDOW_S = 300

# request_finished's outcomes (service.engine.metrics.OUTCOMES) other than ok, each a counter.
_REFUSALS = ("shed", "expired", "bad_request", "error")


@dataclass
class Sample:
    """What happened in one wall-clock second `t_s` (epoch seconds)."""

    t_s: int
    arrived: int = 0
    arrived_images: int = 0
    served: dict[str, int] = field(default_factory=dict)
    met: int = 0
    missed: int = 0
    shed: int = 0
    expired: int = 0
    bad_request: int = 0
    error: int = 0
    queue_max: int = 0

    def as_dict(self) -> dict:
        return {
            "t_s": self.t_s,
            "arrived": self.arrived,
            "arrived_images": self.arrived_images,
            "served": dict(self.served),
            "met": self.met,
            "missed": self.missed,
            "shed": self.shed,
            "expired": self.expired,
            "bad_request": self.bad_request,
            "error": self.error,
            "queue_max": self.queue_max,
        }


class Timeline:
    """A fixed-size ring of per-second samples, fed by the engine's hooks.

    Args:
        window_s: how many seconds it keeps (the ring's size).
        clock: wall-clock seconds (time.time; a fake one in tests).

    The hooks run on the event loop and the reader on it too, but a lock keeps it correct
    wherever the engine calls them from (it may run in its own process with other threads).
    """

    def __init__(self, window_s: int = WINDOW_S, clock: Callable[[], float] = time.time):
        if window_s < 1:
            raise ValueError("window_s must be >= 1")
        self._clock = clock
        self._ring: collections.deque[Sample] = collections.deque(maxlen=window_s)
        self._lock = threading.Lock()

    # -- the engine's hooks ---------------------------------------------------------------------------
    def arrival(self, images: int, *, queued: int) -> None:
        """A request of `images` reached the controller while `queued` images were waiting."""
        with self._lock:
            now = self._current()
            now.arrived += 1
            now.arrived_images += images
            now.queue_max = max(now.queue_max, queued)

    def finished(self, *, level: str | None, outcome: str, deadline_met: bool | None) -> None:
        """A request was answered (request_finished's arguments)."""
        with self._lock:
            now = self._current()
            if outcome == "ok" and level is not None:
                now.served[level] = now.served.get(level, 0) + 1
            elif outcome in _REFUSALS:
                setattr(now, outcome, getattr(now, outcome) + 1)
            if deadline_met is True:
                now.met += 1
            elif deadline_met is False:
                now.missed += 1

    # -- the reader -----------------------------------------------------------------------------------
    def samples(self, since_s: float | None = None, *, queued: int = 0) -> list[dict]:
        """The samples from second `since_s` on (all kept when None), oldest first.

        `queued` is the queue depth now: it counts into the current second, so that a queue
        draining without arrivals still shows on the chart. The last sample is the current,
        still growing second; a reader polling with `since_s` = its `t_s` gets it again, complete.
        """
        with self._lock:
            now = self._current()
            now.queue_max = max(now.queue_max, queued)
            return [s.as_dict() for s in self._ring if since_s is None or s.t_s >= since_s]

    def _current(self) -> Sample:
        """The sample of this second, after appending empty ones for the seconds that passed."""
        second = int(self._clock())
        ring = self._ring
        if not ring:
            ring.append(Sample(second))
            return ring[-1]
        last = ring[-1].t_s
        if second <= last:  # the same second, or the wall clock stepped back: count it in the last one
            return ring[-1]
        # After a gap longer than the ring, only the last window's seconds can be kept anyway.
        for t in range(max(last + 1, second - ring.maxlen + 1), second + 1):
            ring.append(Sample(t))
        return ring[-1]
