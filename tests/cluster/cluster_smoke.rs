//! Proof that the test control plane is a real one: the built release answers, the controller
//! manager collects garbage and runs the workload controllers, and the apiserver calls
//! admission webhooks over HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Resource};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::support::cluster::{control_plane, eventually, unique_name, with_temp_ns};
use crate::support::tools::TOOLS;

const KUBERNETES_VERSION: &str = "v1.35.4";

#[test]
fn tool_versions_agree_with_tools_sh() {
    let _group = crate::support::isolation::enter(module_path!());
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools.sh"))
        .expect("tests/tools.sh is readable");
    let version = |var: &str| {
        script
            .lines()
            .find_map(|line| line.strip_prefix(var)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("tests/tools.sh sets no {var}"))
            .to_owned()
    };
    let expected = [
        (
            "kube-apiserver",
            format!("kubernetes-{}", version("KUBE_VERSION")),
        ),
        (
            "kube-controller-manager",
            format!("kubernetes-{}", version("KUBE_VERSION")),
        ),
        ("etcd", format!("etcd-{}", version("ETCD_VERSION"))),
        ("helm", format!("helm-{}", version("HELM_VERSION"))),
        ("envoy", format!("envoy-{}", version("ENVOY_VERSION"))),
    ];
    for (name, dir) in expected {
        let (_, support_dir, _) = TOOLS
            .iter()
            .find(|(tool, _, _)| *tool == name)
            .unwrap_or_else(|| panic!("tests/support/tools.rs does not know {name}"));
        assert_eq!(
            *support_dir, dir,
            "tests/support/tools.rs disagrees with tests/tools.sh on {name}"
        );
    }
    assert_eq!(version("KUBE_VERSION"), KUBERNETES_VERSION);
}

#[tokio::test]
async fn apiserver_reports_the_built_release() {
    let _group = crate::support::isolation::enter(module_path!());
    let control_plane = control_plane();
    let output = control_plane.kubectl_ok(["version", "-o", "json"]);
    let version: serde_json::Value =
        serde_json::from_str(&output).expect("kubectl version prints JSON");
    assert_eq!(
        version["serverVersion"]["gitVersion"], KUBERNETES_VERSION,
        "{output}"
    );
    assert_eq!(
        version["serverVersion"]["gitTreeState"], "clean",
        "{output}"
    );

    let info = control_plane
        .client()
        .await
        .apiserver_version()
        .await
        .expect("GET /version");
    assert_eq!(info.git_version, KUBERNETES_VERSION);
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "35"));
}

#[tokio::test]
async fn rbac_authorizes_admin_and_denies_an_unbound_service_account() {
    let _group = crate::support::isolation::enter(module_path!());
    let control_plane = control_plane();
    assert_eq!(
        control_plane.kubectl_ok(["auth", "can-i", "*", "*"]).trim(),
        "yes"
    );
    // RBAC is on: a service account without bindings may not list secrets (`can-i` exits 1).
    let denied = control_plane.kubectl([
        "auth",
        "can-i",
        "list",
        "secrets",
        "--as=system:serviceaccount:default:nobody",
    ]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    assert_eq!(denied.status.code(), Some(1));
}

#[tokio::test]
async fn controller_manager_populates_new_namespaces() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        // serviceaccount-controller and root-ca-certificate-publisher-controller.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        eventually(
            Duration::from_secs(60),
            "the default service account",
            || async { accounts.get_opt("default").await.ok().flatten() },
        )
        .await;
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let root_ca = eventually(
            Duration::from_secs(60),
            "the kube-root-ca.crt ConfigMap",
            || async { config_maps.get_opt("kube-root-ca.crt").await.ok().flatten() },
        )
        .await;
        let ca = std::fs::read_to_string(&control_plane().ca).expect("the CA file is readable");
        assert_eq!(
            root_ca
                .data
                .unwrap_or_default()
                .get("ca.crt")
                .map(|c| c.trim()),
            Some(ca.trim())
        );
    })
    .await;
}

#[tokio::test]
async fn garbage_collector_deletes_a_dependent_after_its_owner() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let owner = config_maps
            .create(&PostParams::default(), &config_map("owner", None))
            .await
            .expect("create the owner");
        let owner_ref = OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("the apiserver sets uid"),
            ..OwnerReference::default()
        };
        config_maps
            .create(
                &PostParams::default(),
                &config_map("dependent", Some(owner_ref)),
            )
            .await
            .expect("create the dependent");
        // An unrelated ConfigMap must survive: the collector follows owner references only.
        config_maps
            .create(&PostParams::default(), &config_map("bystander", None))
            .await
            .expect("create the bystander");

        config_maps
            .delete("owner", &DeleteParams::background())
            .await
            .expect("delete the owner");
        eventually(
            Duration::from_secs(90),
            "the dependent to be garbage collected",
            || async {
                match config_maps.get_opt("dependent").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            },
        )
        .await;
        assert!(
            config_maps
                .get_opt("bystander")
                .await
                .expect("get")
                .is_some()
        );
    })
    .await;
}

#[tokio::test]
async fn deployment_and_replicaset_controllers_create_pods() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let labels = std::collections::BTreeMap::from([("app".to_owned(), "smoke".to_owned())]);
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "smoke"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/smoke:1"}]}
                }
            }
        }))
        .expect("a Deployment");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let created = deployments
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create the Deployment");
        let uid = created.metadata.uid.expect("uid");

        let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        let replica_set = eventually(
            Duration::from_secs(60),
            "a ReplicaSet owned by the Deployment",
            || async {
                let list = replica_sets.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == uid && o.controller == Some(true))
                })
            },
        )
        .await;
        let rs_uid = replica_set.metadata.uid.expect("uid");

        // No node runs them, but the ReplicaSet controller creates them (they stay Pending).
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        eventually(
            Duration::from_secs(90),
            "2 Pods owned by the ReplicaSet",
            || async {
                let list = pods
                    .list(&ListParams::default().labels("app=smoke"))
                    .await
                    .ok()?;
                let owned = list
                    .items
                    .iter()
                    .filter(|pod| {
                        pod.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| o.uid == rs_uid)
                    })
                    .count();
                (owned == 2).then_some(())
            },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn apiserver_calls_a_url_webhook_and_kubectl_shows_its_denial() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let control_plane = control_plane();
        let webhook = DenyingWebhook::start().await;

        // Scoped to this namespace and to ConfigMaps labelled for the test, so the other tests
        // sharing the control plane never reach it.
        let name = unique_name("apiguard-smoke");
        let configuration: ValidatingWebhookConfiguration = ValidatingWebhookConfiguration {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            webhooks: Some(vec![ValidatingWebhook {
                name: "smoke.apiguard.dev".into(),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://{}/validate", webhook.addr)),
                    ca_bundle: Some(ByteString(webhook.ca_pem.clone().into_bytes())),
                    service: None,
                },
                rules: Some(vec![RuleWithOperations {
                    operations: Some(vec!["CREATE".into()]),
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    resources: Some(vec!["configmaps".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                namespace_selector: Some(LabelSelector {
                    match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.clone())].into()),
                    ..LabelSelector::default()
                }),
                object_selector: Some(LabelSelector {
                    match_labels: Some([("apiguard.dev/smoke-webhook".to_owned(), "true".to_owned())].into()),
                    ..LabelSelector::default()
                }),
                failure_policy: Some("Fail".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            }]),
        };
        let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        configurations
            .create(&PostParams::default(), &configuration)
            .await
            .expect("create the ValidatingWebhookConfiguration");
        let _cleanup = DeleteOnDrop { kind: "validatingwebhookconfiguration", name };

        let manifest = |name: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    apiguard.dev/smoke-webhook: \"true\"\ndata:\n  k: v\n"
            )
        };
        // The apiserver picks the configuration up asynchronously: retry until it is in force.
        let stderr = eventually(Duration::from_secs(30), "the webhook to deny a ConfigMap", || async {
            let output = control_plane.kubectl_async(&["apply", "-f", "-"], &manifest("deny-me")).await;
            (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
        })
        .await;
        assert!(
            stderr.contains(r#"admission webhook "smoke.apiguard.dev" denied the request: smoke webhook denies deny-me"#),
            "kubectl's error does not carry the webhook's denial: {stderr}"
        );
        let calls_before = webhook.calls.load(Ordering::SeqCst);
        assert!(calls_before >= 1);

        // An allowed object goes through the same webhook and is stored.
        let allowed = control_plane.kubectl_async(&["apply", "-f", "-"], &manifest("allow-me")).await;
        assert!(allowed.status.success(), "allow-me was refused: {}", String::from_utf8_lossy(&allowed.stderr));
        assert!(webhook.calls.load(Ordering::SeqCst) > calls_before, "the webhook was not asked about allow-me");
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        assert!(config_maps.get_opt("allow-me").await.expect("get").is_some());
        assert!(config_maps.get_opt("deny-me").await.expect("get").is_none());
    })
    .await;
}

/// Processes whose command line mentions `needle` (the components name their state dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(needle)
                .then(|| format!("{}: {cmdline}", entry.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn control_plane_stops_and_removes_its_state_when_the_test_process_is_gone() {
    let _group = crate::support::isolation::enter(module_path!());
    // A stand-in for a test process that dies without running any destructor.
    let mut test_process = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("run sleep");
    let (control_plane, mut supervisor) =
        crate::support::cluster::start_control_plane(test_process.id())
            .expect("a control plane starts");
    let dir = control_plane.dir.to_string_lossy().into_owned();
    let running = processes_mentioning(&dir);
    for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        assert!(
            running
                .iter()
                .any(|p| p.contains(&format!("/{component} "))),
            "{component} is not running: {running:#?}"
        );
    }

    let keep = std::env::var_os("APIGUARD_KEEP_CLUSTER").is_some_and(|v| v == "1");
    test_process.kill().expect("kill the stand-in");
    test_process.wait().expect("reap the stand-in");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = processes_mentioning(&dir);
        // APIGUARD_KEEP_CLUSTER=1 keeps the state dir on purpose.
        let state_gone = keep || !control_plane.dir.exists();
        if left.is_empty() && state_gone && supervisor.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "60s after the watched process died: left running {left:#?}, state dir exists: {}",
            control_plane.dir.exists()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/apiguard.dev_apisecuritypolicies.yaml"
);

/// Whitespace-insensitive text, so descriptions compare however kubectl wraps them.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn kubectl_explain_shows_the_crd_descriptions() {
    let _group = crate::support::isolation::enter(module_path!());
    let control_plane = control_plane();
    control_plane.install_crds();
    let crd: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(CRD_FILE).expect("the CRD file is readable"),
    )
    .expect("the CRD file is YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let spec_description = spec["description"]
        .as_str()
        .expect("spec has a description");
    let exposure_description = spec["properties"]["exposure"]["description"]
        .as_str()
        .expect("spec.exposure has a description");

    // The OpenAPI document a new CRD contributes is published a moment after it is established.
    let explained = eventually(
        Duration::from_secs(60),
        "kubectl explain apisecuritypolicy.spec",
        || async {
            let output = control_plane.kubectl(["explain", "apisecuritypolicy.spec"]);
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        },
    )
    .await;
    let explained_words = words(&explained);
    assert!(
        explained.contains("KIND:") && explained.contains("ApiSecurityPolicy"),
        "{explained}"
    );
    assert!(
        explained_words.contains(&words(spec_description)),
        "spec's description is missing:\n{explained}"
    );
    assert!(
        explained_words.contains(&words(exposure_description)),
        "spec.exposure's description is missing:\n{explained}"
    );
}

fn policy_manifest(ns: &str, name: &str, origin: &str) -> String {
    format!(
        r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  target: {{service: payments, port: 8080}}
  exposure: Public
  hosts: [payments.shop.example]
  authentication:
    jwt:
      providers:
      - name: corp
        issuer: https://idp.shop.example/
        audiences: [payments-api]
        jwks: {{uri: https://idp.shop.example/.well-known/jwks.json}}
  authorization:
    rules:
    - name: read-orders
      match: {{methods: [GET], paths: ["/orders"]}}
      allow: {{scopes: ["orders:read"]}}
  cors:
    allowOrigins: ["{origin}"]
"#
    )
}

#[tokio::test]
async fn apiserver_rejects_a_wildcard_cors_policy_with_the_cel_message() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|_client, ns| async move {
        let control_plane = control_plane();
        control_plane.install_crds();
        let output = control_plane
            .kubectl_with_stdin(["apply", "-f", "-"], &policy_manifest(&ns, "wildcard", "*"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "a policy with allowOrigins [\"*\"] was accepted"
        );
        assert!(
            stderr.contains("spec.cors")
                && stderr.contains("APG001: spec.cors.allowOrigins must not contain"),
            "the apiserver's rejection does not carry the CEL message: {stderr}"
        );
        let get = control_plane.kubectl(["get", "asp", "wildcard", "-n", &ns]);
        assert!(!get.status.success(), "the rejected policy was stored");
    })
    .await;
}

#[tokio::test]
async fn apiserver_stores_a_valid_policy_with_its_defaults() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|_client, ns| async move {
        let control_plane = control_plane();
        control_plane.install_crds();
        control_plane.kubectl_ok_with_stdin(
            ["apply", "-f", "-"],
            &policy_manifest(&ns, "payments", "https://shop.example"),
        );
        let stored: serde_json::Value = serde_json::from_str(
            &control_plane.kubectl_ok(["get", "asp", "payments", "-n", &ns, "-o", "json"]),
        )
        .expect("kubectl prints JSON");
        assert_eq!(
            stored["spec"]["cors"]["allowOrigins"],
            serde_json::json!(["https://shop.example"])
        );
        assert_eq!(stored["spec"]["target"]["port"], 8080);
        // Structural-schema defaulting by the apiserver.
        assert_eq!(
            stored["spec"]["authorization"]["defaultAction"], "Deny",
            "{stored:#}"
        );
        // The short name and printer columns work.
        let table = control_plane.kubectl_ok(["get", "asp", "-n", &ns]);
        assert!(
            table.contains("EXPOSURE") && table.contains("payments") && table.contains("Public"),
            "{table}"
        );
    })
    .await;
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..ConfigMap::default()
    }
}

/// Deletes a cluster-scoped object when the test ends, also when it panics.
struct DeleteOnDrop {
    kind: &'static str,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let output =
            control_plane().kubectl(["delete", self.kind, &self.name, "--ignore-not-found"]);
        if !output.status.success() {
            eprintln!(
                "cannot delete {} {}: {}",
                self.kind,
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A tiny validating webhook on `127.0.0.1` over HTTPS (its own CA, from rcgen): it denies
/// every object whose name starts with `deny-` and counts the reviews it gets.
struct DenyingWebhook {
    addr: SocketAddr,
    ca_pem: String,
    calls: Arc<AtomicUsize>,
}

impl DenyingWebhook {
    async fn start() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apiguard smoke webhook CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf certificate");

        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("TLS config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let calls = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route("/validate", post(review))
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            calls,
        }
    }
}

async fn review(
    State(calls): State<Arc<AtomicUsize>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    calls.fetch_add(1, Ordering::SeqCst);
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return Json(AdmissionResponse::invalid(error.to_string()).into_review()),
    };
    let name = request
        .object
        .as_ref()
        .and_then(|o| o.meta().name.clone())
        .unwrap_or_default();
    let response = AdmissionResponse::from(&request);
    let response = if name.starts_with("deny-") {
        response.deny(format!("smoke webhook denies {name}"))
    } else {
        response
    };
    Json(response.into_review())
}
