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

{{/* Cluster-scoped objects carry the namespace too: the same release name may live in several. */}}
{{- define "zeroserve.clusterName" -}}
{{- printf "%s-%s" (include "zeroserve.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
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
Rules needed where ModelServices live, nothing else:
- Zeroserve: the ModelServices and their status, and the Knative Services it builds (created and
  changed by server-side apply, hence create and patch; deletion is the garbage collector's); a list of
  the pods of a ModelService that is not ready, to report a failing runtime (no get, no watch).
- kopf, on Zeroserve's behalf: patch on ModelServices (it keeps its progress in their annotations)
  and create on Events (it posts the operator's Events).
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
  - apiGroups: [""]
    resources: [pods]
    verbs: [list]
{{- end }}
