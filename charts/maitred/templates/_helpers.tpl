{{/* The chart name, or nameOverride. */}}
{{- define "maitred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or <release> alone when it contains the chart name; fullnameOverride wins. */}}
{{- define "maitred.fullname" -}}
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

{{/* Name of the Deployment, ClusterRole and bindings: maitred-operator for a release named maitred. */}}
{{- define "maitred.operatorName" -}}
{{- printf "%s-operator" (include "maitred.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "maitred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maitred.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "maitred.peeringName" -}}
{{- default (include "maitred.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "maitred.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Selector labels of the operator pods; component=operator keeps them apart from the pooler pods, which
     carry app.kubernetes.io/name=maitred and component=pooler. */}}
{{- define "maitred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maitred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "maitred.labels" -}}
{{ include "maitred.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: maitred
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole rules of operator/rbac.yaml, read from the chart's copy files/rbac.yaml (a test keeps
     the two identical), as a YAML list. */}}
{{- define "maitred.operatorRules" -}}
{{- $rules := list }}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" (.Files.Get "files/rbac.yaml") -1 }}
{{- $obj := fromYaml $doc }}
{{- if eq (get $obj "kind") "ClusterRole" }}
{{- $rules = $obj.rules }}
{{- end }}
{{- end }}
{{- if not $rules }}
{{- fail "files/rbac.yaml has no ClusterRole with rules: copy operator/rbac.yaml there" }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/* The part of those rules a namespaced operator needs cluster-wide: reading namespaces and
     CustomResourceDefinitions, which kopf uses for discovery, and the webhook's configuration. */}}
{{- define "maitred.clusterScopedRules" -}}
{{- $clusterScoped := list "namespaces" "customresourcedefinitions" "mutatingwebhookconfigurations" }}
{{- $rules := list }}
{{- range $rule := include "maitred.operatorRules" . | fromYamlArray }}
{{- $resources := list }}
{{- range $resource := $rule.resources }}
{{- if has $resource $clusterScoped }}
{{- $resources = append $resources $resource }}
{{- end }}
{{- end }}
{{- if $resources }}
{{- $narrowed := dict "apiGroups" $rule.apiGroups "resources" $resources "verbs" $rule.verbs }}
{{- with $rule.resourceNames }}
{{- $_ := set $narrowed "resourceNames" . }}
{{- end }}
{{- $rules = append $rules $narrowed }}
{{- end }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/* "true" when a Prometheus Operator object is to be made: its `enabled` value (a dict's), or, when that is
     null, whether the cluster serves monitoring.coreos.com/v1. Called with (list $ .Values.<object>). */}}
{{- define "maitred.monitoring" -}}
{{- $root := index . 0 }}
{{- $enabled := (index . 1).enabled }}
{{- if kindIs "invalid" $enabled }}
{{- $root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}
{{- else }}
{{- $enabled }}
{{- end }}
{{- end }}
