"""models.make_card: operator counts and a speed table per device kind, added to a card."""

from __future__ import annotations

import json

import torch

from models import load_model
from models.card import LevelCard, speed_for
from models.make_card import main
from models.speed import device_kind

TINY = "vit_tiny_test"


def _run(dataset: str, images: int) -> dict:
    model = load_model(TINY, pretrained=False)
    rows = [
        {**lv.as_dict(), "top1": 80.0 - 3 * i, "top5": 95.0, "agreement": 1.0 - 0.02 * i, "images_per_s": 10.0 + i}
        for i, lv in enumerate(model.levels.values())
    ]
    return {
        "model": TINY,
        "dataset": dataset,
        "images": images,
        "device": "cpu",
        "batch_size": 2,
        "command": f"python -m models.evaluate ... {dataset}",
        "levels": rows,
    }


def test_card_gets_operator_counts_and_this_devices_speed(tmp_path):
    runs = []
    for name, n in (("a", 3), ("b", 5)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_run(name, n)))
        runs.append(str(path))
    out, docs = tmp_path / "card.json", tmp_path / "card.md"
    speed_flags = ["--device", "cpu", "--speed-batch-sizes", "1,2", "--speed-min-time-s", "0", "--speed-rounds", "1"]
    assert main(["--runs", *runs, "--out", str(out), "--speed", *speed_flags]) == 0
    card = json.loads(out.read_text())
    ops = {row["name"]: row["ops"] for row in card["levels"]}
    assert all(isinstance(v, int) and v > 0 for v in ops.values()) and max(ops.values()) > ops["dense"]
    kind = device_kind(torch.device("cpu"))
    table = card["speed"][kind]
    assert table["precision"] == "fp32" and "models.make_card" in table["command"]
    assert set(table["images_per_s"]) == set(ops) and all(set(r) == {"1", "2"} for r in table["images_per_s"].values())
    speed = speed_for(LevelCard.from_dict(card), kind)
    assert speed.speedup("dense", 2) == 1.0
    # A second device's table is added to the same card; --docs renders both sections.
    card["speed"]["cuda:Other GPU"] = dict(table, precision="bf16")
    out.write_text(json.dumps(card))
    assert main(["--add-speed", str(out), *speed_flags, "--docs", str(docs)]) == 0
    again = json.loads(out.read_text())
    assert set(again["speed"]) == {kind, "cuda:Other GPU"} and again["levels"] == card["levels"]
    text = docs.read_text()
    assert f"Speed on `{kind}`" in text and "Speed on `cuda:Other GPU`" in text and "Offered there" in text


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.json")]) == 2
    assert "give --runs and --out" in capsys.readouterr().err
    assert main(["--add-speed", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
