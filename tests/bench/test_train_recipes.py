"""bench.train_recipes: recipes parsed over TrainConfig, a disjoint held-out split, one run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench.train_recipes import BEGIN, END, main, parse_recipe, split_pool

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def pool(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pool"
    folder.mkdir()
    rows = ["filename,class_index,source"]
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
        rows.append(f"p{i}.jpg,{'' if i % 3 == 0 else i},synthetic")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_recipes_are_typed_overrides_of_the_training_settings():
    name, overrides = parse_recipe("w4:dense_kd_weight=4,dense_ce=false,sparse_target=dense,random_levels=2")
    assert name == "w4"
    assert overrides == {"dense_kd_weight": 4.0, "dense_ce": False, "sparse_target": "dense", "random_levels": 2}
    assert parse_recipe("after:") == ("after", {})
    for bad, message in (("x:nope=1", "not key=value"), (":lr=1", "needs a name"), ("x:dense_ce=maybe", "true or")):
        with pytest.raises(ValueError, match=message):
            parse_recipe(bad)


def test_the_held_out_images_are_never_trained_on(pool):
    train, held = split_pool(pool, train_images=5, heldout=3, seed=1)
    names = {line.split(",")[0] for line in train}
    assert len(names) == 5 and len(held) == 3 and not names & {p.name for p in held}
    with pytest.raises(ValueError, match="fewer than"):
        split_pool(pool, train_images=6, heldout=3, seed=1)


def test_two_recipes_on_the_same_batches_write_table_plot_and_json(pool, tmp_path, capsys):
    docs = tmp_path / "training.md"
    docs.write_text(f"# t\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    argv = ["--model", "vit_tiny_test", "--pool", str(pool), "--steps", "2", "--batch-size", "2", "--heldout", "2"]
    argv += ["--recipe", "a:token_weight=0", "--recipe", "b:dense_kd_weight=3,dense_ce=false"]
    out = [tmp_path / "r.json", tmp_path / "r.png"]
    assert main([*argv, "--json", str(out[0]), "--plot", str(out[1]), "--docs", str(docs)]) == 0
    results = json.loads(out[0].read_text())
    assert [r["recipe"] for r in results] == ["start (no training)", "a", "b"]
    assert results[0]["kl_dense"] < 1e-6 and results[0]["agree_dense"] == 1.0  # the student starts as the teacher
    assert all(len(r["history"]) == 2 for r in results[1:])
    # The same batches and level draws for both recipes: the first step's levels agree.
    assert results[1]["history"][0]["levels"] == results[2]["history"][0]["levels"]
    text = docs.read_text()
    assert "old" not in text and text.endswith("after\n") and "| b | `dense_kd_weight=3,dense_ce=false` |" in text
    assert out[1].read_bytes()[:4] == b"\x89PNG"
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_bad_input_is_one_line(pool, tmp_path, capsys):
    assert main(["--pool", str(tmp_path / "none")]) == 2
    assert "training pool not found" in capsys.readouterr().err
    assert main(["--pool", str(pool), "--recipe", "x:bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
