{{- define "moat.name" -}}moat{{- end -}}

{{- define "moat.fullname" -}}
{{- if contains "moat" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-moat" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "moat.labels" -}}
app.kubernetes.io/name: moat
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "moat.selectorLabels" -}}
app.kubernetes.io/name: moat
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "moat.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "moat.serviceAccountName" -}}moat{{- end -}}

{{- define "moat.outsiderNamespace" -}}
{{ .Values.outsider.namespace | default (printf "%s-outsider" .Release.Namespace) }}
{{- end -}}

{{- define "moat.outsiderSelectorLabels" -}}
app.kubernetes.io/name: moat-outsider
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
