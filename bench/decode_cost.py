"""CPU time to decode a photo against CPU time to classify it, per image, on this machine.

    python -m bench.decode_cost --images ../shared/assets/imagenet-samples --count 100

Why it matters: a density level shrinks the model's work, not the server's JPEG decoding and
resizing. Both are measured as process CPU time (not wall time), so the figures add up to the
cores a request costs: decode with `service.frontend.decode.decode_image` (timm's eval transform) on
`--count` photos, and the model at every level on a batch of `--batch-size` of those crops.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from models import WeightsError, load_model
from models.machine import cpu_model
from models.preprocess import normalize_uint8
from service.frontend.decode import decode_image


def cpu_ms(fn, repeats: int) -> float:
    """Process CPU milliseconds per call (all threads), after one untimed call."""
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) * 1e3 / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--images", type=Path, default=Path("../shared/assets/imagenet-samples"))
    p.add_argument("--count", type=int, default=100, help="photos to decode")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed batches per level")
    args = p.parse_args(argv)
    files = sorted(f for f in args.images.glob("*") if f.suffix.lower() in (".jpeg", ".jpg", ".png", ".webp"))
    if not files:
        print(f"decode_cost: no images in {args.images}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, None).eval()
    except WeightsError as exc:
        print(f"decode_cost: {exc}", file=sys.stderr)
        return 2
    blobs = [f.read_bytes() for f in files[: args.count]]
    cfg = model.data_config
    start = time.process_time()
    crops = [decode_image(b, cfg, max_pixels=40_000_000) for b in blobs]
    decode_ms = (time.process_time() - start) * 1e3 / len(blobs)
    x = torch.stack([crops[i % len(crops)] for i in range(args.batch_size)])
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, model {args.model}")
    print(
        f"decode + resize + crop: {decode_ms:.1f} CPU ms per photo ({len(blobs)} photos, "
        f"mean {sum(map(len, blobs)) / len(blobs) / 1e3:.0f} kB)"
    )
    with torch.inference_mode():
        xn = normalize_uint8(x, cfg)
        for level in model.levels:
            ms = cpu_ms(lambda lv=level: model(xn, level=lv), args.repeats) / args.batch_size
            print(
                f"model {level:6s}: {ms:6.1f} CPU ms per image (batch {args.batch_size}); "
                f"decode is {decode_ms / ms:.2f}x it"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
