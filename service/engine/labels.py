"""Class labels: ImageNet-1k names from timm's packaged metadata (no network)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def class_labels(num_classes: int) -> list[str]:
    """Short names ("tench", "goldfish", ...) for 1000 classes; the index as text otherwise."""
    if num_classes == 1000:
        try:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            # "tench, Tinca tinca" -> "tench": the first synonym, as label files usually hold.
            return [info.index_to_description(i).split(",")[0].strip() for i in range(num_classes)]
        except Exception as exc:  # an old timm without ImageNetInfo: indices still work
            log.warning("ImageNet class names unavailable (%s); labels are indices", exc)
    return [str(i) for i in range(num_classes)]
