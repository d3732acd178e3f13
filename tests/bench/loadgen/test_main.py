"""The CLI's argument checks: bad input exits non-zero with one readable line."""

import pytest

from bench.loadgen.__main__ import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rate", "5", "--url", "http://10.9.8.7:8000"], "refusing non-loopback"),
        (["--profile", "5@"], "bad segment"),
        (["--rate", "5", "--profile", "5@5"], "not both"),
        ([], "say how much load"),
        (["--rate", "5", "--payload", "uint8"], "needs --api v2"),
        (["--rate", "5", "--scenario", "/nonexistent.toml"], "cannot read scenario"),
        (["--rate", "5", "--images", "/nonexistent-dir"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unreachable_server_exits_1(capsys, tmp_path):
    from bench.loadgen.server import free_port

    port = free_port()  # nothing listens there
    code = main(
        [
            "--rate",
            "5",
            "--duration-s",
            "1",
            "--synthetic",
            "--quiet",
            "--out",
            str(tmp_path),
            "--url",
            f"http://127.0.0.1:{port}",
        ]
    )
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err
