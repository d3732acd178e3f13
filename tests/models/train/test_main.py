"""`python -m models.train`: bad input is a one-line error with exit status 2."""

from __future__ import annotations

import torch

from models.train.__main__ import main


def test_bad_input_is_one_line_error(pool, tmp_path, capsys):
    assert main(["--model", "vit_tiny_test", "--data-dir", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "training image folder not found" in capsys.readouterr().err
    assert (
        main(
            [
                "--model",
                "vit_tiny_test",
                "--data-dir",
                str(pool),
                "--levels",
                "l033",
                "--no-progress",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "unknown level" in capsys.readouterr().err


def test_cuda_without_cuda_is_one_line_error(pool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        main(
            [
                "--model",
                "vit_tiny_test",
                "--data-dir",
                str(pool),
                "--device",
                "cuda",
                "--no-progress",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "CUDA is not available" in capsys.readouterr().err
