{{- /*
The Lease the Deployment's operator elects on, or "" without leader election: from its args as
the chart renders them.
*/ -}}
{{- define "mqtt-dsp-operator.electionOf" -}}
{{- $args := list }}
{{- range $c := .spec.template.spec.containers }}
{{- if eq (get $c "name") "operator" }}
{{- $args = get $c "args" | default list }}
{{- end }}
{{- end }}
{{- if has "--leader-election=true" $args }}
{{- $lease := "mqtt-dsp-operator" }}
{{- range $args }}
{{- if hasPrefix "--lease-name=" . }}
{{- $lease = trimPrefix "--lease-name=" . }}
{{- end }}
{{- end }}
{{- $lease }}
{{- end }}
{{- end }}

{{- /*
A Lease rename on upgrade must not give two leaders. Replicas electing on the old Lease keep
leading while a new pod (RollingUpdate, maxSurge 1) elects on the new, still free one: two
operators reconcile at once. Likewise when leader election is turned on: the old pod reconciles
without a Lease. So on `helm upgrade` the running Deployment is looked up (`lookup`: the real
API server; `helm template` and other offline renders see nothing and skip this), and a change
of the Lease is refused unless
- the running Deployment is scaled to zero (the two-step: `kubectl scale --replicas=0`, wait
  until its pods are gone, then upgrade; the chart scales it back), or
- leaderElection.allowLeaseRename is set: the Deployment then rolls out with `Recreate`, every
  old pod gone before a new one starts (remove the value afterwards to get rolling updates back).
`helm rollback` renders nothing, so it is not checked: across a rename, scale to zero first.
*/ -}}
{{- define "mqtt-dsp-operator.validateLease" -}}
{{- $le := .Values.leaderElection }}
{{- if and .Release.IsUpgrade $le.enabled (not $le.allowLeaseRename) }}
{{- $live := lookup "apps/v1" "Deployment" .Release.Namespace (include "mqtt-dsp-operator.fullname" .) }}
{{- if $live }}
{{- $was := include "mqtt-dsp-operator.electionOf" $live }}
{{- $now := include "mqtt-dsp-operator.leaseName" . }}
{{- $replicas := max (int64 (($live.spec | default dict).replicas | default 0)) (int64 (($live.status | default dict).replicas | default 0)) }}
{{- if and (ne $was $now) (gt $replicas 0) }}
{{- $change := ternary (printf "leaderElection.leaseName changes from %q to %q" $was $now) (printf "leaderElection turns on (Lease %q)" $now) (ne $was "") }}
{{- fail (printf "%s while Deployment %s/%s runs %d replica(s) on the old one: during the rollout an old pod and a new one would both lead (two operators reconciling the same resources). Either scale it to zero first (kubectl -n %s scale deployment %s --replicas=0, wait until its pods are gone, then run this upgrade again: the chart scales it back), or set leaderElection.allowLeaseRename=true for this upgrade (the Deployment then rolls out with Recreate: every old pod stops before a new one starts; remove it afterwards)" $change .Release.Namespace $live.metadata.name $replicas .Release.Namespace $live.metadata.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
