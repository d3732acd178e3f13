"""`python -m models.make_card`: a card measured on labelled folders, naming its weights file; operator
counts and a speed table per device kind added to a card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models import TINY_TEST_MODEL, load_model
from models.card import LevelCard, card_beside, speed_for
from models.fingerprint import file_sha256
from models.make_card import main
from models.speed import device_kind

pytestmark = pytest.mark.usefixtures("single_thread")


def labelled_folder(root, name: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir()
    rows = ["filename,class_index"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (80 + 8 * i, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i * 11}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture()
def sets(tmp_path):
    return labelled_folder(tmp_path, "set-a", 3, 0), labelled_folder(tmp_path, "set-b", 2, 1)


@pytest.fixture()
def weights(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.timm_model.state_dict().items()}, str(path))
    return path


def test_sets_make_a_card_that_names_its_weights(sets, weights, tiny_model, capsys):
    out = card_beside(weights)
    argv = ["--model", TINY_TEST_MODEL, "--weights", str(weights), "--sets", *map(str, sets)]
    assert main([*argv, "--levels", "dense,l050", "--batch-size", "2", "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert card["weights_sha256"] == file_sha256(weights) and card["weights_source"] == "file"
    assert card["images"] == 5 and set(card["datasets"]) == {"set-a", "set-b"}
    assert [d["images"] for d in card["datasets"].values()] == [3, 2]
    assert all(c.startswith("python -m models.make_card --model vit_tiny_test") for c in card["commands"])
    loaded = LevelCard.load(out)
    assert loaded.weights_sha256 == card["weights_sha256"] and [e.name for e in loaded.levels] == ["dense", "l050"]
    assert loaded.entry("dense").agreement == 1.0
    assert loaded.entry("l050").gflops == pytest.approx(tiny_model.level("l050").gflops, abs=1e-4)
    assert "wrote" in capsys.readouterr().out


def test_runs_of_different_weights_are_not_combined(tmp_path, capsys):
    run = {"model": "m", "device": "cpu", "batch_size": 2, "images": 1, "command": "x", "levels": []}
    paths = []
    for i, sha in enumerate(("a" * 64, "b" * 64)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run | {"dataset": f"d{i}", "weights_sha256": sha}))
    assert main(["--runs", *map(str, paths), "--out", str(tmp_path / "card.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "different weights" in err and "\n" not in err
    assert not (tmp_path / "card.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (("--weights", "/nonexistent/w.safetensors"), "weights file not found"),
        (("--levels", "l042"), "unknown level"),
        (("--out", "/nonexistent/dir/card.json"), "output folder does not exist"),
        (("--sets", "/nonexistent/set"), "images folder not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sets, tmp_path, capsys, change, message):
    values = {"--model": TINY_TEST_MODEL, "--sets": str(sets[0]), "--out": str(tmp_path / "card.json")}
    values[change[0]] = change[1]
    assert main([a for kv in values.items() for a in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


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
    assert "give --sets or --runs, and --out" in capsys.readouterr().err
    assert main(["--add-speed", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
