{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "sait-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sait-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sait-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sait-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sait-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sait-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sait-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sait-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pod termination: preStop sleep, then the service's own drain, then 5 s to exit. */}}
{{- define "sait-serve.terminationGracePeriodSeconds" -}}
{{- add .Values.preStopSleepSeconds (int .Values.config.drain_timeout_s) 5 }}
{{- end }}

{{/*
A value as the service's environment expects it. Helm reads YAML numbers as float64, so
20971520 would print as 2.097152e+07; whole numbers print as integers instead.
*/}}
{{- define "sait-serve.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* The port Prometheus scrapes: the metrics port when there is one, else the service port. */}}
{{- define "sait-serve.metricsPort" -}}
{{- .Values.metrics.port | default .Values.containerPort }}
{{- end }}

{{/*
Keys and TLS guard the service port; Prometheus scrapes plain HTTP without a key, so both need
the metrics port.
*/}}
{{- define "sait-serve.checkSecurity" -}}
{{- if and (or .Values.auth.enabled .Values.tls.enabled) (not .Values.metrics.port) }}
{{- fail "auth.enabled and tls.enabled need metrics.port (e.g. 9090): Prometheus scrapes /metrics over plain HTTP without a key" }}
{{- end }}
{{- end }}
