//! The Helm chart without a cluster: `helm lint --strict` is clean for every supported shape of
//! values, its CRDs are byte-identical to `crds/`, `values.schema.json` describes every value
//! (and only values that exist), the schema refuses bad values, RBAC has no wildcard, and the
//! environment the Deployment gives the operator names only `apiguard run` settings.

use crate::support::tools::{helm, root};
use apiguard::manifest::{Manifest, parse_str};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chart() -> PathBuf {
    root().join("charts/apiguard")
}

/// Value sets the chart supports: defaults, out-of-cluster webhook URL, cert-manager, webhook
/// alone, controller alone, optional objects on.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    &[
        "webhook.url=https://localhost:8443/validate",
        "webhook.caBundle=-----BEGIN CERTIFICATE-----",
    ],
    &["webhook.url=https://127.0.0.1:8443/validate"],
    &["certManager.enabled=true"],
    &[
        "certManager.enabled=true",
        "certManager.issuerRef.name=corp-ca",
        "certManager.issuerRef.kind=ClusterIssuer",
    ],
    &["controller.enabled=false"],
    &["webhook.enabled=false"],
    &["redis.url=redis://redis.data:6379"],
    &[
        "redis.url=rediss://redis.data:6380",
        "redis.existingSecret=redis-auth",
        "redis.caSecret=redis-ca",
        "redis.clientCertSecret=redis-client",
        "certManager.enabled=true",
    ],
    &[
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=false",
        "podDisruptionBudget.enabled=false",
        "admission.mode=Audit",
        "webhook.failurePolicy=Ignore",
    ],
    &["audit.enabled=false", "policyReports.installCRDs=false"],
    &["audit.interval=1h30m"],
];

fn set_args(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".to_owned(), (*v).to_owned()])
        .collect()
}

/// `helm template` of the chart with `values`; panics with helm's stderr if it fails.
pub fn template(values: &[&str]) -> Vec<Manifest> {
    let chart = chart();
    let mut args = vec![
        "template",
        "apiguard",
        chart.to_str().unwrap(),
        "-n",
        "apiguard-system",
    ];
    let sets = set_args(values);
    args.extend(sets.iter().map(String::as_str));
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {values:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_str(
        "helm template",
        &String::from_utf8(out.stdout).expect("helm prints UTF-8"),
    )
    .unwrap_or_else(|e| panic!("helm template {values:?} printed unparsable YAML: {e}"))
}

#[test]
fn helm_lint_strict_is_clean_for_every_value_set() {
    let chart = chart();
    for values in VALUE_SETS {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        let sets = set_args(values);
        args.extend(sets.iter().map(String::as_str));
        let out = helm(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm lint {values:?}:\n{text}");
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint {values:?}:\n{text}"
        );
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
    }
}

#[test]
fn chart_crds_are_byte_identical_to_the_top_level_crds() {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top = root().join("crds");
    let chart_crds = chart().join("crds");
    let files = names(&top);
    assert!(!files.is_empty(), "crds/ is empty");
    assert_eq!(
        names(&chart_crds),
        files,
        "charts/apiguard/crds/ must hold exactly the files of crds/"
    );
    for file in &files {
        let a = std::fs::read(top.join(file)).unwrap();
        let b = std::fs::read(chart_crds.join(file)).unwrap();
        assert!(
            a == b,
            "charts/apiguard/crds/{file} differs from crds/{file}: copy crds/ into the chart"
        );
    }
}

/// Every key path of `values` (`a.b.c`), with the value found there.
fn key_paths(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.push((path.clone(), child.clone()));
            key_paths(&path, child, out);
        }
    }
}

fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(schema, |node, key| node.get("properties")?.get(key))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn values_schema_describes_every_value_and_only_those() {
    let values_path = chart().join("values.yaml");
    let values: Value = serde_saphyr::from_str(&std::fs::read_to_string(&values_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", values_path.display()));
    let schema_path = chart().join("values.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", schema_path.display()));

    let mut paths = Vec::new();
    key_paths("", &values, &mut paths);
    assert!(
        paths.len() > 30,
        "values.yaml has only {} keys",
        paths.len()
    );
    for (path, value) in &paths {
        let node = schema_at(&schema, path)
            .unwrap_or_else(|| panic!("values.schema.json has no entry for value {path}"));
        let ty = node
            .get("type")
            .unwrap_or_else(|| panic!("values.schema.json: {path} has no type"));
        let allowed: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("values.schema.json: {path} has type {other}"),
        };
        let actual = json_type(value);
        assert!(
            allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number")),
            "values.yaml {path} is {actual} but values.schema.json allows {allowed:?}"
        );
        // A non-empty object in values.yaml is a group of settings: the schema must close it,
        // so a typo in a key is an error instead of a silently ignored value.
        // (Resource requests/limits take any quantity name, like a pod's.)
        if matches!(value, Value::Object(m) if !m.is_empty())
            && !matches!(
                path.as_str(),
                "resources.requests"
                    | "resources.limits"
                    | "sensor.resources.requests"
                    | "sensor.resources.limits"
            )
        {
            assert_eq!(
                node.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "values.schema.json: {path} must set additionalProperties: false"
            );
        }
    }

    // And the reverse: the schema documents no value that values.yaml lacks.
    let mut schema_paths = Vec::new();
    fn walk(prefix: &str, node: &Value, out: &mut Vec<String>) {
        if let Some(Value::Object(props)) = node.get("properties") {
            for (key, child) in props {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                walk(&path, child, out);
            }
        }
    }
    walk("", &schema, &mut schema_paths);
    let value_paths: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
    for path in &schema_paths {
        // Optional sub-keys of free-form maps (issuerRef.name, ...) need no default.
        let parent_is_empty_map = path.rsplit_once('.').is_some_and(|(parent, _)| {
            paths
                .iter()
                .any(|(p, v)| p == parent && matches!(v, Value::Object(m) if m.is_empty()))
        });
        assert!(
            value_paths.contains(&path.as_str()) || parent_is_empty_map,
            "values.schema.json describes {path}, which values.yaml does not have"
        );
    }
}

#[test]
fn the_schema_refuses_bad_values_naming_them() {
    let chart = chart();
    for (set, needle) in [
        ("admission.mode=Block", "/admission/mode"),
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        ("replicaCount=0", "/replicaCount"),
        ("webhook.url=http://plain.example/validate", "/webhook/url"),
        ("resources.limits.cpu=true", "/resources/limits/cpu"),
        ("webhok.enabled=true", "webhok"),
    ] {
        let out = helm(&[
            "template",
            "apiguard",
            chart.to_str().unwrap(),
            "--set",
            set,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains(needle),
            "--set {set}: error does not name {needle}: {stderr}"
        );
    }
}

#[test]
fn rbac_grants_no_wildcards() {
    for values in VALUE_SETS {
        let roles: Vec<Manifest> = template(values)
            .into_iter()
            .filter(|m| matches!(m.kind(), "ClusterRole" | "Role"))
            .collect();
        assert_eq!(roles.len(), 2, "{values:?}: a ClusterRole and a Role");
        for role in &roles {
            let rules = role.object["rules"].as_array().expect("rules");
            assert!(!rules.is_empty());
            for rule in rules {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for item in rule[field].as_array().into_iter().flatten() {
                        assert_ne!(
                            item.as_str(),
                            Some("*"),
                            "{} {} grants {field} \"*\": {rule}",
                            role.kind(),
                            role.name()
                        );
                    }
                }
            }
        }
    }
}

/// The `APIGUARD_*` variables `apiguard run --help` documents.
fn run_env_names() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(["run", "--help"])
        .output()
        .expect("apiguard run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_deployment_sets_only_settings_apiguard_run_has() {
    let known = run_env_names();
    assert!(
        known.iter().any(|n| n == "APIGUARD_WEBHOOK_DNS_NAMES"),
        "apiguard run --help lists no APIGUARD_WEBHOOK_DNS_NAMES: {known:?}"
    );
    // The default (controller + webhook), the webhook alone, and cert-manager.
    for values in [
        &[][..],
        &["controller.enabled=false"][..],
        &["certManager.enabled=true"][..],
        &[
            "redis.url=redis://r:6379",
            "redis.existingSecret=redis-auth",
        ][..],
        &[
            "redis.url=rediss://r:6380",
            "redis.caSecret=redis-ca",
            "redis.clientCertSecret=redis-client",
            "certManager.enabled=true",
        ][..],
    ] {
        check_deployment_env(&template(values), &known, values);
    }
}

#[test]
fn the_redis_password_is_a_mounted_secret_file() {
    let manifests = template(&[
        "redis.url=redis://redis.data:6379",
        "redis.existingSecret=redis-auth",
        "redis.passwordKey=pw",
        "certManager.enabled=true",
    ]);
    let pod = &deployment(&manifests)["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().expect("env");
    assert_eq!(
        env_value(env, "APIGUARD_REDIS_URL"),
        Some("redis://redis.data:6379")
    );
    assert_eq!(
        env_value(env, "APIGUARD_REDIS_PASSWORD_FILE"),
        Some("/var/run/apiguard/redis/password")
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    let redis = volumes
        .iter()
        .find(|v| v["name"] == "redis-password")
        .expect("the password volume");
    assert_eq!(redis["secret"]["secretName"], "redis-auth");
    assert_eq!(
        redis["secret"]["items"],
        serde_json::json!([{"key": "pw", "path": "password"}])
    );
    assert!(volumes.iter().any(|v| v["name"] == "webhook-tls"));
    // Without a URL, nothing about Redis.
    let text = serde_json::to_string(deployment(&template(&[]))).expect("json");
    assert!(!text.contains("REDIS"), "{text}");
}

#[test]
fn the_redis_ca_is_a_mounted_secret_file() {
    let manifests = template(&[
        "redis.url=rediss://redis.data:6380",
        "redis.caSecret=redis-ca",
        "redis.caKey=root.pem",
    ]);
    let pod = &deployment(&manifests)["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().expect("env");
    let path = env_value(env, "APIGUARD_REDIS_CA_FILE").expect("APIGUARD_REDIS_CA_FILE");
    let mount = named(&container["volumeMounts"], "redis-ca");
    assert_eq!(
        path,
        format!("{}/ca.crt", mount["mountPath"].as_str().unwrap())
    );
    let volume = named(&pod["volumes"], "redis-ca");
    assert_eq!(volume["secret"]["secretName"], "redis-ca");
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{"key": "root.pem", "path": "ca.crt"}])
    );
    assert!(env_value(env, "APIGUARD_REDIS_PASSWORD_FILE").is_none());
    assert!(env_value(env, "APIGUARD_REDIS_CLIENT_CERT_FILE").is_none());
    // A CA without a URL: nothing about Redis.
    let text =
        serde_json::to_string(deployment(&template(&["redis.caSecret=redis-ca"]))).expect("json");
    assert!(
        !text.contains("REDIS") && !text.contains("redis-ca"),
        "{text}"
    );
}

#[test]
fn the_redis_client_certificate_is_a_mounted_tls_secret() {
    let manifests = template(&[
        "redis.url=rediss://redis.data:6380",
        "redis.clientCertSecret=redis-client",
    ]);
    let pod = &deployment(&manifests)["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().expect("env");
    let mount = named(&container["volumeMounts"], "redis-client");
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(
        env_value(env, "APIGUARD_REDIS_CLIENT_CERT_FILE"),
        Some(format!("{dir}/tls.crt").as_str())
    );
    assert_eq!(
        env_value(env, "APIGUARD_REDIS_CLIENT_KEY_FILE"),
        Some(format!("{dir}/tls.key").as_str())
    );
    let volume = named(&pod["volumes"], "redis-client");
    assert_eq!(volume["secret"]["secretName"], "redis-client");
}

/// The chart's Deployment, as JSON.
fn deployment(manifests: &[Manifest]) -> &Value {
    &manifests
        .iter()
        .find(|m| m.kind() == "Deployment")
        .expect("a Deployment")
        .object
}

/// The element of the JSON array `list` named `name` (a volume, a mount).
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn env_value<'a>(env: &'a [Value], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["value"].as_str())
}

fn check_deployment_env(manifests: &[Manifest], known: &[String], values: &[&str]) {
    let container = &deployment(manifests)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["run"]));
    let env = container["env"].as_array().expect("env");
    let mut seen = Vec::new();
    for var in env {
        let name = var["name"].as_str().unwrap();
        seen.push(name);
        if name.starts_with("APIGUARD_") {
            assert!(
                known.iter().any(|k| k == name),
                "the chart sets {name}, which `apiguard run` does not read (it reads {known:?})"
            );
        }
    }
    let webhook_only = values.contains(&"controller.enabled=false");
    assert_eq!(
        seen.contains(&"APIGUARD_NO_CONTROLLER"),
        webhook_only,
        "APIGUARD_NO_CONTROLLER must be set exactly when controller.enabled=false ({values:?})"
    );
    for needed in [
        "APIGUARD_MODE",
        "APIGUARD_EXEMPT_NAMESPACES",
        "APIGUARD_OPERATOR_NAMESPACE",
        "APIGUARD_CA_SECRET",
    ] {
        assert!(
            seen.contains(&needed),
            "the Deployment does not set {needed}"
        );
    }
    if values.is_empty() {
        // The default runs the controller too: its settings must reach it.
        for needed in [
            "APIGUARD_ENVOY_IMAGE",
            "APIGUARD_GATEWAY_REPLICAS",
            "APIGUARD_SENSOR_IMAGE",
            "APIGUARD_SENSOR_RESOURCES",
        ] {
            assert!(
                seen.contains(&needed),
                "the default Deployment does not set {needed}"
            );
        }
        // The sensor sidecar runs the operator's own image, with `sensor.resources`.
        assert_eq!(
            env_value(env, "APIGUARD_SENSOR_IMAGE"),
            container["image"].as_str()
        );
        let resources = env_value(env, "APIGUARD_SENSOR_RESOURCES").unwrap_or_default();
        let parsed = apiguard::render::parse_resources(resources)
            .unwrap_or_else(|e| panic!("APIGUARD_SENSOR_RESOURCES {resources:?}: {e}"));
        assert_eq!(
            parsed
                .limits
                .unwrap_or_default()
                .get("cpu")
                .map(|q| q.0.as_str()),
            Some("1")
        );
    }
    if values.contains(&"certManager.enabled=true") {
        // cert-manager's Secret is mounted; the certificate files are in it.
        let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
        let cert = env_value(env, "APIGUARD_TLS_CERT").expect("APIGUARD_TLS_CERT");
        assert!(cert.starts_with(mount), "{cert} is not under {mount}");
        assert!(env_value(env, "APIGUARD_TLS_KEY").is_some());
        assert!(env_value(env, "APIGUARD_WEBHOOK_CONFIG").is_none());
    } else {
        // The operator manages the certificate: no files, no mount; the SANs are the
        // Service's names, the Secret and the webhook configuration the chart's own.
        assert!(env_value(env, "APIGUARD_TLS_CERT").is_none());
        if values
            .iter()
            .any(|v| v.starts_with("redis.existingSecret="))
        {
            // Only the Redis password's mount.
            let names: Vec<&str> = container["volumeMounts"]
                .as_array()
                .map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(names, ["redis-password"], "{container}");
        } else {
            assert!(container["volumeMounts"].is_null(), "{container}");
        }
        let service = manifests
            .iter()
            .find(|m| m.kind() == "Service" && m.name() == "apiguard")
            .expect("the webhook Service");
        let ns = service.namespace().unwrap();
        assert_eq!(
            env_value(env, "APIGUARD_WEBHOOK_DNS_NAMES"),
            Some(format!("apiguard.{ns}.svc,apiguard.{ns}.svc.cluster.local").as_str())
        );
        let vwc = manifests
            .iter()
            .find(|m| m.kind() == "ValidatingWebhookConfiguration")
            .unwrap();
        assert_eq!(env_value(env, "APIGUARD_WEBHOOK_CONFIG"), Some(vwc.name()));
        assert_eq!(
            env_value(env, "APIGUARD_WEBHOOK_SECRET"),
            Some("apiguard-webhook-tls")
        );
    }
    // The exempt namespaces always include the release's own.
    let exempt = env
        .iter()
        .find(|v| v["name"] == "APIGUARD_EXEMPT_NAMESPACES")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(
        exempt.split(',').any(|ns| ns == "apiguard-system"),
        "{exempt}"
    );
}

/// The rules of `role` for `group`/`resource`: (resourceNames, verbs) each.
fn grants(role: &Manifest, group: &str, resource: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    role.object["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            strings(&r["apiGroups"]).iter().any(|g| g == group)
                && strings(&r["resources"]).iter().any(|x| x == resource)
        })
        .map(|r| (strings(&r["resourceNames"]), strings(&r["verbs"])))
        .collect()
}

/// What the serving-certificate loop (`src/certs/`) does: Secrets get (CA and serving), create,
/// replace (update), watch by name (list + watch); the webhook configuration get, watch by name
/// and server-side apply (patch) — exactly that, by name where Kubernetes allows it, and only in
/// managed mode.
#[test]
fn rbac_grants_the_managed_serving_certificate_exactly_what_it_uses() {
    for values in [
        &[][..],
        &["webhook.url=https://127.0.0.1:8443/validate"][..],
    ] {
        let manifests = template(values);
        let role = manifests.iter().find(|m| m.kind() == "Role").unwrap();
        let cluster_role = manifests
            .iter()
            .find(|m| m.kind() == "ClusterRole")
            .unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            grants(role, "", "secrets"),
            vec![
                (vec![], s(&["create"])),
                (s(&["apiguard-ca"]), s(&["get"])),
                (
                    s(&["apiguard-webhook-tls"]),
                    s(&["get", "list", "watch", "update"])
                ),
            ],
            "{values:?}"
        );
        assert_eq!(
            grants(
                cluster_role,
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations"
            ),
            vec![(s(&["apiguard"]), s(&["get", "list", "watch", "patch"]))],
            "{values:?}: no create, so an uninstalled registration is never re-created"
        );
    }
    for values in [
        &["certManager.enabled=true"][..],
        &["webhook.enabled=false"][..],
    ] {
        let manifests = template(values);
        let role = manifests.iter().find(|m| m.kind() == "Role").unwrap();
        assert!(grants(role, "", "secrets").is_empty(), "{values:?}");
    }
}

#[test]
fn the_pod_is_hardened() {
    let manifests = template(&[]);
    let deployment = deployment(&manifests);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(deployment["spec"]["replicas"], 2);
}

#[test]
fn the_webhook_registration_matches_the_design() {
    let manifests = template(&[]);
    let vwc = manifests
        .iter()
        .find(|m| m.kind() == "ValidatingWebhookConfiguration")
        .expect("a ValidatingWebhookConfiguration");
    let hook = &vwc.object["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
    for ns in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "apiguard-system",
    ] {
        assert!(
            excluded.as_array().unwrap().iter().any(|v| v == ns),
            "{ns} is not excluded: {excluded}"
        );
    }
    // The operator manages the serving certificate: helm renders neither a certificate
    // Secret nor a caBundle (a rendered one would be reset on every upgrade).
    assert!(
        !manifests.iter().any(|m| m.kind() == "Secret"),
        "helm renders a Secret"
    );
    assert!(hook["clientConfig"]["caBundle"].is_null(), "{hook}");
    assert_eq!(hook["clientConfig"]["service"]["name"], "apiguard");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/validate");

    // Every kind the rules review (and the apiserver serves) is sent to the webhook.
    let rules = hook["rules"].as_array().unwrap();
    let registered: Vec<(&str, &str)> = apiguard::rules::coverage::KINDS
        .iter()
        .flat_map(|c| c.webhook.iter().copied())
        .collect();
    assert!(registered.len() >= 16, "{registered:?}");
    for (group, resource) in registered {
        assert!(
            rules.iter().any(|r| {
                r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == group)
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource)
            }),
            "{group}/{resource} is not sent to the webhook"
        );
    }

    // With a URL and no caBundle (the tests' path): the operator there manages it.
    let manifests = template(&["webhook.url=https://127.0.0.1:8443/validate"]);
    let vwc = manifests
        .iter()
        .find(|m| m.kind() == "ValidatingWebhookConfiguration")
        .unwrap();
    let client = &vwc.object["webhooks"][0]["clientConfig"];
    assert_eq!(client["url"], "https://127.0.0.1:8443/validate");
    assert!(client["caBundle"].is_null(), "{client}");

    // With a URL and your own certificate's CA: no in-cluster workload, the URL and the CA in
    // the registration.
    let manifests = template(&[
        "webhook.url=https://localhost:8443/validate",
        "webhook.caBundle=PEM",
    ]);
    let kinds: Vec<&str> = manifests.iter().map(Manifest::kind).collect();
    for absent in ["Deployment", "Service", "PodDisruptionBudget", "Secret"] {
        assert!(!kinds.contains(&absent), "{absent} rendered in URL mode");
    }
    let vwc = manifests
        .iter()
        .find(|m| m.kind() == "ValidatingWebhookConfiguration")
        .unwrap();
    let client = &vwc.object["webhooks"][0]["clientConfig"];
    assert_eq!(client["url"], "https://localhost:8443/validate");
    assert_eq!(client["caBundle"], "UEVN"); // base64 of "PEM"
}

#[test]
fn chart_app_version_and_dockerfile_match_the_crate() {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart_yaml["appVersion"], version, "Chart.yaml appVersion");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let repository = values["image"]["repository"].as_str().unwrap();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("docker build -t {repository}:{version} .")),
        "the Dockerfile's build command does not name {repository}:{version}"
    );
    // The image's user is the one the pod's securityContext runs as.
    let manifests = template(&[]);
    let pod = &deployment(&manifests)["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(
        dockerfile.contains(&format!("\nUSER {uid}:{uid}\n")),
        "the Dockerfile does not run as {uid}"
    );
}

fn crd_names(manifests: &[Manifest]) -> Vec<String> {
    manifests
        .iter()
        .filter(|m| m.object["kind"] == "CustomResourceDefinition")
        .map(|m| m.object["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn cluster_role(manifests: &[Manifest]) -> &Manifest {
    manifests
        .iter()
        .find(|m| m.object["kind"] == "ClusterRole")
        .expect("a ClusterRole")
}

/// The PolicyReport CRDs (`wgpolicyk8s.io/v1alpha2`) ship by default, unless another engine
/// installed them (`policyReports.installCRDs=false`); the audit's RBAC (list/watch of every
/// checked kind, PolicyReport writes) and settings follow `audit.enabled`.
#[test]
fn policy_report_crds_and_the_audit_rbac_follow_their_values() {
    let default = template(&[]);
    assert_eq!(
        crd_names(&default),
        [
            "policyreports.wgpolicyk8s.io",
            "clusterpolicyreports.wgpolicyk8s.io"
        ]
    );
    let crd = default
        .iter()
        .find(|m| m.object["metadata"]["name"] == "policyreports.wgpolicyk8s.io")
        .unwrap();
    // Deleting a CRD deletes every engine's reports: helm uninstall keeps it.
    assert_eq!(
        crd.object["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let version = &crd.object["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha2");
    assert_eq!(crd.object["spec"]["scope"], "Namespaced");
    let result = &version["schema"]["openAPIV3Schema"]["properties"]["results"]["items"];
    assert_eq!(result["required"], serde_json::json!(["policy"]));
    assert_eq!(
        result["properties"]["result"]["enum"],
        serde_json::json!(["pass", "fail", "warn", "error", "skip"])
    );
    let role = cluster_role(&default);
    // Two grants: the audit's (it lists and deletes its reports) and the discovery intake's
    // (apiguard-<policy>, every replica, with the managed serving certificate).
    let reports = grants(role, "wgpolicyk8s.io", "policyreports");
    assert_eq!(reports.len(), 2, "{reports:?}");
    for verb in ["get", "list", "patch", "delete"] {
        assert!(reports[0].1.iter().any(|v| v == verb), "{reports:?}");
    }
    assert_eq!(reports[1].1, ["get", "create", "patch"], "{reports:?}");
    for (group, resource) in apiguard::rules::coverage::KINDS
        .iter()
        .flat_map(|c| c.webhook.iter())
    {
        let verbs: Vec<String> = grants(role, group, resource)
            .into_iter()
            .flat_map(|(_, verbs)| verbs)
            .collect();
        assert!(
            verbs.iter().any(|v| v == "list") && verbs.iter().any(|v| v == "watch"),
            "the audit cannot list and watch {group}/{resource}: {verbs:?}"
        );
    }
    let env = |manifests: &[Manifest]| -> Vec<Value> {
        manifests
            .iter()
            .find(|m| m.object["kind"] == "Deployment")
            .unwrap()
            .object["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(
        env_value(&env(&default), "APIGUARD_AUDIT_INTERVAL"),
        Some("10m")
    );
    assert_eq!(
        env_value(&env(&default), "APIGUARD_DISCOVERY_REPORT_INTERVAL"),
        Some("30s")
    );

    let off = template(&["audit.enabled=false", "policyReports.installCRDs=false"]);
    assert!(crd_names(&off).is_empty());
    assert_eq!(
        grants(cluster_role(&off), "wgpolicyk8s.io", "policyreports").len(),
        1,
        "the discovery intake still writes apiguard-<policy>"
    );
    // With cert-manager's certificate the sensors cannot push: no intake, no grant.
    let neither = template(&["audit.enabled=false", "certManager.enabled=true"]);
    assert!(grants(cluster_role(&neither), "wgpolicyk8s.io", "policyreports").is_empty());
    assert_eq!(env_value(&env(&off), "APIGUARD_NO_AUDIT"), Some("true"));
    assert_eq!(env_value(&env(&off), "APIGUARD_AUDIT_INTERVAL"), None);
}
