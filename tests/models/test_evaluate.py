"""The evaluation CLI on a few generated images with the tiny random ViT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models import TINY_TEST_MODEL
from models.evaluate import main

pytestmark = pytest.mark.usefixtures("single_thread")

FIELDS = {"name", "reducer", "tokens_per_block", "gflops", "gflops_ratio", "top1", "top5", "agreement", "images_per_s"}


@pytest.fixture()
def eval_set(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "imgs"
    images.mkdir()
    rows = ["filename,class_index,extra"]
    for i, size in enumerate([(300, 240), (240, 320), (256, 256), (500, 375), (100, 80)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"im{i}.jpg")
        rows.append(f"im{i}.jpg,{i * 7},x")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return images, labels


def args(eval_set, tmp_path, *extra):
    images, labels = eval_set
    return [
        "--model",
        TINY_TEST_MODEL,
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--json",
        str(tmp_path / "out.json"),
        "--quiet",
        *extra,
    ]


def test_all_levels_json_table_and_plot(eval_set, tmp_path, tiny_model, capsys):
    png = tmp_path / "out.png"
    assert main(args(eval_set, tmp_path, "--batch-size", "2", "--plot", str(png))) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["model"] == TINY_TEST_MODEL and out["images"] == 5 and out["batch_size"] == 2
    assert [r["name"] for r in out["levels"]] == list(tiny_model.levels)
    for row in out["levels"]:
        assert set(row) >= FIELDS
        assert 0 <= row["top1"] <= row["top5"] <= 100
        assert 0 <= row["agreement"] <= 1 and row["images_per_s"] > 0
        assert row["tokens_per_block"] == list(tiny_model.level(row["name"]).tokens_per_block)
    dense = out["levels"][0]
    assert dense["name"] == "dense" and dense["agreement"] == 1.0 and dense["gflops_ratio"] == 1.0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "l060" in table and "agree" in table


def test_level_subset_and_limit(eval_set, tmp_path):
    assert main(args(eval_set, tmp_path, "--levels", "l050,dense", "--limit", "3")) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in out["levels"]] == ["dense", "l050"] and out["images"] == 3


def test_agreement_counts_without_dense_in_the_list(eval_set, tmp_path):
    assert main(args(eval_set, tmp_path, "--levels", "l090")) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in out["levels"]] == ["l090"] and 0 <= out["levels"][0]["agreement"] <= 1


@pytest.mark.parametrize(
    "change, message",
    [
        (("--levels", "l042"), "unknown level"),
        (("--batch-size", "0"), "--batch-size"),
        (("--limit", "0"), "--limit"),
        (("--weights", "/nonexistent/w.safetensors"), "weights file not found"),
        (("--model", "no_such_model"), "unknown model name"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(eval_set, tmp_path, capsys, change, message):
    argv = args(eval_set, tmp_path)
    if change[0] in argv:
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv += list(change)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "out.json").exists()


def test_missing_inputs(eval_set, tmp_path, capsys):
    images, labels = eval_set
    base = ["--model", TINY_TEST_MODEL, "--json", str(tmp_path / "o.json"), "--quiet"]
    assert main(base + ["--images", str(tmp_path / "none"), "--labels", str(labels)]) == 2
    assert "images folder not found" in capsys.readouterr().err
    assert main(base + ["--images", str(images), "--labels", str(tmp_path / "none.csv")]) == 2
    assert "labels file not found" in capsys.readouterr().err
    (images / "im0.jpg").unlink()
    assert main(base + ["--images", str(images), "--labels", str(labels)]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na.jpg,1\n")
    assert main(base + ["--images", str(images), "--labels", str(bad)]) == 2
    assert "filename,class_index" in capsys.readouterr().err
    assert (
        main(base + ["--images", str(images), "--labels", str(labels), "--json", str(tmp_path / "no" / "o.json")]) == 2
    )
    assert "output folder does not exist" in capsys.readouterr().err


def test_undecodable_image(eval_set, tmp_path, capsys):
    images, _labels = eval_set
    (images / "im1.jpg").write_bytes(b"not a jpeg")
    assert main(args(eval_set, tmp_path)) == 2
    assert "cannot decode image" in capsys.readouterr().err


def test_cuda_without_cuda(eval_set, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(args(eval_set, tmp_path, "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err
