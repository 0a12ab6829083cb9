{{/* Chart name, shortened to a DNS label. */}}
{{- define "reports-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-reports-server, or the release name alone when it already contains the chart
name. Kyverno's chart waits on the Service of this name (`<its release>-reports-server`).
*/}}
{{- define "reports-server.fullname" -}}
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

{{- define "reports-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reports-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "reports-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "reports-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reports-server
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "reports-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reports-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reports-server.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* Name of the Secret with the serving certificate (empty in selfSigned mode). */}}
{{- define "reports-server.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" }}
{{- required "tls.existingSecret is required with tls.mode=secret" .Values.tls.existingSecret }}
{{- else if has .Values.tls.mode (list "generate" "certManager") }}
{{- printf "%s-tls" (include "reports-server.fullname" .) }}
{{- end }}
{{- end }}

{{/* The storage type, checked. */}}
{{- define "reports-server.storageType" -}}
{{- $type := .Values.storage.type }}
{{- if not (has $type (list "external" "cloudnativepg" "sqlite")) }}
{{- fail (printf "storage.type must be external, cloudnativepg or sqlite, not %q" $type) }}
{{- end }}
{{- $type }}
{{- end }}

{{- define "reports-server.replicas" -}}
{{- if eq (include "reports-server.storageType" .) "sqlite" }}1{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "reports-server.cnpgClusterName" -}}
{{- printf "%s-db" (include "reports-server.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* One DB_* variable: from the user's Secret when config.db.secretName is set, else a value. */}}
{{- define "reports-server.dbEnv" -}}
- name: {{ .env }}
{{- if .root.Values.config.db.secretName }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.config.db.secretName }}
      key: {{ .key }}
{{- else }}
  value: {{ .value | toString | quote }}
{{- end }}
{{- end }}

{{/* The three APIServices: group, version, and whether to render it. */}}
{{- define "reports-server.apiServices" -}}
{{- $m := .Values.apiServicesManagement.installApiServices }}
- {group: wgpolicyk8s.io, version: v1alpha2, install: true}
- {group: reports.kyverno.io, version: v1, install: {{ $m.installEphemeralReportsService }}}
- {group: openreports.io, version: v1alpha1, install: {{ $m.installOpenreportsService }}}
- {group: query.reports-server.io, version: v1alpha1, install: {{ $m.installQueryService }}}
{{- end }}
