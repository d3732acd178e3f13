"""Settings: flags over environment over defaults; a bad value is one line naming it."""

from __future__ import annotations

import pytest

from service.settings import SettingsError, load_settings


def test_settings_flags_over_env_over_defaults(monkeypatch):
    monkeypatch.setenv("SAIT_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SAIT_POLICY", "fixed:0.6")
    s = load_settings(["--max-batch-size", "4", "--no-cuda-graphs", "--levels", "dense, l050"])
    assert s.max_batch_size == 4 and s.policy == "fixed:0.6" and s.fixed_density == 0.6
    assert s.cuda_graphs is False and s.level_names == ("dense", "l050") and s.model_name == s.model
    assert load_settings(["--policy", "fixed:dense"]).fixed_density == "dense"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-batch-size", "0"], "SAIT_MAX_BATCH_SIZE (--max-batch-size)"),
        (["--policy", "fastest"], "SAIT_POLICY"),
        (["--policy", "fixed:1.5"], "out of range"),
        (["--device", "tpu"], "SAIT_DEVICE"),
        (["--safety-margin", "1"], "SAIT_SAFETY_MARGIN"),
        (["--levels", "dense,,l050"], "SAIT_LEVELS"),
        (["--port", "http"], "SAIT_PORT"),
        (["--torch-threads", "-1"], "SAIT_TORCH_THREADS"),
        (["--max-header-bytes", "100"], "SAIT_MAX_HEADER_BYTES"),
        (["--header-timeout-s", "0"], "SAIT_HEADER_TIMEOUT_S"),
        (["--max-json-depth", "3"], "SAIT_MAX_JSON_DEPTH"),
        (["--max-connections", "0"], "SAIT_MAX_CONNECTIONS"),
        (["--allowed-hosts", "a b"], "SAIT_ALLOWED_HOSTS"),
        (["--tls-cert-file", "c.pem"], "tls_key_file"),
        (["--port", "9000", "--metrics-port", "9000"], "metrics_port"),
    ],
)
def test_settings_refused_with_one_line(argv, message):
    with pytest.raises(SettingsError) as info:
        load_settings(argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_allowed_hosts_follow_the_bind_address():
    loopback = load_settings([]).host_names  # 127.0.0.1 by default: against DNS rebinding
    assert {"localhost", "127.0.0.1", "[::1]"} <= loopback
    assert load_settings(["--host", "0.0.0.0"]).host_names is None  # a pod: any name
    assert load_settings(["--allowed-hosts", "*"]).host_names is None
    assert load_settings(["--host", "0.0.0.0", "--allowed-hosts", "Sait.Example.com, [::1]"]).host_names == {
        "sait.example.com",
        "[::1]",
    }


def test_compile_is_off_unless_asked(monkeypatch):
    assert load_settings([]).compile is False
    monkeypatch.setenv("SAIT_COMPILE", "true")
    assert load_settings([]).compile is True
    assert load_settings(["--no-compile"]).compile is False
