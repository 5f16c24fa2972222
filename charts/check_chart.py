"""The Helm chart's checks; charts/check.sh runs this in its venv.

Helm is helm-python-sdk's libhelm_c (Helm v4's Go SDK behind a C ABI, loaded with ctypes): the
package ships no `helm` binary, so `helm lint` and `helm template` are its `lint()` and
`Chart.render()`, both offline. Every rendered object is validated by kubernetes-validate
against the chart's oldest supported Kubernetes and the newest the package knows.
"""

from __future__ import annotations

import copy
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "mqtt-dsp-operator"
RELEASE = NAMESPACE = "mqtt-dsp-operator"  # as in deploy/rbac.yaml, so the two compare as they are
# Chart.yaml's kubeVersion floor and the newest Kubernetes kubernetes-validate has schemas of.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Kinds Kubernetes itself does not define, so kubernetes-validate has no schema for them; each
# is checked by hand below instead.
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# deploy/rbac.yaml's Role for the leader-election Lease, and the chart's with the default names.
LEASE_ROLE = f"{RELEASE}-leader-election"
# The ClusterRole (a Role in watch-namespace mode) of the MqttTransfers' DataAddress Secrets, bound
# only in the namespaces the configuration serves; and the credentials Role.
TRANSFER_SECRETS = f"{RELEASE}-transfer-secrets"
CREDENTIALS = f"{RELEASE}-credentials"
# The chart's default configuration (examples/operator-config.yaml without its `allowed` blocks:
# every profile serves the release namespace only) and the example itself (every namespace).
DEFAULT_CONFIG = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
EXAMPLE_CONFIG = yaml.safe_load((ROOT / "examples" / "operator-config.yaml").read_text())
# The Secrets the default configuration's secretRefs name (all in the release namespace).
DEFAULT_CREDENTIALS = ["edc-management-api", "keycloak-operator-client", "mosquitto-admin", "rabbitmq-admin"]


def tenants_config(namespaces: list[str]) -> dict:
    """The default configuration with every profile serving `namespaces` (not the release namespace)."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    for section, profiles in config.items():
        if section == "refresh":
            continue
        for profile in profiles.values():
            profile["allowed"] = {"namespaces": list(namespaces)}
            if section == "brokers":
                profile["allowed"]["topicPrefixes"] = ["tenants/{namespace}/#"]
    return config


# Values that switch on everything that is off by default.
EVERYTHING = {
    "singleNamespace": True,
    "image": {"digest": "sha256:" + "0" * 64},
    "rbac": {"aggregateToDefaultRoles": True},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "egress": [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 8883, "protocol": "TCP"}]}],
    },
    "podDisruptionBudget": {"enabled": True},
    "operator": {"logFormat": "text", "resyncSeconds": 120, "cleanupAttempts": 5, "cleanupRetrySeconds": 10,
                 "maxConcurrentReconciles": 8},
    "extraEnv": [{"name": "EDC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "edc", "key": "api-key"}}}],
    "extraVolumes": [{"name": "ca", "secret": {"secretName": "backend-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/backends", "readOnly": True}],
    "refresh": {"tlsSecretName": "refresh-tls", "ingress": {"enabled": True, "className": "nginx",
                "tls": [{"hosts": ["mqtt-dsp.example.com"], "secretName": "refresh-public-tls"}]}},
}
EVERYTHING["networkPolicy"]["refreshFrom"] = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]
# Another namespace watched, no CRDs, no aggregated roles, an existing ServiceAccount.
OTHER_NAMESPACE = {
    "watchNamespace": "dataspace",
    "crds": {"install": False},
    "rbac": {"aggregateToDefaultRoles": False},
    "serviceAccount": {"create": False, "name": "operator"},
}
# The same, with the profiles serving that namespace: the transfer Secrets there.
OTHER_NAMESPACE_SERVED = dict(OTHER_NAMESPACE, config=tenants_config(["dataspace"]))
# Two tenant namespaces, the release namespace serving none: transfer Secrets in those two only,
# credentials narrowed to a list (one more name than the secretRefs).
TENANTS = {
    "config": tenants_config(["team-a", "team-b"]),
    "rbac": {"credentialSecretNames": DEFAULT_CREDENTIALS + ["backend-ca"]},
}
# The example configuration (every profile serves every namespace): Secret writes cluster-wide,
# on purpose.
CLUSTER_WIDE = {"config": EXAMPLE_CONFIG, "rbac": {"clusterWideSecrets": True}}
# A Lease rename allowed: the rollout recreates the pods.
LEASE_RENAME = {"replicaCount": 2, "leaderElection": {"leaseName": "renamed", "allowLeaseRename": True}}
# Several replicas with leader election, another Lease, spans exported.
REPLICAS = {
    "replicaCount": 2,
    "leaderElection": {"leaseName": "dsp-operator-leader", "durationSeconds": 20, "graceSeconds": 4},
    "otlp": {"endpoint": "http://otel-collector.observability:4318"},
}
# One replica without leader election (the only way to run without it).
NO_LEADER_ELECTION = {"leaderElection": {"enabled": False}}
# Values the schema must refuse, with why.
REFUSED = {
    "two replicas without leader election": {"replicaCount": 2, "leaderElection": {"enabled": False}},
    "no replica": {"replicaCount": 0},
    "a concurrency bound above u16": {"operator": {"maxConcurrentReconciles": 70000}},
    "a Lease name that is no DNS subdomain": {"leaderElection": {"leaseName": "Leader_Lease"}},
    "a Lease duration under 2 s": {"leaderElection": {"durationSeconds": 1}},
    "credentials in the OTLP endpoint": {"otlp": {"endpoint": "https://user:s3cr3t@otel.example.com:4318"}},
    "an OTLP endpoint that is no http(s) URL": {"otlp": {"endpoint": "otel-collector:4317"}},
    "a PDB with both minAvailable and maxUnavailable": {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
    "a credential written as a value": {"config": {"connectors": {"other": {"apiKey": "s3cr3t"}}}},
    "a credential with two sources": {"config": {"brokers": {"b": {"adminPassword": {"env": "A", "file": "/f"}}}}},
    "a namespace that is no DNS label": {"watchNamespace": "Data_Space"},
    "an unknown value (a typo)": {"replicas": 1},
    "privilege escalation": {"securityContext": {"allowPrivilegeEscalation": True}},
}
# Values only the templates can refuse (the schema cannot compare two values), or refuse again
# for installs that skip schema validation: rendered from a copy of the chart without its
# schema, each must fail with a message naming the values.
TEMPLATE_REFUSED = {
    "two replicas without leader election": (
        {"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount 2 needs leaderElection.enabled"),
    "a Lease grace not under its duration": (
        {"leaderElection": {"durationSeconds": 10, "graceSeconds": 10}},
        "leaderElection.graceSeconds (10) must be less than leaderElection.durationSeconds (10)"),
    "Secret writes in every namespace without rbac.clusterWideSecrets": (
        {"config": EXAMPLE_CONFIG}, "config serves every namespace"),
    "credentialSecretNames without a secretRef's Secret": (
        {"config": tenants_config(["team-a"]), "rbac": {"credentialSecretNames": ["edc-management-api"]}},
        "rbac.credentialSecretNames [\"edc-management-api\"] does not name keycloak-operator-client, mosquitto-admin, rabbitmq-admin"),
    "credentialSecretNames where the operator also writes transfer Secrets": (
        {"rbac": {"credentialSecretNames": DEFAULT_CREDENTIALS}}, "the list would narrow nothing"),
}

passed = 0
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [d for name, text in sorted(rendered.items()) if not name.endswith("NOTES.txt") for d in docs_of(text)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name or ''}, rendered {len(found)}")
    return found[0]


def rules(obj: dict) -> list[tuple]:
    """A role's rules, order-insensitive, for comparing."""
    return sorted(
        (tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])),
         tuple(sorted(r.get("resourceNames", []))))
        for r in obj["rules"]
    )


def check_sources() -> None:
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    check(chart["appVersion"] == workspace, f"Chart.yaml appVersion {chart['appVersion']} != crate version {workspace}")

    ours = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    check(ours == copies, f"charts/mqtt-dsp-operator/files/crds/ holds {copies}, crds/ holds {ours}")
    for name in ours:
        same = (CHART / "files" / "crds" / name).exists() and (
            (ROOT / "crds" / name).read_bytes() == (CHART / "files" / "crds" / name).read_bytes())
        check(same, f"files/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/mqtt-dsp-operator/files/crds/")

    # deploy/rbac.yaml: every role bound to the operator's account, and the Lease it names is the
    # operator's default --lease-name.
    reference = docs_of((ROOT / "deploy" / "rbac.yaml").read_text())
    account = {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    for role in (o for o in reference if o["kind"] in ("Role", "ClusterRole")):
        if role["metadata"]["name"] == TRANSFER_SECRETS:
            # Bound by the administrator per served namespace, never here.
            check(not [b for b in reference if b["kind"].endswith("Binding") and b["roleRef"]["name"] == TRANSFER_SECRETS],
                  "deploy/rbac.yaml binds the transfer Secrets ClusterRole: it must only be bound per served namespace")
            continue
        bound = [b for b in reference if b["kind"] == role["kind"] + "Binding"
                 and b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"], "name": role["metadata"]["name"]}
                 and b["subjects"] == [account] and b["metadata"].get("namespace") == role["metadata"].get("namespace")]
        check(len(bound) == 1, f"deploy/rbac.yaml: {role['kind']} {role['metadata']['name']} is not bound to the operator's account")
    main_rs = (ROOT / "operator" / "src" / "main.rs").read_text()
    default = re.search(r'env = "MQTT_DSP_OPERATOR_LEASE_NAME", default_value = "([^"]+)"', main_rs)
    check(default is not None, "operator/src/main.rs: the default of --lease-name not found")
    named = [r["resourceNames"] for r in one(reference, "Role", LEASE_ROLE)["rules"] if r.get("resourceNames")]
    check(default is not None and named == [[default.group(1)]],
          f"deploy/rbac.yaml: the Lease Role names {named}, the operator's default Lease is {default and default.group(1)}")

    # deploy/rbac.yaml's credentials Role names the example's secretRefs.
    named = [r.get("resourceNames") for r in one(reference, "Role", CREDENTIALS)["rules"]]
    check(named == [DEFAULT_CREDENTIALS],
          f"deploy/rbac.yaml: the credentials Role names {named}, examples/operator-config.yaml's secretRefs are {DEFAULT_CREDENTIALS}")

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    example = yaml.safe_load((ROOT / "examples" / "operator-config.yaml").read_text())
    # The example opens every profile to every namespace (`allowed`); the chart's defaults leave
    # `allowed` out, so a fresh install serves its own namespace only (docs/configuration.md).
    for key, section in example.items():
        if key == "refresh":
            continue
        for profile in section.values():
            profile.pop("allowed", None)
    check(values["config"] == example,
          "values.yaml `config` differs from examples/operator-config.yaml (without its `allowed` blocks)")


def check_lint(label: str, values: dict) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSIONS[-1])
    # Severity 1 is information ("icon is recommended"); warnings count as errors (strict).
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    check(not problems, f"helm lint ({label}): {problems}")


def check_valid(label: str, objs: list[dict]) -> None:
    for obj in objs:
        ident = f"{label}: {obj['kind']} {obj['metadata'].get('name')}"
        if (obj["apiVersion"], obj["kind"]) in FOREIGN_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                check(True, ident)
            except kubernetes_validate.SchemaNotFoundError:
                check(False, f"{ident}: Kubernetes {version} has no such kind (add it to FOREIGN_KINDS only if it is a CRD's)")
            except kubernetes_validate.ValidationError as e:
                check(False, f"{ident}: invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def check_rbac(label: str, objs: list[dict], operator_kind: str, lease: str | None,
               secrets_in: list[str] | str, credentials: list[str] | None) -> None:
    """The rendered RBAC against deploy/rbac.yaml; `lease`: the Lease the Deployment elects on;
    `secrets_in`: the namespaces where the transfer Secrets are granted ("*": cluster-wide);
    `credentials`: the Secrets the credentials Role names in the release namespace (None: no Role)."""
    reference = docs_of((ROOT / "deploy" / "rbac.yaml").read_text())
    operator = one(objs, operator_kind, RELEASE)
    check(rules(operator) == rules(one(reference, "ClusterRole", RELEASE)), f"{label}: operator rules differ from deploy/rbac.yaml")
    account = one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    subjects = [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]

    # Secrets only in the transfer Secrets and the credentials roles.
    for role in (o for o in objs if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            if "" in rule.get("apiGroups", []) and {"secrets", "*"} & set(rule["resources"]):
                check(role["metadata"]["name"] in (TRANSFER_SECRETS, CREDENTIALS),
                      f"{label}: {role['kind']} {role['metadata']['name']} grants Secrets")

    # The transfer Secrets: the rules of deploy/rbac.yaml, bound exactly where served.
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole") and o["metadata"]["name"] == TRANSFER_SECRETS]
    bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and o["metadata"]["name"] == TRANSFER_SECRETS]
    if not secrets_in:
        check(not roles and not bindings, f"{label}: transfer Secrets granted although no namespace is served")
    else:
        check(len(roles) == 1 and rules(roles[0]) == rules(one(reference, "ClusterRole", TRANSFER_SECRETS)),
              f"{label}: transfer Secrets rules differ from deploy/rbac.yaml")
        cluster_wide = [b for b in bindings if b["kind"] == "ClusterRoleBinding"]
        where = "*" if cluster_wide else sorted(b["metadata"]["namespace"] for b in bindings)
        check(where == (secrets_in if secrets_in == "*" else sorted(secrets_in)),
              f"{label}: transfer Secrets granted in {where}, the configuration serves {secrets_in}")
        check(not (cluster_wide and len(bindings) > 1), f"{label}: transfer Secrets bound cluster-wide and per namespace")
        for b in bindings:
            check(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": roles[0]["kind"], "name": TRANSFER_SECRETS}
                  and b["subjects"] == subjects, f"{label}: {b['kind']} {TRANSFER_SECRETS} does not bind its role to the operator")

    # The credentials: get by name in the release namespace.
    creds = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == CREDENTIALS]
    if credentials is None:
        check(not creds, f"{label}: a credentials Role without secretRefs")
    else:
        role = one(objs, "Role", CREDENTIALS)
        check(role["metadata"]["namespace"] == NAMESPACE, f"{label}: credentials Role outside the release namespace")
        plain = [dict(r, resourceNames=[]) for r in role["rules"]]
        reference_plain = [dict(r, resourceNames=[]) for r in one(reference, "Role", CREDENTIALS)["rules"]]
        check(rules({"rules": plain}) == rules({"rules": reference_plain}), f"{label}: credentials rules differ from deploy/rbac.yaml")
        named = [r.get("resourceNames") for r in role["rules"]]
        check(named == [credentials], f"{label}: the credentials Role names {named}, expected {credentials}")
        binding = one(objs, "RoleBinding", CREDENTIALS)
        check(binding["metadata"]["namespace"] == NAMESPACE and binding["subjects"] == subjects
              and binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CREDENTIALS},
              f"{label}: the credentials RoleBinding does not bind the Role to the operator's account")

    leader = [o for o in objs if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"] == LEASE_ROLE]
    lease_rules = [r for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]
                   if "coordination.k8s.io" in r.get("apiGroups", [])]
    if lease is None:
        check(not leader and not lease_rules, f"{label}: a Lease Role rendered without leader election")
    else:
        role, binding = one(objs, "Role", LEASE_ROLE), one(objs, "RoleBinding", LEASE_ROLE)
        # The Lease is in the pod's namespace (POD_NAMESPACE, --lease-namespace is not passed).
        check(role["metadata"]["namespace"] == NAMESPACE == binding["metadata"]["namespace"],
              f"{label}: the Lease Role is not in the release namespace")
        named = [r["resourceNames"] for r in role["rules"] if r.get("resourceNames")]
        check(named == [[lease]], f"{label}: the Lease Role names {named}, the operator elects on {lease}")
        # deploy/rbac.yaml names the default Lease; the rules must be the same otherwise.
        renamed = [dict(r, resourceNames=[RELEASE]) if r.get("resourceNames") else r for r in role["rules"]]
        check(rules({"rules": renamed}) == rules(one(reference, "Role", LEASE_ROLE)),
              f"{label}: Lease rules differ from deploy/rbac.yaml")
        check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
              and binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
              f"{label}: the Lease RoleBinding does not bind the Lease Role to the operator's account")
        check(len(lease_rules) == len(role["rules"]), f"{label}: Lease rules outside the Lease Role")
    for role in (o for o in objs if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            # The API server authorizes a create before the name is known: resourceNames never matches.
            check(not ("create" in rule["verbs"] and rule.get("resourceNames")),
                  f"{label}: {role['kind']} {role['metadata']['name']}: create with resourceNames always fails")
            secrets = "" in rule.get("apiGroups", []) and ({"secrets", "*"} & set(rule["resources"]))
            check(not (secrets and {"list", "watch", "*"} & set(rule["verbs"])),
                  f"{label}: {role['kind']} {role['metadata']['name']} lists or watches Secrets")
            check("customresourcedefinitions" not in rule["resources"], f"{label}: a rule on CRDs")
            check("*" not in rule["verbs"] and "*" not in rule["resources"], f"{label}: a wildcard rule")


def operator_flags() -> set[str] | None:
    """The flags `mqtt-dsp-operator run` accepts, from its --help (None: binary not built)."""
    binary = pathlib.Path(os.environ.get("OPERATOR_BIN", ROOT / "target" / "debug" / "mqtt-dsp-operator"))
    if not binary.is_file():
        return None
    out = subprocess.run([binary, "run", "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


OPERATOR_FLAGS = operator_flags()


def check_flags_known(label: str, args: list[str]) -> None:
    """Every flag the Deployment passes is one the operator's `run` has (a typo would crash-loop the pod)."""
    if OPERATOR_FLAGS is None:
        return
    check(args[0] == "run", f"{label}: the container does not start `run`: {args[:1]}")
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        check(flag in OPERATOR_FLAGS, f"{label}: the operator has no flag {flag}")


def check_deployment(label: str, objs: list[dict], values: dict) -> dict:
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    psc, csc = pod["securityContext"], c["securityContext"]
    replicas = values.get("replicaCount", 1)
    check(dep["spec"]["replicas"] == replicas, f"{label}: replicas != {replicas}")
    election = values.get("leaderElection", {}).get("enabled", True)
    check(f"--leader-election={str(election).lower()}" in c["args"], f"{label}: --leader-election={election} not passed")
    lease_args = [a for a in c["args"] if a.startswith("--lease-")]
    if election:
        le = values.get("leaderElection", {})
        expected = [f"--lease-name={le.get('leaseName', RELEASE)}",
                    f"--lease-duration-seconds={le.get('durationSeconds', 15)}",
                    f"--lease-grace-seconds={le.get('graceSeconds', 5)}"]
        check(lease_args == expected, f"{label}: Lease args {lease_args}, expected {expected}")
        strategy = dep["spec"]["strategy"]
        if le.get("allowLeaseRename"):
            # Pods on the old Lease and on the new one must never run side by side.
            check(strategy["type"] == "Recreate", f"{label}: a Lease rename rolls out next to the old leader: {strategy}")
        else:
            # A new pod stands by next to the old ones; it must never take a replica away first.
            check(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0,
                  f"{label}: with leader election the rollout should start the new pod first: {strategy}")
    else:
        check(replicas == 1, f"{label}: several replicas without leader election")
        check(not lease_args, f"{label}: Lease args without leader election: {lease_args}")
        check(dep["spec"]["strategy"]["type"] == "Recreate", f"{label}: rollout may run two operators")
    operator = {**yaml.safe_load((CHART / "values.yaml").read_text())["operator"], **values.get("operator", {})}
    for flag, key in (("--resync-seconds", "resyncSeconds"), ("--cleanup-attempts", "cleanupAttempts"),
                      ("--cleanup-retry-seconds", "cleanupRetrySeconds"),
                      ("--max-concurrent-reconciles", "maxConcurrentReconciles"), ("--log-format", "logFormat")):
        check(f"{flag}={operator[key]}" in c["args"], f"{label}: {flag} is not operator.{key} ({operator[key]})")
    check_flags_known(label, c["args"])
    otlp = values.get("otlp", {}).get("endpoint")
    check([a for a in c["args"] if a.startswith("--otlp-endpoint")] == ([f"--otlp-endpoint={otlp}"] if otlp else []),
          f"{label}: --otlp-endpoint is not otlp.endpoint")
    check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, f"{label}: runAsNonRoot")
    check(psc.get("runAsUser", 0) > 0 and psc.get("runAsGroup", 0) > 0, f"{label}: fixed non-root uid/gid")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: seccomp RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities not all dropped")
    check(all(c["resources"].get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")),
          f"{label}: resource requests/limits")
    check(pod.get("automountServiceAccountToken") is True, f"{label}: the pod needs its token for the API")
    check(pod.get("terminationGracePeriodSeconds", 0) > 0, f"{label}: terminationGracePeriodSeconds")
    (port,) = [p for p in c["ports"] if p["name"] == "http"]
    check(f"--listen=0.0.0.0:{port['containerPort']}" in c["args"], f"{label}: the probes' port is not --listen's")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check(c[probe]["httpGet"] == {"path": path, "port": port["name"]}, f"{label}: {probe} is not {path}")
    env = {e["name"]: e for e in c["env"]}
    for name, field in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
        check(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field,
              f"{label}: {name} not from the downward API")
    check(all("value" not in e for e in c["env"] if e["name"] not in ("RUST_LOG",)), f"{label}: an env value written inline")
    check("--config=/etc/mqtt-dsp-operator/config.yaml" in c["args"], f"{label}: --config")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    config_map = one(objs, "ConfigMap")
    check(mount["mountPath"] == "/etc/mqtt-dsp-operator" and volume["configMap"]["name"] == config_map["metadata"]["name"],
          f"{label}: the config is not mounted at /etc/mqtt-dsp-operator/config.yaml")
    expected_config = dict(values.get("config", yaml.safe_load((CHART / "values.yaml").read_text())["config"]))
    # `installation` defaults to <release namespace>.<release name> (the ownership markers' name).
    expected_config.setdefault("installation", f"{NAMESPACE}.{RELEASE}")
    check(yaml.safe_load(config_map["data"]["config.yaml"]) == expected_config, f"{label}: ConfigMap is not `config` (with `installation`)")
    return c


def lease_of(objs: list[dict]) -> str | None:
    """The Lease the Deployment's operator elects on, from its args (None: no leader election)."""
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    if "--leader-election=true" not in args:
        return None
    names = [a.removeprefix("--lease-name=") for a in args if a.startswith("--lease-name=")]
    return names[0] if len(names) == 1 else RELEASE


def check_refresh(objs: list[dict], values: dict) -> None:
    """The refresh endpoint of config.refresh: container port, Service, TLS mount, Ingress at the
    public URL's host and path, NetworkPolicy rule."""
    config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
    check(config["refresh"]["publicUrl"] == "https://mqtt-dsp.example.com/refresh", "refresh: not in the ConfigMap")
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports.get("refresh") == 8443, f"refresh: container port {ports}")
    service = one(objs, "Service", f"{RELEASE}-refresh")
    check([(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, "refresh")], "refresh: Service ports")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    check(mounts.get("refresh-tls") == "/var/run/mqtt-dsp-operator/refresh-tls"
          and volumes.get("refresh-tls") == values["refresh"]["tlsSecretName"]
          and config["refresh"]["tls"]["certFile"].startswith(mounts.get("refresh-tls", "-") + "/"),
          "refresh: the TLS Secret is not mounted where config.refresh.tls reads it")
    ingress = one(objs, "Ingress", f"{RELEASE}-refresh")
    rule = ingress["spec"]["rules"][0]
    check(rule["host"] == "mqtt-dsp.example.com" and rule["http"]["paths"][0]["path"] == "/refresh"
          and rule["http"]["paths"][0]["backend"]["service"]["name"] == f"{RELEASE}-refresh",
          f"refresh: Ingress rule {rule}")
    rules = one(objs, "NetworkPolicy")["spec"]["ingress"]
    refresh_rules = [r for r in rules if r["ports"][0]["port"] == "refresh"]
    check(len(refresh_rules) == 1 and refresh_rules[0].get("from") == values["networkPolicy"]["refreshFrom"],
          f"refresh: NetworkPolicy rules {rules}")


def check_template_refusals() -> None:
    """TEMPLATE_REFUSED, rendered from a copy of the chart without values.schema.json."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = pathlib.Path(tmp) / CHART.name
        shutil.copytree(CHART, copy_dir)
        (copy_dir / "values.schema.json").unlink()
        unchecked = helm.Chart.load(copy_dir)
        unchecked.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)  # the copy itself renders
        for why, (values, message) in TEMPLATE_REFUSED.items():
            try:
                unchecked.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                check(False, f"the templates accept {why}")
            except helm.HelmError as e:
                check(message in str(e), f"the templates refuse {why}, but not saying so: {e}")


def main() -> int:
    check_sources()
    chart = helm.Chart.load(CHART)

    # Defaults: all namespaces, CRDs kept on uninstall, nothing optional.
    objs = render({})
    check_lint("defaults", {})
    check_valid("defaults", objs)
    check_rbac("defaults", objs, "ClusterRole", lease_of(objs), [NAMESPACE], DEFAULT_CREDENTIALS)
    c = check_deployment("defaults", objs, {})
    check(lease_of(objs) == RELEASE, "defaults: leader election is not on, on the Lease deploy/rbac.yaml names")
    check(not any(a.startswith("--watch-namespace") for a in c["args"]), "defaults: --watch-namespace set")
    kinds = {o["kind"] for o in objs}
    check(not kinds & {"ServiceMonitor", "NetworkPolicy"}, f"defaults render optional kinds: {kinds}")
    # One replica: a PDB that never blocks a drain.
    check(one(objs, "PodDisruptionBudget")["spec"].get("maxUnavailable") == 1
          and "minAvailable" not in one(objs, "PodDisruptionBudget")["spec"], "defaults: the PDB would block drains")
    check("affinity" not in one(objs, "Deployment")["spec"]["template"]["spec"], "defaults: affinity for one replica")
    crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    check(len(crds) == len(list((ROOT / "crds").glob("*.yaml"))), "defaults: not every CRD rendered")
    for crd in crds:
        source = yaml.safe_load((ROOT / "crds" / f"{crd['metadata']['name']}.yaml").read_text())
        check(crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", f"CRD {crd['metadata']['name']} not kept")
        check(crd["spec"] == source["spec"], f"CRD {crd['metadata']['name']}: rendered spec differs from crds/")
    aggregated = [o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRole"
                  and any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in o["metadata"]["labels"])]
    check(not aggregated, f"defaults: aggregated to the built-in roles: {aggregated}")

    # Everything on: the release namespace only, optional objects, the aggregated roles.
    objs = render(EVERYTHING)
    check_lint("everything", EVERYTHING)
    check_valid("everything", objs)
    check_rbac("everything", objs, "Role", lease_of(objs), [NAMESPACE], DEFAULT_CREDENTIALS)
    c = check_deployment("everything", objs, EVERYTHING)
    check(f"--watch-namespace={NAMESPACE}" in c["args"], "everything: --watch-namespace is not the release namespace")
    check(c["image"] == f"mqtt-dsp-operator@{EVERYTHING['image']['digest']}", "everything: digest not used")
    check(not any(o["kind"] == "ClusterRoleBinding" for o in objs), "single namespace: a ClusterRoleBinding rendered")
    aggregated = {o["metadata"]["name"]: o["metadata"]["labels"] for o in objs if o["kind"] == "ClusterRole"}
    check(aggregated.get(f"{RELEASE}-edit", {}).get("rbac.authorization.k8s.io/aggregate-to-edit") == "true", "no edit aggregation")
    check(aggregated.get(f"{RELEASE}-view", {}).get("rbac.authorization.k8s.io/aggregate-to-view") == "true", "no view aggregation")
    service, monitor = one(objs, "Service", RELEASE), one(objs, "ServiceMonitor")
    check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(),
          "ServiceMonitor does not select the Service")
    check(monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
          and monitor["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint is not the Service's /metrics")
    check(monitor["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor labels not applied")
    policy = one(objs, "NetworkPolicy")
    check(policy["spec"]["policyTypes"] == ["Ingress", "Egress"], "NetworkPolicy policyTypes")
    check_refresh(objs, EVERYTHING)
    check(one(objs, "PodDisruptionBudget")["spec"].get("maxUnavailable") == 1, "PDB would block drains")

    # Another namespace watched.
    objs = render(OTHER_NAMESPACE)
    check_lint("other-namespace", OTHER_NAMESPACE)
    check_valid("other-namespace", objs)
    role = one(objs, "Role", RELEASE)
    check(role["metadata"]["namespace"] == "dataspace", "watchNamespace: the Role is not in the watched namespace")
    binding = one(objs, "RoleBinding", RELEASE)
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": "operator", "namespace": NAMESPACE}],
          "watchNamespace: the RoleBinding does not name the operator's account")
    check("--watch-namespace=dataspace" in one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
          "watchNamespace: --watch-namespace")
    check(not any(o["kind"] in ("CustomResourceDefinition", "ServiceAccount", "ClusterRole") for o in objs),
          "other-namespace: CRDs, ServiceAccount or ClusterRoles rendered although switched off")
    # The profiles serve the release namespace only, not the watched one: no Secret written there.
    check(not any(o["metadata"]["name"] == TRANSFER_SECRETS for o in objs),
          "other-namespace: transfer Secrets granted in a namespace the configuration does not serve")
    lease_binding = one(objs, "RoleBinding", LEASE_ROLE)
    check(lease_binding["metadata"]["namespace"] == NAMESPACE
          and lease_binding["subjects"] == [{"kind": "ServiceAccount", "name": "operator", "namespace": NAMESPACE}],
          "watchNamespace: the Lease stays in the release namespace, bound to the operator's account")

    # Another namespace watched, and served: the transfer Secrets there, by a Role.
    objs = render(OTHER_NAMESPACE_SERVED)
    check_lint("other-namespace-served", OTHER_NAMESPACE_SERVED)
    check_valid("other-namespace-served", objs)
    role = one(objs, "Role", TRANSFER_SECRETS)
    check(role["metadata"]["namespace"] == "dataspace" and one(objs, "RoleBinding", TRANSFER_SECRETS)["metadata"]["namespace"] == "dataspace",
          "other-namespace-served: the transfer Secrets Role is not in the watched namespace")
    check(not any(o["kind"].startswith("Cluster") for o in objs), "other-namespace-served: cluster-wide RBAC rendered")

    # Two tenant namespaces; the release namespace serves none.
    objs = render(TENANTS)
    check_lint("tenants", TENANTS)
    check_valid("tenants", objs)
    check_rbac("tenants", objs, "ClusterRole", lease_of(objs), ["team-a", "team-b"], TENANTS["rbac"]["credentialSecretNames"])
    check_deployment("tenants", objs, TENANTS)

    # Every namespace served, Secret writes cluster-wide on purpose.
    objs = render(CLUSTER_WIDE)
    check_lint("cluster-wide", CLUSTER_WIDE)
    check_valid("cluster-wide", objs)
    check_rbac("cluster-wide", objs, "ClusterRole", lease_of(objs), "*", DEFAULT_CREDENTIALS)
    check_deployment("cluster-wide", objs, CLUSTER_WIDE)

    # A Lease rename allowed: Recreate.
    objs = render(LEASE_RENAME)
    check_lint("lease-rename", LEASE_RENAME)
    check_valid("lease-rename", objs)
    check_rbac("lease-rename", objs, "ClusterRole", lease_of(objs), [NAMESPACE], DEFAULT_CREDENTIALS)
    check_deployment("lease-rename", objs, LEASE_RENAME)
    check(lease_of(objs) == "renamed", "lease-rename: not electing on the new Lease")

    # Several replicas with leader election.
    objs = render(REPLICAS)
    check_lint("replicas", REPLICAS)
    check_valid("replicas", objs)
    check_rbac("replicas", objs, "ClusterRole", lease_of(objs), [NAMESPACE], DEFAULT_CREDENTIALS)
    check(lease_of(objs) == REPLICAS["leaderElection"]["leaseName"], "replicas: not electing on leaderElection.leaseName")
    check_deployment("replicas", objs, REPLICAS)
    pdb = one(objs, "PodDisruptionBudget")["spec"]
    check(pdb.get("minAvailable") == 1 and "maxUnavailable" not in pdb, f"replicas: the PDB is not minAvailable 1: {pdb}")
    template = one(objs, "Deployment")["spec"]["template"]
    terms = template["spec"].get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    check(len(terms) == 1 and terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
          and terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items(),
          f"replicas: not spread across nodes: {terms}")
    objs = render(dict(REPLICAS, affinity={"nodeAffinity": {}}))
    check(one(objs, "Deployment")["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {}},
          "replicas: `affinity` does not replace the preferred spread")

    # One replica without leader election.
    objs = render(NO_LEADER_ELECTION)
    check_lint("no-leader-election", NO_LEADER_ELECTION)
    check_valid("no-leader-election", objs)
    check_rbac("no-leader-election", objs, "ClusterRole", lease_of(objs), [NAMESPACE], DEFAULT_CREDENTIALS)
    check(lease_of(objs) is None, "no-leader-election: leader election on")
    check_deployment("no-leader-election", objs, NO_LEADER_ELECTION)

    # What the schema refuses.
    for why, values in REFUSED.items():
        try:
            chart.validate_schema(values)
            check(False, f"values.schema.json accepts {why}")
        except helm.HelmValuesError:
            check(True, why)
        try:
            render(values)
            check(False, f"helm template accepts {why}")
        except helm.HelmError:
            check(True, why)

    check_template_refusals()

    if OPERATOR_FLAGS is None:
        print("chart-check: skipped comparing the Deployment's args with `mqtt-dsp-operator run --help`: "
              "target/debug/mqtt-dsp-operator is not built (make build, or set OPERATOR_BIN)")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"chart-check: {passed} checks passed, {len(failures)} failed "
          f"(lint, 9 renders validated against Kubernetes {', '.join(KUBE_VERSIONS)}; ServiceMonitor checked by hand)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
