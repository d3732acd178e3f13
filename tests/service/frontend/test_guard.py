"""Who may call: Host names and API keys (service.frontend.guard); the servers that enforce them
are in test_server.py."""

from __future__ import annotations

import pytest

from service.frontend.guard import Guard, host_name, load_api_keys
from service.frontend.http_metrics import HttpMetrics
from service.settings import SettingsError

KEY = "k-" + "a" * 30


@pytest.mark.parametrize(
    "header,name",
    [
        (b"localhost", "localhost"),
        (b"LocalHost:8000", "localhost"),
        (b"127.0.0.1:1", "127.0.0.1"),
        (b"[::1]:8000", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"sait.example.com.", "sait.example.com"),
        (b" evil.example ", "evil.example"),
    ],
)
def test_host_names(header, name):
    assert host_name(header) == name


def test_api_keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-12\n\n{KEY}\n  {KEY[::-1]}  \n")
    assert len(load_api_keys(str(path))) == 2
    for text, message in [("", "holds no key"), ("# only a comment\n", "holds no key"), ("short\n", "line 1")]:
        path.write_text(text)
        with pytest.raises(SettingsError, match=message) as info:
            load_api_keys(str(path))
        assert "SAIT_API_KEYS_FILE" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="cannot read"):
        load_api_keys(str(tmp_path / "absent"))


def test_bearer_keys_are_checked_against_every_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n{'k-' + 'b' * 30}\n")
    guard = Guard(None, hosts=None, keys=load_api_keys(str(path)), metrics=HttpMetrics())
    assert guard.authorized(f"Bearer {KEY}".encode()) and guard.authorized(f"bearer {'k-' + 'b' * 30}".encode())
    for header in (None, b"", b"Bearer", f"Basic {KEY}".encode(), f"Bearer {KEY}x".encode(), KEY.encode()):
        assert not guard.authorized(header), header


def test_refusals_are_counted_by_reason():
    metrics = HttpMetrics()
    guard = Guard(None, hosts=frozenset({"localhost"}), keys=None, metrics=metrics)
    scope = {"type": "http", "path": "/v2", "headers": [(b"host", b"evil.example")], "client": ("1.2.3.4", 5)}
    assert guard.check(scope).status_code == 400
    assert guard.check({**scope, "headers": [(b"host", b"localhost:8000")]}) is None
    assert guard.check({**scope, "headers": []}) is None  # no Host header: not a browser, not rebinding
    assert metrics.rejections.labels(process="0", reason="host_not_allowed")._value.get() == 1
