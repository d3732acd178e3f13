"""The Helm chart, rendered by the real Helm engine (helm-python-sdk bundles Helm 4's Go
library), linted by `helm lint`, and every object validated against Kubernetes' schemas."""

from __future__ import annotations

import pytest
from deploy_support import CHART_DIR, NAMESPACE, SCENARIOS, container, find, one

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# Oldest Kubernetes the chart claims (Chart.yaml kubeVersion >= 1.27 is out of support; 1.30
# is the oldest with schemas worth keeping green) and the newest the validator knows.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


# Custom resources: no schema in kubernetes-validate; their fields are checked by the tests.
CUSTOM_KINDS = {"ServiceMonitor"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_validate_against_kubernetes_schemas(render, scenario):
    objects = render(SCENARIOS[scenario])
    assert {"Deployment", "Service", "ConfigMap"} <= {o["kind"] for o in objects}
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            # strict: unknown fields are errors, so a misspelt key cannot pass silently.
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_is_clean(scenario):
    helm = pytest.importorskip("helm_python")
    report = helm.lint(
        CHART_DIR, SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSIONS[-1]
    )
    assert report["errors"] == []
    # Severity 1 is "info" (e.g. "icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_request_a_gpu_and_tolerate_its_taint(render):
    objects = render()
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_off_requests_no_gpu(render):
    objects = render(SCENARIOS["gpu-off"])
    c = container(objects)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "tolerations" not in one(objects, "Deployment")["spec"]["template"]["spec"]
    assert one(objects, "ConfigMap")["data"]["SAIT_DEVICE"] == "cpu"


def test_scheduling_values_reach_the_pod(render):
    pod = one(render(SCENARIOS["scheduling"]), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == SCENARIOS["scheduling"]["nodeSelector"]
    assert pod["affinity"] == SCENARIOS["scheduling"]["affinity"]
    # The user's toleration is added to the GPU taint's, not instead of it.
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "dedicated"]


def test_probes_and_security(render):
    objects = render()
    c = container(objects)
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Model load + CUDA-graph capture: the startup probe allows ten minutes.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert c["ports"][0]["containerPort"] == 8000
    sec = c["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # A read-only root needs writable scratch space for /tmp and the caches under $HOME.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/home/sait", "/models/hf-cache"} <= mounts


def test_termination_grace_covers_prestop_and_drain(render):
    objects = render({"config": {"drain_timeout_s": 45}, "preStopSleepSeconds": 7})
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert one(objects, "ConfigMap")["data"]["SAIT_DRAIN_TIMEOUT_S"] == "45"
    assert pod["terminationGracePeriodSeconds"] == 7 + 45 + 5
    # The service exits within its drain + 2 s whatever clients do (tests/service/frontend/test_server.py):
    # Kubernetes' SIGKILL never comes first.
    assert pod["terminationGracePeriodSeconds"] - 7 > 45 + 2


def test_keys_and_tls_come_from_secrets_and_metrics_from_their_own_port(render):
    objects = render(SCENARIOS["secure"])
    pod = one(objects, "Deployment")["spec"]["template"]
    c = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"] == {
        "secretName": "sait-api-keys",
        "items": [{"key": "api-keys", "path": "api-keys"}],
    }
    assert volumes["tls"]["secret"] == {"secretName": "sait-tls"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["api-keys"]["readOnly"] and mounts["tls"]["readOnly"]
    data = one(objects, "ConfigMap")["data"]
    assert data["SAIT_API_KEYS_FILE"] == mounts["api-keys"]["mountPath"] + "/api-keys"
    assert data["SAIT_TLS_CERT_FILE"] == mounts["tls"]["mountPath"] + "/tls.crt"
    assert data["SAIT_TLS_KEY_FILE"] == mounts["tls"]["mountPath"] + "/tls.key"
    assert data["SAIT_METRICS_PORT"] == "9090" and data["SAIT_OPENAPI"] == "false"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    service = one(objects, "Service")
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"} in service["spec"]["ports"]
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    # helm test reads a key and speaks HTTPS.
    (hook,) = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    script = hook["spec"]["containers"][0]["args"][0]
    assert "https://" in script and "/etc/sait/auth/api-keys" in script
    assert hook["spec"]["volumes"][-1]["secret"]["secretName"] == "sait-api-keys"


def test_keys_or_tls_need_a_metrics_port(chart):
    helm = pytest.importorskip("helm_python")
    for values in (
        {"auth": {"enabled": True, "existingSecret": "k"}},
        {"tls": {"enabled": True, "existingSecret": "t"}},
    ):
        with pytest.raises(helm.HelmRenderError, match="need metrics.port"):
            chart.render(values, name="demo", namespace=NAMESPACE)


def test_defaults_serve_plain_http_without_keys(render):
    objects = render()
    c = container(objects)
    assert "scheme" not in c["readinessProbe"]["httpGet"] and [p["name"] for p in c["ports"]] == ["http"]
    data = one(objects, "ConfigMap")["data"]
    assert not {"SAIT_API_KEYS_FILE", "SAIT_TLS_CERT_FILE", "SAIT_METRICS_PORT"} & set(data)


def test_configmap_renders_numbers_as_the_service_reads_them(render):
    # Helm reads YAML numbers as float64: 20971520 must not become "2.097152e+07".
    data = one(render({"config": {"max_body_bytes": 20971520, "safety_margin": 0.25}}), "ConfigMap")["data"]
    assert data["SAIT_MAX_BODY_BYTES"] == "20971520"
    assert data["SAIT_SAFETY_MARGIN"] == "0.25"
    assert data["SAIT_CUDA_GRAPHS"] == "true"
    assert data["SAIT_HOST"] == "0.0.0.0" and data["SAIT_PORT"] == "8000"


def test_autoscaling_uses_the_per_pod_custom_metric(render):
    objects = render(SCENARIOS["autoscaling"])
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "sait_queue_wait_seconds"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50m"}
    # The HPA owns the replica count.
    assert "replicas" not in one(objects, "Deployment")["spec"]
    assert find(render(), "HorizontalPodAutoscaler") == []


def test_pvc_weights_mount_read_only_and_set_sait_weights(render):
    objects = render(SCENARIOS["pvc-weights"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "sait-weights", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
    assert mount["readOnly"] is True
    data = one(objects, "ConfigMap")["data"]
    assert data["SAIT_WEIGHTS"] == mount["mountPath"] + "/deit/model.safetensors"


def test_hf_cache_claim_and_offline(render):
    objects = render(SCENARIOS["hf-cache-claim"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in pod["volumes"]
    data = one(objects, "ConfigMap")["data"]
    assert data["HF_HUB_OFFLINE"] == "1" and data["HF_HOME"] == "/models/hf-cache"


def test_ingress_routes_to_the_service(render):
    objects = render(SCENARIOS["ingress"])
    ingress = one(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == one(objects, "Service")["metadata"]["name"]
    assert backend["port"]["name"] == one(objects, "Service")["spec"]["ports"][0]["name"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "sait-tls"


def test_service_monitor_selects_the_service(render):
    objects = render(SCENARIOS["service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # Recording rules aggregate by (namespace, pod): both labels must be attached.
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"namespace", "pod"}


def test_pod_annotations_match_the_scrape_config(render):
    annotations = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_pdb_selects_the_pods(render):
    objects = render()
    pdb = one(objects, "PodDisruptionBudget")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_notes_say_how_to_call_the_service(chart):
    notes = chart.render({}, name="demo", namespace=NAMESPACE)["sait-serve/templates/NOTES.txt"]
    assert "port-forward service/demo-sait-serve" in notes
    assert "/v2/health/ready" in notes and "/v1/classify" in notes


WRONG_VALUES = {
    "unknown setting": {"config": {"max_batchsize": 8}},
    "zero batch": {"config": {"max_batch_size": 0}},
    "unknown device": {"config": {"device": "tpu"}},
    "unknown precision": {"config": {"precision": "int4"}},
    "bad policy": {"config": {"policy": "fastest"}},
    "margin >= 1": {"config": {"safety_margin": 1.5}},
    "string for bool": {"gpu": {"enabled": "yes"}},
    "pvc without claim": {"weights": {"source": "pvc", "pvc": {"path": "m.safetensors"}}},
    "pvc pickle file": {"weights": {"source": "pvc", "pvc": {"existingClaim": "w", "path": "m.pkl"}}},
    "unknown weights source": {"weights": {"source": "s3"}},
    "bad quantity": {"autoscaling": {"targetAverageValue": "fast"}},
    "zero max replicas": {"autoscaling": {"maxReplicas": 0}},
    "bad port": {"containerPort": 70000},
    "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "unknown top-level key": {"replicas": 3},
    "bad path type": {"ingress": {"hosts": [{"host": "h", "paths": [{"path": "/", "pathType": "Any"}]}]}},
    "keys without a secret": {"auth": {"enabled": True}, "metrics": {"port": 9090}},
    "tls without a secret": {"tls": {"enabled": True, "existingSecret": ""}, "metrics": {"port": 9090}},
    "metrics port out of range": {"metrics": {"port": 70000}},
    "zero header timeout": {"config": {"header_timeout_s": 0}},
}


@pytest.mark.parametrize("case", sorted(WRONG_VALUES))
def test_schema_rejects_wrong_values(chart, case):
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(WRONG_VALUES[case])
    # `helm install/template` runs the same check before rendering.
    with pytest.raises(helm.HelmValuesError):
        chart.render(WRONG_VALUES[case], name="demo", namespace=NAMESPACE)


def test_schema_accepts_every_scenario(chart):
    for values in SCENARIOS.values():
        chart.validate_schema(values)


def test_min_replicas_above_max_fails_rendering(chart):
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmRenderError, match="minReplicas must not exceed"):
        chart.render({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, name="demo")
