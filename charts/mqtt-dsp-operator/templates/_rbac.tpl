{{- /*
What the RBAC is computed from: the rendered configuration (`config`) and the namespace mode.
Lists come back as JSON (include returns a string), so callers `fromJsonArray` them.
*/ -}}

{{- /*
The namespaces a profile section serves: the union over its profiles of allowed.namespaces, the
release namespace (the operator's own, POD_NAMESPACE) for a profile without allowed.namespaces
(docs/configuration.md, Tenancy: absent = the operator's namespace only; a list is taken as
written). ["*"] when a profile serves every namespace. Arguments: (list $ section).
*/ -}}
{{- define "mqtt-dsp-operator.sectionNamespaces" -}}
{{- $root := index . 0 }}
{{- $served := list }}
{{- range $name, $profile := (index ($root.Values.config | default dict) (index . 1)) | default dict }}
{{- $allowed := (get ($profile | default dict) "allowed") | default dict }}
{{- if and (kindIs "map" $allowed) (hasKey $allowed "namespaces") (not (kindIs "invalid" $allowed.namespaces)) }}
{{- $served = concat $served $allowed.namespaces }}
{{- else }}
{{- $served = append $served $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- if has "*" $served }}
{{- list "*" | toJson }}
{{- else }}
{{- $served | uniq | sortAlpha | toJson }}
{{- end }}
{{- end }}

{{- /*
Where the operator may have to write an MqttTransfer's DataAddress Secret: the transfer's
namespace, once its asset passed the allowlists, i.e. a namespace that a connector, a secret
store and a broker profile all serve (every asset needs one of each; an identity provider only
for oauth2, so it does not widen the set). The intersection of those three sections; ["*"]
when all three serve every namespace. With --watch-namespace only that namespace, if served.
*/ -}}
{{- define "mqtt-dsp-operator.transferNamespaces" -}}
{{- $served := list "*" }}
{{- range $section := list "connectors" "secretStores" "brokers" }}
{{- $these := include "mqtt-dsp-operator.sectionNamespaces" (list $ $section) | fromJsonArray }}
{{- if has "*" $served }}
{{- $served = $these }}
{{- else if not (has "*" $these) }}
{{- $both := list }}
{{- range $served }}
{{- if has . $these }}
{{- $both = append $both . }}
{{- end }}
{{- end }}
{{- $served = $both }}
{{- end }}
{{- end }}
{{- $watch := include "mqtt-dsp-operator.watchNamespace" . }}
{{- if $watch }}
{{- if or (has "*" $served) (has $watch $served) }}
{{- list $watch | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- else }}
{{- $served | toJson }}
{{- end }}
{{- end }}

{{- /*
Every secretRef anywhere in `config`, as "namespace/name" (the release namespace when the ref
names none: POD_NAMESPACE is the release namespace), sorted, without duplicates.
*/ -}}
{{- define "mqtt-dsp-operator.secretRefs" -}}
{{- include "mqtt-dsp-operator.secretRefsWalk" (dict "value" .Values.config "namespace" .Release.Namespace) | splitList "\n" | compact | uniq | sortAlpha | toJson }}
{{- end }}

{{- define "mqtt-dsp-operator.secretRefsWalk" -}}
{{- $namespace := .namespace }}
{{- if kindIs "map" .value }}
{{- $ref := get .value "secretRef" }}
{{- if and (kindIs "map" $ref) (get $ref "name") }}
{{- printf "\n%s/%s" (get $ref "namespace" | default $namespace) (get $ref "name") }}
{{- end }}
{{- range $key, $child := .value }}
{{- include "mqtt-dsp-operator.secretRefsWalk" (dict "value" $child "namespace" $namespace) }}
{{- end }}
{{- else if kindIs "slice" .value }}
{{- range $child := .value }}
{{- include "mqtt-dsp-operator.secretRefsWalk" (dict "value" $child "namespace" $namespace) }}
{{- end }}
{{- end }}
{{- end }}

{{- /*
The RBAC values checked against the configuration (only when the chart renders RBAC):
- a configuration serving every namespace needs rbac.clusterWideSecrets (Secret writes
  cluster-wide are never implied);
- rbac.credentialSecretNames must name every secretRef of the release namespace (else the
  operator could not read it), and cannot narrow anything where the operator also writes
  transfer Secrets (there it holds get on every Secret).
*/ -}}
{{- define "mqtt-dsp-operator.validateRbac" -}}
{{- if .Values.rbac.create }}
{{- $transfer := include "mqtt-dsp-operator.transferNamespaces" . | fromJsonArray }}
{{- $watch := include "mqtt-dsp-operator.watchNamespace" . }}
{{- if and (not $watch) (has "*" $transfer) (not .Values.rbac.clusterWideSecrets) }}
{{- fail "config serves every namespace (allowed.namespaces: [\"*\"] on a connector, a secret store and a broker profile), so the operator would write MqttTransfer Secrets in any namespace: list the tenant namespaces in allowed.namespaces instead (the chart then grants Secret writes in those only, one RoleBinding each), or set rbac.clusterWideSecrets=true to grant them cluster-wide on purpose" }}
{{- end }}
{{- with .Values.rbac.credentialSecretNames }}
{{- $names := . }}
{{- $missing := list }}
{{- range $ref := include "mqtt-dsp-operator.secretRefs" $ | fromJsonArray }}
{{- $parts := splitList "/" $ref }}
{{- if and (eq (index $parts 0) $.Release.Namespace) (not (has (index $parts 1) $names)) }}
{{- $missing = append $missing (index $parts 1) }}
{{- end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "rbac.credentialSecretNames %s does not name %s: config has a secretRef to it in the release namespace %s, which the operator could not read; add every secretRef's Secret to the list" (toJson $names) (join ", " $missing) $.Release.Namespace) }}
{{- end }}
{{- if or (has $.Release.Namespace $transfer) (and (not $watch) $.Values.rbac.clusterWideSecrets) }}
{{- fail (printf "rbac.credentialSecretNames narrows the operator's reads in its namespace %s, but the configuration serves MqttTransfers there (a connector, a secret store and a broker profile without allowed.namespaces, or listing it), so the operator must get, create, update and delete every Secret of %s and the list would narrow nothing: give those profiles allowed.namespaces with the tenant namespaces only (keep tenants out of the operator's namespace), or leave rbac.credentialSecretNames empty" $.Release.Namespace $.Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
