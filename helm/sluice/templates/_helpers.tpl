{{/*
Named templates take a context dict: (dict "root" $ "values" <sluice values>). In this chart
<sluice values> is .Values; a chart that depends on this one passes .Values.sluice.
*/}}

{{- define "sluice.version" -}}0.1.0{{- end -}}

{{- define "sluice.name" -}}
{{- default "sluice" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sluice.name" . -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "sluice-%s" (include "sluice.version" .) }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ include "sluice.version" . | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: {{ include "sluice.name" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .values.image.repository (default (include "sluice.version" .) .values.image.tag) -}}
{{- end -}}
