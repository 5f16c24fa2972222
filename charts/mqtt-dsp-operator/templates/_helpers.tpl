{{- define "mqtt-dsp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mqtt-dsp-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "mqtt-dsp-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "mqtt-dsp-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mqtt-dsp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mqtt-dsp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mqtt-dsp-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mqtt-dsp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mqtt-dsp-operator
{{- end }}

{{- define "mqtt-dsp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mqtt-dsp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The one namespace watched, or "" for all namespaces. */}}
{{- define "mqtt-dsp-operator.watchNamespace" -}}
{{- if .Values.watchNamespace }}
{{- .Values.watchNamespace }}
{{- else if .Values.singleNamespace }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "mqtt-dsp-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The leader-election Lease: leaderElection.leaseName, default the full name. */}}
{{- define "mqtt-dsp-operator.leaseName" -}}
{{- default (include "mqtt-dsp-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Values the schema cannot refuse on its own (comparisons between values), and the one it does
refuse repeated here with why, for installs that skip schema validation.
*/}}
{{- define "mqtt-dsp-operator.validate" -}}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail (printf "replicaCount %v needs leaderElection.enabled: without it every replica would reconcile the same resources at once" .Values.replicaCount) }}
{{- end }}
{{- if and $le.enabled (ge (int $le.graceSeconds) (int $le.durationSeconds)) }}
{{- fail (printf "leaderElection.graceSeconds (%v) must be less than leaderElection.durationSeconds (%v)" $le.graceSeconds $le.durationSeconds) }}
{{- end }}
{{- end }}
