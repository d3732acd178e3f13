"""Image bytes -> uint8 [3,H,W] with timm's eval transform, off the event loop.

Decoding and resizing run in a small thread pool (Pillow releases the GIL while it decodes
and resamples), so the asyncio loop keeps accepting requests. The pixel count is checked
from the header before any pixel is decoded: a small file that claims a huge canvas (a
decompression bomb) is refused without allocating it, and so is a request whose images hold
more pixels in all than SAIT_MAX_REQUEST_PIXELS.

The pool serves the earliest deadline first, not the first come: a request with a short
budget is not stuck behind large images with long ones. An image whose request's deadline
has passed when a thread gets to it is not decoded (invariant 6): the request is shed (429
with Retry-After), as the controller sheds what cannot finish in time.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import io
import itertools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future

import torch
from PIL import Image, UnidentifiedImageError

from models.preprocess import DataConfig, pil_to_uint8
from service.errors import BadRequest, Shed

# Formats a client may send (the image/jpeg, image/png, image/webp). Opening is
# restricted to them, so Pillow never runs a parser for an exotic format on client bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")


def open_image(data: bytes, *, max_pixels: int, setting: str = "SAIT_MAX_IMAGE_PIXELS") -> Image.Image:
    """The image's header, read and checked; no pixel is decoded yet.

    Raises:
        BadRequest: empty, not an image, a malformed header, or more pixels than max_pixels
            (`setting` names the limit in the message).
    """
    if not data:
        raise BadRequest("empty image: the body holds no bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise BadRequest("not an image: expected JPEG, PNG or WebP bytes") from None
    except Image.DecompressionBombError:
        raise BadRequest(f"image dimensions are over the limit of {max_pixels} pixels ({setting})") from None
    except Exception as exc:  # a malformed header can raise many things
        raise BadRequest(f"cannot read image header: {_first_line(exc)}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise BadRequest(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} ({setting})"
        )
    if width < 1 or height < 1:
        raise BadRequest(f"image has no pixels ({width}x{height})")
    return img


def decode_image(
    data: bytes, cfg: DataConfig, *, max_pixels: int, setting: str = "SAIT_MAX_IMAGE_PIXELS"
) -> torch.Tensor:
    """Encoded image -> uint8 [3,H,W] (resize + centre crop as timm evaluates).

    Raises:
        BadRequest: empty, not an image, truncated/corrupt, or more pixels than max_pixels.
    """
    img = open_image(data, max_pixels=max_pixels, setting=setting)
    try:
        img.load()
        return pil_to_uint8(img, cfg)
    except Exception as exc:  # truncated JPEG ("image file is truncated"), bad chunks ...
        raise BadRequest(f"truncated or corrupt {img.format} image: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _check_deadline(deadline_s: float | None, queued_s: float) -> None:
    """Shed (429) an image a thread reaches after its request's deadline: like the controller,
    refuse before any work, with a hint when to retry."""
    now = time.perf_counter()
    if deadline_s is not None and now > deadline_s:
        raise Shed(
            f"cannot meet the budget: the deadline passed before the image was decoded "
            f"({(now - queued_s) * 1e3:.0f} ms waiting for a decoder)",
            retry_after_s=now - queued_s,
        )


class DeadlinePool:
    """Threads that run jobs earliest deadline first (None: after every deadline).

    Args:
        threads: how many.
    """

    def __init__(self, threads: int):
        self._heap: list = []
        self._order = itertools.count()  # FIFO among equal deadlines
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"decode-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, deadline_s: float | None, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            key = math.inf if deadline_s is None else deadline_s
            heapq.heappush(self._heap, (key, next(self._order), fn, future))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap:
                    return
                _, _, fn, future = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():  # the request went away meanwhile
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish."""
        with self._ready:
            self._closed = True
            pending, self._heap = self._heap, []
            self._ready.notify_all()
        for *_, future in pending:
            future.cancel()


class ImageDecoder:
    """A deadline-ordered thread pool that decodes images for the event loop.

    Args:
        cfg: the model's data config (input size, crop_pct, interpolation).
        max_pixels: decompression-bomb guard (SAIT_MAX_IMAGE_PIXELS).
        max_request_pixels: pixels of all the images of one request (SAIT_MAX_REQUEST_PIXELS).
        threads: pool size; default min(4, cores).
    """

    def __init__(
        self, *, cfg: DataConfig, max_pixels: int, max_request_pixels: int | None = None, threads: int | None = None
    ):
        self.cfg = cfg
        self.max_pixels = max_pixels
        self.max_request_pixels = max_request_pixels or max_pixels
        # Pillow refuses at twice its limit by itself; below that, our own check (which names
        # the setting) answers, so Pillow's warning would only be noise in the log.
        Image.MAX_IMAGE_PIXELS = max_pixels
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        self.pool = DeadlinePool(threads or min(4, os.cpu_count() or 1))

    async def decode(self, data: bytes, *, deadline_s: float | None = None) -> torch.Tensor:
        """One image, the whole request (its limit: the smaller of the two pixel limits)."""
        if self.max_request_pixels < self.max_pixels:
            limit, setting = self.max_request_pixels, "SAIT_MAX_REQUEST_PIXELS"
        else:
            limit, setting = self.max_pixels, "SAIT_MAX_IMAGE_PIXELS"
        job = functools.partial(self._decode, data, limit, setting, deadline_s, time.perf_counter())
        return await asyncio.wrap_future(self.pool.submit(deadline_s, job))

    async def decode_many(self, blobs: list[bytes], *, deadline_s: float | None = None) -> list[torch.Tensor]:
        """The images of one request. First every header, in one job: a request over
        SAIT_MAX_REQUEST_PIXELS in all is refused before any pixel is decoded; then the images
        in parallel. Shed when a thread reaches one after `deadline_s` (time.perf_counter),
        BadRequest for a bad one."""
        if len(blobs) == 1:
            return [await self.decode(blobs[0], deadline_s=deadline_s)]
        queued_s = time.perf_counter()
        measure = functools.partial(self._measure, blobs, deadline_s, queued_s)
        await asyncio.wrap_future(self.pool.submit(deadline_s, measure))
        futures = [
            asyncio.wrap_future(
                self.pool.submit(
                    deadline_s,
                    functools.partial(self._decode, b, self.max_pixels, "SAIT_MAX_IMAGE_PIXELS", deadline_s, queued_s),
                )
            )
            for b in blobs
        ]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for f in futures:  # after a failure, the images not yet started are not decoded
                f.cancel()

    # -- on the pool's threads -----------------------------------------------------------------------
    def _decode(self, data: bytes, limit: int, setting: str, deadline_s: float | None, queued_s: float):
        _check_deadline(deadline_s, queued_s)
        return decode_image(data, self.cfg, max_pixels=limit, setting=setting)

    def _measure(self, blobs: list[bytes], deadline_s: float | None, queued_s: float) -> None:
        _check_deadline(deadline_s, queued_s)
        total = sum(math.prod(open_image(b, max_pixels=self.max_pixels).size) for b in blobs)
        if total > self.max_request_pixels:
            raise BadRequest(
                f"the request's {len(blobs)} images hold {total} pixels in all, over the limit of "
                f"{self.max_request_pixels} (SAIT_MAX_REQUEST_PIXELS)"
            )

    def close(self) -> None:
        self.pool.close()
