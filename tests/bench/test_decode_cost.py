"""The decode-cost bench."""

from __future__ import annotations

from PIL import Image


def test_decode_cost_reports_decode_and_every_level(tmp_path, capsys):

    from bench.decode_cost import main

    Image.new("RGB", (64, 48), (120, 30, 200)).save(tmp_path / "a.jpg")
    assert (
        main(
            [
                "--model",
                "vit_tiny_test",
                "--images",
                str(tmp_path),
                "--count",
                "1",
                "--batch-size",
                "2",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "CPU ms per photo" in out and "model dense" in out and out.count("CPU ms per image") >= 2


def test_decode_cost_without_images_is_one_line_and_exit_2(tmp_path, capsys):
    from bench.decode_cost import main

    assert main(["--model", "vit_tiny_test", "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
