"""Prometheus scrape configs, recording and alerting rules, checked by promtool (Debian's
`prometheus` package), and every metric they name checked against the contract."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from deploy_support import (
    ADAPTER_VALUES,
    DEPLOY,
    METRIC_RE,
    RULES_DIR,
    TARGET_LABELS,
    contract_metrics,
    dashboard_exprs,
    grafana_to_promql,
    promql_sources,
    recorded_names,
    sample_names,
    selectors,
    simulated_pod_scrape_config,
)


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules(promtool):
    result = run(promtool, "check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules(promtool):
    # deploy/prometheus/tests/rules_test.yml: the HPA signal's value, goodput, attainment, and
    # that the burn-rate, shedding and not-ready alerts fire (and stay quiet) when they should.
    result = run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_local_config(promtool):
    result = run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus-local.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_check_kubernetes_config(promtool, tmp_path):
    path = DEPLOY / "prometheus" / "prometheus.yml"
    result = run(promtool, "check", "config", str(path))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check everything else (the
        # relabelling, rule files) with the discovery swapped for an equivalent static target.
        config = simulated_pod_scrape_config(address="10.0.0.7:8000", namespace="ml", pod="p-0")
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        result = run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    # promtool parses every expression of a rule file: wrap each dashboard query in one.
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_used_is_in_the_contract():
    samples = sample_names({name: kind for name, (kind, _) in contract_metrics().items()})
    assert len(samples) > 20, "could not read docs/contract.md's metrics table"
    recorded = recorded_names()
    for source, exprs in promql_sources().items():
        for expr in exprs:
            for name in METRIC_RE.findall(expr):
                if ":" in name:
                    assert name in recorded, f"{source} uses {name}, which no recording rule defines"
                else:
                    assert name in samples, f"{source} uses {name}, which the contract does not list"


def test_every_label_matched_is_in_the_contract():
    metrics = contract_metrics()
    samples = sample_names({name: kind for name, (kind, _) in metrics.items()})
    for source, exprs in promql_sources().items():
        for expr in exprs:
            for name, labels in selectors(expr):
                family_labels = metrics[samples[name]][1]
                unknown = labels - family_labels - TARGET_LABELS
                assert not unknown, f"{source}: {name} has no label {sorted(unknown)}"


def test_adapter_serves_the_hpa_metric_from_a_per_pod_recording_rule():
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    chart_values = yaml.safe_load((Path(DEPLOY.parent) / "helm" / "values.yaml").read_text())
    assert rule["name"]["as"] == chart_values["autoscaling"]["metricName"]
    (series,) = METRIC_RE.findall(rule["seriesQuery"])
    assert series in recorded_names()
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    record = next(
        r
        for g in yaml.safe_load((RULES_DIR / "recording.yml").read_text())["groups"]
        for r in g["rules"]
        if r.get("record") == series
    )
    # Per pod: the adapter maps these two labels to the HPA's pods.
    assert "by (namespace, pod)" in record["expr"]
