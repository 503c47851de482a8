{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "zeroserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "zeroserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "zeroserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zeroserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "zeroserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "zeroserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zeroserve
{{- end }}

{{- define "zeroserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zeroserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces a namespaced operator watches: the listed ones, or the release's. */}}
{{- define "zeroserve.watchedNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," .Values.watch.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
What Zeroserve needs where ModelServices live: the ModelServices (kopf keeps its progress in their
annotations, hence patch) and their status, the Knative Services it builds (created and changed by
server-side apply, hence patch; deletion is the garbage collector's), and Events. Nothing else.
*/}}
{{- define "zeroserve.rules" }}
rules:
  - apiGroups: [zeroserve.dev]
    resources: [modelservices]
    verbs: [get, list, watch, patch]
  - apiGroups: [zeroserve.dev]
    resources: [modelservices/status]
    verbs: [get, patch]
  - apiGroups: [serving.knative.dev]
    resources: [services]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [""]
    resources: [events]
    verbs: [create]
{{- end }}
