"""Load signals the engine measures for the controller: the recent arrival rate, and how far
measured completion times run over their predictions.

Both are updated and read on the event loop for every request, so both keep running sums
(O(1) per request, no pass over a window).
"""

from __future__ import annotations

import collections

# The completion-time correction (LoadSnapshot.completion_scale) looks at this many recent
# requests, needs at least the minimum before it acts, and never more than doubles a prediction.
COMPLETION_WINDOW = 128
COMPLETION_MIN = 16
COMPLETION_SCALE_MAX = 2.0

# The arrival rate is counted over this many recent seconds: long enough that Poisson noise
# at tens of requests per second stays near 10 %, short enough to follow a step in load.
ARRIVAL_WINDOW_S = 2.0


class CompletionRatio:
    """Measured / predicted completion time over the last served requests, in [1, 2].

    A ratio of sums, so that long waits (where an under-prediction costs a deadline) weigh
    most, and a few tiny predictions off by a large factor do not swing it.
    """

    def __init__(self, window: int = COMPLETION_WINDOW):
        self._done: collections.deque[tuple[float, float]] = collections.deque()
        self._window = window
        self._measured = self._predicted = 0.0

    def add(self, measured_ms: float, predicted_ms: float) -> None:
        self._done.append((measured_ms, predicted_ms))
        self._measured += measured_ms
        self._predicted += predicted_ms
        if len(self._done) > self._window:
            m, p = self._done.popleft()
            self._measured -= m
            self._predicted -= p

    def scale(self) -> float:
        if len(self._done) < COMPLETION_MIN or self._predicted <= 0:
            return 1.0
        return min(max(self._measured / self._predicted, 1.0), COMPLETION_SCALE_MAX)


class ArrivalRate:
    """Images per second that reached the controller over the last `window_s` seconds.

    Every request that gets as far as the controller counts, the ones it then sheds too:
    the offered load, not what was served (which under overload is only the capacity).
    Until one window has passed since the first arrival it divides by the time so far.
    """

    def __init__(self, window_s: float = ARRIVAL_WINDOW_S):
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self._window_s = window_s
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._images = 0
        self._first_s: float | None = None

    def add(self, now_s: float, images: int = 1) -> None:
        if self._first_s is None:
            self._first_s = now_s
        self._arrivals.append((now_s, images))
        self._images += images
        self._expire(now_s)

    def rate(self, now_s: float) -> float:
        self._expire(now_s)
        if self._first_s is None:
            return 0.0
        # A short span after start-up would make a handful of arrivals look like a flood.
        span_s = min(self._window_s, max(now_s - self._first_s, self._window_s / 4))
        return self._images / span_s

    def _expire(self, now_s: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now_s - self._window_s:
            self._images -= self._arrivals.popleft()[1]
