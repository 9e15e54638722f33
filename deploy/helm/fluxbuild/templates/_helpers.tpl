{{- define "fluxbuild.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fluxbuild.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fluxbuild.labels" -}}
{{ include "fluxbuild.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Triton's --model-repository for the configured source. */}}
{{- define "fluxbuild.modelRepository" -}}
{{- $repo := .Values.modelRepository -}}
{{- if eq $repo.source "pvc" -}}
/models
{{- else if eq $repo.source "s3" -}}
{{- required "modelRepository.s3.uri: the s3:// URI of the repository" $repo.s3.uri -}}
{{- else -}}
{{- fail (printf "modelRepository.source %q: expected pvc or s3" $repo.source) -}}
{{- end -}}
{{- end -}}
