"""bench.train_data: every data path measured on a small pool and evaluation set, into a docs block."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bench.train_data import BEGIN, END, main


def _folder(root, name: str, n: int, header: str):
    rng = np.random.default_rng(len(name))
    folder = root / name
    folder.mkdir()
    rows = [header]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        rows.append(f"{i}.jpg,{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_every_path_is_measured_and_rendered(tmp_path, capsys):
    pool = _folder(tmp_path, "pool", 4, "filename,class_index")
    evals = _folder(tmp_path, "evalset", 3, "filename,class_index")
    docs = tmp_path / "t.md"
    argv = ["--pool", str(pool), "--eval-sets", str(evals), "--images", "4", "--json", str(tmp_path / "d.json")]
    assert main([*argv, "--docs", str(docs)]) == 0
    rows = json.loads((tmp_path / "d.json").read_text())
    paths = [r["path"] for r in rows]
    assert paths[0] == "loader (per process)" and paths[1].startswith("memory: decode once")
    assert any(p.startswith("memory: augment") for p in paths) and paths[-1] == "eval decode: evalset (per thread)"
    assert all(r["images_per_s"] > 0 for r in rows)
    text = docs.read_text()
    assert text.count(BEGIN) == 1 and END in text and "| loader (per process) | 4 |" in text
    assert len(capsys.readouterr().out.strip().splitlines()) == len(rows)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--pool", str(tmp_path / "none"), "--images", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
