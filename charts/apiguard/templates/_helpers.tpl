{{- define "apiguard.name" -}}apiguard{{- end -}}
{{- define "apiguard.fullname" -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "apiguard.labels" -}}
app.kubernetes.io/name: apiguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "apiguard.selectorLabels" -}}
app.kubernetes.io/name: apiguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "apiguard.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "apiguard.exemptNamespaces" -}}
{{- $ns := concat .Values.admission.exemptNamespaces (list .Release.Namespace) | uniq -}}
{{- join "," $ns -}}
{{- end -}}
{{- define "apiguard.servingSecret" -}}{{ include "apiguard.fullname" . }}-webhook-tls{{- end -}}
{{- /* true when the operator issues its own webhook serving certificate and manages the
       caBundle (not cert-manager, not a caBundle given with webhook.url). */ -}}
{{- define "apiguard.managedServingCert" -}}
{{- if and .Values.webhook.enabled (not .Values.certManager.enabled) (not (and .Values.webhook.url .Values.webhook.caBundle)) -}}true{{- end -}}
{{- end -}}
