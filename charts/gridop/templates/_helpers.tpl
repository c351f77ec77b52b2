{{- define "gridop.name" -}}gridop{{- end -}}

{{- define "gridop.fullname" -}}
{{- if contains "gridop" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-gridop" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "gridop.labels" -}}
app.kubernetes.io/name: gridop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gridop.selectorLabels" -}}
app.kubernetes.io/name: gridop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "gridop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "gridop.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "gridop.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Rules on namespaced objects: granted cluster-wide or per watched namespace. */}}
{{- define "gridop.namespacedRules" -}}
# What the operator's code does, and nothing more (tests/integration/test_rbac_coverage.py runs
# the operator and checks every request it made against these rules, and these rules against the
# requests). Writes are patches; children go with their owner by garbage collection.
- apiGroups: [gridop.io]
  resources: [gridsessions, taskbatches]
  verbs: [list, watch, patch, delete]  # delete: ttlSecondsAfterStopped / ttlSecondsAfterFinished
- apiGroups: [gridop.io]
  resources: [taskpools]
  verbs: [list, watch, patch]
- apiGroups: [gridop.io]
  resources: [gridsessions/status, taskbatches/status, taskpools/status]
  verbs: [patch]
# Children carry blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement admission
# plugin, setting it needs update on the owner's finalizers.
- apiGroups: [gridop.io]
  resources: [gridsessions/finalizers, taskbatches/finalizers, taskpools/finalizers]
  verbs: [update]
# Batch and pool workers. list/watch feed the controllers' caches (label-selected:
# gridop.io/taskbatch, gridop.io/taskpool).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
# Sessions' children. list/watch feed the operator's caches; they are label-selected
# (gridop.io/session), and ConfigMaps and Secrets are watched as metadata only. get: a pod create
# that finds the name taken reads it once; the namespace's data-plane Secret is read once.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}


{{- define "gridop.redisSecret" -}}{{ .Values.redis.existingSecret | default (printf "%s-redis" (include "gridop.fullname" .)) }}{{- end -}}
{{- define "gridop.redisName" -}}{{ include "gridop.fullname" . }}-redis{{- end -}}

{{- define "gridop.gatewaySelectorLabels" -}}
app.kubernetes.io/name: gridop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "gridop.gatewayName" -}}{{ include "gridop.fullname" . }}-gateway{{- end -}}

{{/* Where the operator tells clients the consoles are: the external URL, else the in-cluster Service. */}}
{{- define "gridop.gatewayUrl" -}}
{{- if .Values.gateway.url -}}{{ .Values.gateway.url }}{{- else if .Values.gateway.enabled -}}ws://{{ include "gridop.gatewayName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.gateway.service.port }}{{- end -}}
{{- end -}}

{{/* The gateway's rights on namespaced objects: granted cluster-wide or per watched namespace. */}}
{{- define "gridop.gatewayNamespacedRules" -}}
- apiGroups: [gridop.io]
  resources: [gridsessions]
  verbs: [get, list, watch, patch]  # patch: the last-active annotation
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Kubernetes 1.35+ authorizes websocket upgrades of attach/exec as `create`. exec only when the
# console is a command (gateway.consoleCommand); otherwise the gateway attaches.
- apiGroups: [""]
  resources: [{{ if .Values.gateway.consoleCommand }}pods/exec{{ else }}pods/attach{{ end }}]
  verbs: [get, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
