//! Unit tests of the pure renderer over the example policies.

use super::envoy::{API_KEYS_FILE, CDS_FILE, LDS_FILE, SERVER_KEY_FILE, UPSTREAM_KEY_FILE};
use super::*;
use crate::api::{ApiSecurityPolicy, PolicyMode};
use crate::manifest::parse_str;
use k8s_openapi::api::core::v1::Service;

pub(crate) struct Fixture {
    pub policy: ApiSecurityPolicy,
    pub service: Service,
    pub api_keys: BTreeMap<String, String>,
    pub identity: GatewayIdentity,
    pub options: RenderOptions,
    pub jwks: BTreeMap<String, String>,
    pub openapi_document: Option<String>,
}

pub(crate) fn example(name: &str) -> Fixture {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let docs = parse_str(&path, &text).expect("parse example");
    let find = |kind: &str| {
        docs.iter()
            .find(|m| m.kind() == kind)
            .map(|m| m.object.clone())
    };
    let policy: ApiSecurityPolicy =
        serde_json::from_value(find("ApiSecurityPolicy").expect("policy")).expect("policy");
    let service: Service = serde_json::from_value(find("Service").expect("service")).expect("svc");
    let mut api_keys = BTreeMap::new();
    if let Some(secret) = find("Secret") {
        for (k, v) in secret["stringData"].as_object().expect("stringData") {
            api_keys.insert(k.clone(), v.as_str().expect("string").to_string());
        }
    }
    Fixture {
        policy,
        service,
        api_keys,
        identity: GatewayIdentity {
            server_cert_pem: "SERVER-CERT".into(),
            server_key_pem: "SERVER-PRIVATE-KEY".into(),
            client_ca_pem: Some("CLIENT-CA".into()),
            upstream: Some(UpstreamIdentity {
                cert_pem: "UPSTREAM-CERT".into(),
                key_pem: "UPSTREAM-PRIVATE-KEY".into(),
                trust_bundle_pem: "TRUST".into(),
                target_spiffe_id: "spiffe://cluster.local/ns/x/sa/y".into(),
            }),
            workload: Some(WorkloadIdentity {
                cert_pem: "WORKLOAD-CERT".into(),
                key_pem: "WORKLOAD-PRIVATE-KEY".into(),
                trust_bundle_pem: "WORKLOAD-TRUST".into(),
            }),
        },
        options: RenderOptions::default(),
        jwks: BTreeMap::new(),
        openapi_document: None,
    }
}

impl Fixture {
    pub(crate) fn input(&self) -> RenderInput<'_> {
        RenderInput {
            policy: &self.policy,
            target_service: &self.service,
            identity: &self.identity,
            api_keys: &self.api_keys,
            jwks_from_secret: &self.jwks,
            openapi_document: self.openapi_document.as_deref(),
            options: &self.options,
        }
    }
    pub(crate) fn render(&self) -> Result<RenderedGateway, RenderError> {
        render_gateway(&self.input())
    }
}

const EXAMPLES: &[&str] = &[
    "abuse-detection.yaml",
    "audit-mode-rollout.yaml",
    "bola-user-orders.yaml",
    "inline-jwks.yaml",
    "internal-east-west.yaml",
    "partner-api-mtls-apikeys.yaml",
    "public-consumer-api.yaml",
];

#[test]
fn rendering_is_deterministic_and_the_hash_follows_the_config() {
    for name in EXAMPLES {
        let f = example(name);
        let a = f.render().expect("render");
        let b = f.render().expect("render again");
        assert_eq!(a, b, "{name}: same input, same output");
        assert!(a.config_hash.starts_with("sha256:"), "{name}");
        let mut changed = example(name);
        changed.policy.spec.mode = match changed.policy.spec.mode {
            PolicyMode::Enforce => PolicyMode::Audit,
            PolicyMode::Audit => PolicyMode::Enforce,
        };
        let c = changed.render().expect("render changed");
        assert_ne!(
            a.config_hash, c.config_hash,
            "{name}: a changed policy changes the hash"
        );
    }
}

/// The `apiguard.dev` metadata of the listener and of the target cluster.
fn certificate_metadata(g: &RenderedGateway) -> (serde_json::Value, serde_json::Value) {
    let lds: serde_json::Value = serde_json::from_str(&g.files[LDS_FILE].contents).unwrap();
    let cds: serde_json::Value = serde_json::from_str(&g.files[CDS_FILE].contents).unwrap();
    let target = cds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "target")
        .cloned()
        .unwrap_or_default();
    (
        lds["resources"][0]["metadata"]["filter_metadata"]["apiguard.dev"].clone(),
        target["metadata"]["filter_metadata"]["apiguard.dev"].clone(),
    )
}

#[test]
fn a_renewed_certificate_changes_the_listener_or_cluster_that_reads_it() {
    // Envoy reads certificate files when it builds a listener/cluster; only a changed resource
    // is rebuilt, so a renewal must change the resource (tests/offline/envoy_gateway.rs shows it live).
    let f = example("internal-east-west.yaml");
    let (listener, cluster) = certificate_metadata(&f.render().unwrap());
    assert!(
        listener["certificates"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        cluster["certificates"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let mut served = example("internal-east-west.yaml");
    served.identity.server_cert_pem = "RENEWED-SERVER-CERT".into();
    let (l2, c2) = certificate_metadata(&served.render().unwrap());
    assert_ne!(
        listener, l2,
        "server certificate renewed: the listener changes"
    );
    assert_eq!(cluster, c2, "the cluster does not");

    let mut upstream = example("internal-east-west.yaml");
    upstream.identity.upstream.as_mut().unwrap().cert_pem = "RENEWED-UPSTREAM".into();
    let (l3, c3) = certificate_metadata(&upstream.render().unwrap());
    assert_eq!(listener, l3, "the listener does not");
    assert_ne!(
        cluster, c3,
        "upstream certificate renewed: the target cluster changes"
    );

    // A new key alone is not hashed (keys stay out of the ConfigMap's files); renewals always
    // come with a new certificate.
    let mut key = example("internal-east-west.yaml");
    key.identity.server_key_pem = "OTHER-KEY".into();
    assert_eq!(certificate_metadata(&key.render().unwrap()).0, listener);
}

#[test]
fn private_keys_and_api_keys_only_in_secret_files() {
    let f = example("partner-api-mtls-apikeys.yaml");
    let g = f.render().expect("render");
    for secret in [SERVER_KEY_FILE, UPSTREAM_KEY_FILE, API_KEYS_FILE] {
        assert!(g.files[secret].secret, "{secret} is secret");
    }
    let plain = g.config_files();
    for (name, contents) in &plain {
        for needle in [
            "SERVER-PRIVATE-KEY",
            "UPSTREAM-PRIVATE-KEY",
            "replace-with-a-long-random-key-for-acme",
        ] {
            assert!(!contents.contains(needle), "{name} leaks {needle}");
        }
    }
    assert!(g.secret_files()[API_KEYS_FILE].contains("replace-with-a-long-random-key-for-acme"));
    assert!(plain.contains_key(LDS_FILE) && plain.contains_key(CDS_FILE));
}

#[test]
fn listener_snapshot() {
    let f = example("bola-user-orders.yaml");
    let g = f.render().expect("render");
    let lds: serde_json::Value = serde_json::from_str(&g.files[LDS_FILE].contents).expect("JSON");
    insta::assert_snapshot!(
        "bola_lds",
        serde_json::to_string_pretty(&lds).expect("pretty")
    );
    insta::assert_snapshot!("bola_bootstrap", g.files[envoy::BOOTSTRAP_FILE].contents);
}

#[test]
fn errors_name_the_policy_and_field() {
    let mut f = example("bola-user-orders.yaml");
    f.policy.spec.target.port = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1);
    let e = f.render().expect_err("no such port");
    assert!(
        e.to_string().contains("shop/orders") && e.to_string().contains("spec.target"),
        "{e}"
    );

    let mut f = example("bola-user-orders.yaml");
    f.identity.upstream = None;
    let e = f.render().expect_err("no upstream identity");
    assert!(e.to_string().contains("spec.eastWest.mtls"), "{e}");

    let mut f = example("partner-api-mtls-apikeys.yaml");
    f.api_keys.clear();
    let e = f.render().expect_err("no keys");
    assert!(e.to_string().contains("apiKeys.secretRef"), "{e}");

    let mut f = example("inline-jwks.yaml");
    if let Some(j) = f
        .policy
        .spec
        .authentication
        .as_mut()
        .and_then(|a| a.jwt.as_mut())
    {
        j.providers[0].jwks.inline = Some("{\"keys\":[]}".into());
    }
    let e = f.render().expect_err("empty jwks");
    assert!(e.to_string().contains("jwks.inline"), "{e}");
}

#[test]
fn upstream_override_and_cluster_dns() {
    let mut f = example("bola-user-orders.yaml");
    let g = f.render().expect("render");
    assert!(
        g.files[CDS_FILE]
            .contents
            .contains("orders.shop.svc.cluster.local")
    );
    f.options.upstream_override = Some("127.0.0.1:9999".into());
    let g = f.render().expect("render");
    let cds = &g.files[CDS_FILE].contents;
    assert!(cds.contains("\"STATIC\"") && cds.contains("9999"), "{cds}");
    assert!(
        cds.contains("spiffe://cluster.local/ns/x/sa/y"),
        "target SAN checked"
    );
}

/// The fixture with the inventory push on.
fn pushing(name: &str) -> Fixture {
    let mut f = example(name);
    f.options.discovery_report = Some(DiscoveryReportOptions {
        url: "https://apiguard.apiguard-system.svc:443/v1/discovery".into(),
        interval_seconds: 15,
    });
    f
}

fn sensor_yaml(g: &RenderedGateway) -> crate::sensor::config::SensorConfig {
    crate::sensor::config::SensorConfig::from_yaml(
        "sensor.yaml",
        &g.files[crate::sensor::config::SENSOR_CONFIG_FILE].contents,
    )
    .expect("sensor.yaml parses")
}

#[test]
fn the_inventory_push_renders_the_report_section_and_the_workload_identity() {
    use crate::sensor::config::SensorReport;
    use envoy::{IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE};
    let f = pushing("bola-user-orders.yaml");
    let g = f.render().expect("render");
    assert_eq!(
        sensor_yaml(&g).report,
        Some(SensorReport {
            url: "https://apiguard.apiguard-system.svc:443/v1/discovery".into(),
            interval_seconds: 15,
            cert_file: "identity.crt".into(),
            key_file: "identity.key".into(),
            ca_file: "identity-ca.crt".into(),
        })
    );
    assert_eq!(
        g.files[IDENTITY_CERT_FILE],
        RenderedFile {
            contents: "WORKLOAD-CERT".into(),
            secret: false
        }
    );
    assert_eq!(
        g.files[IDENTITY_CA_FILE],
        RenderedFile {
            contents: "WORKLOAD-TRUST".into(),
            secret: false
        }
    );
    assert_eq!(
        g.files[IDENTITY_KEY_FILE],
        RenderedFile {
            contents: "WORKLOAD-PRIVATE-KEY".into(),
            secret: true
        }
    );
    assert!(
        g.config_files()
            .values()
            .all(|c| !c.contains("WORKLOAD-PRIVATE-KEY")),
        "the key stays out of the ConfigMap"
    );
    let debug = format!("{:?}", f.identity);
    assert!(
        debug.contains("WorkloadIdentity") && !debug.contains("WORKLOAD-PRIVATE-KEY"),
        "{debug}"
    );
    // A renewed workload certificate changes the config (the ConfigMap is re-applied).
    let mut renewed = pushing("bola-user-orders.yaml");
    renewed.identity.workload.as_mut().unwrap().cert_pem = "RENEWED".into();
    assert_ne!(renewed.render().unwrap().config_hash, g.config_hash);
}

#[test]
fn without_the_push_option_nothing_changes() {
    use envoy::{IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE};
    let mut f = example("bola-user-orders.yaml");
    let g = f.render().expect("render");
    assert_eq!(sensor_yaml(&g).report, None);
    for file in [IDENTITY_CERT_FILE, IDENTITY_KEY_FILE, IDENTITY_CA_FILE] {
        assert!(!g.files.contains_key(file), "{file}");
    }
    // The workload identity alone changes nothing: the same files as without it.
    f.identity.workload = None;
    assert_eq!(f.render().expect("render"), g);
}

#[test]
fn the_push_without_discovery_renders_nothing_and_without_identity_is_an_error() {
    let mut f = pushing("bola-user-orders.yaml");
    f.identity.workload = None;
    let e = f.render().expect_err("no workload identity").to_string();
    assert!(
        e.contains("shop/orders") && e.contains("options.discoveryReport"),
        "{e}"
    );

    // Discovery off: no inventory, no push, no identity needed.
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: false,
        ..Default::default()
    });
    let g = f.render().expect("render");
    assert!(!g.files.contains_key(envoy::IDENTITY_KEY_FILE));
    if let Some(sensor) = g.files.get(crate::sensor::config::SENSOR_CONFIG_FILE) {
        assert!(!sensor.contents.contains("report"), "{}", sensor.contents);
    }
}

/// `bola-user-orders.yaml` with discovery off and `runtime` detectors.
fn detecting(action: &str) -> Fixture {
    let mut f = pushing("bola-user-orders.yaml");
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: false,
        ..Default::default()
    });
    f.policy.spec.runtime = Some(
        serde_json::from_value(serde_json::json!({
            "detectors": [{
                "name": "walk",
                "match": {"paths": ["/users/{userId}/orders"]},
                "when": {"statuses": [403]},
                "by": {"header": "X-Tenant"},
                "threshold": {"count": 20, "window": "5m", "distinct": {"pathParam": "userId"}},
                "action": action,
            }],
        }))
        .unwrap(),
    );
    f
}

#[test]
fn runtime_detectors_need_the_sensor_the_access_log_and_the_push_but_alerts_no_inline_check() {
    let g = detecting("Alert").render().expect("render");
    let sensor = sensor_yaml(&g);
    assert_eq!(sensor.runtime.as_ref().unwrap().detectors[0].name, "walk");
    assert!(sensor.report.is_some(), "detections are pushed");
    assert!(g.files.contains_key(envoy::IDENTITY_KEY_FILE));
    let lds = &g.files[LDS_FILE].contents;
    assert!(!lds.contains("envoy.filters.http.ext_proc"), "{lds}");
    // The access log carries the header the detector keys by (lower case).
    let log: serde_json::Value = serde_json::from_str(lds).unwrap();
    let text = log.to_string();
    assert!(
        text.contains(r#""additional_request_headers_to_log":["x-apiguard-client-id","x-tenant"]"#),
        "{text}"
    );
}

#[test]
fn a_block_detector_adds_the_inline_check_failing_open() {
    let g = detecting("Block").render().expect("render");
    let lds: serde_json::Value = serde_json::from_str(&g.files[LDS_FILE].contents).unwrap();
    let text = lds.to_string();
    let at = text
        .find("envoy.filters.http.ext_proc")
        .expect("ext_proc filter");
    assert!(
        text[at..].contains(r#""failure_mode_allow":true"#),
        "without a contract a sensor failure never refuses traffic: {text}"
    );
    assert!(
        text[at..].contains(r#""response_header_mode":"SKIP""#),
        "blocks need the request headers only: {text}"
    );
}

#[test]
fn a_runtime_detector_the_sensor_cannot_run_is_an_error_naming_the_field() {
    let mut f = detecting("Alert");
    let runtime = f.policy.spec.runtime.as_mut().unwrap();
    runtime.detectors[0].threshold.window = "25h".into();
    let e = f.render().expect_err("a window over a day").to_string();
    assert!(
        e.contains("shop/orders") && e.contains("spec.runtime.detectors[0].threshold.window"),
        "{e}"
    );
}

/// `public-consumer-api.yaml` with its `per-user` limit (keyed by the `sub` claim) made
/// `scope: Global`.
fn with_global_limit() -> Fixture {
    let mut f = example("public-consumer-api.yaml");
    let per_user = f
        .policy
        .spec
        .rate_limits
        .iter_mut()
        .find(|rl| rl.name == "per-user")
        .expect("the per-user limit");
    per_user.scope = crate::api::RateLimitScope::Global;
    f
}

#[test]
fn global_rate_limits_call_the_sensor_with_the_limit_and_the_client() {
    use crate::sensor::config::GlobalRateLimit;
    let g = with_global_limit().render().expect("render");
    let lds: serde_json::Value = serde_json::from_str(&g.files[LDS_FILE].contents).expect("JSON");
    let hcm = &lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().expect("filters");
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    let local = names
        .iter()
        .position(|n| *n == "envoy.filters.http.local_ratelimit")
        .expect("the login limit stays local");
    let global = names
        .iter()
        .position(|n| *n == "envoy.filters.http.ratelimit")
        .expect("the ratelimit filter");
    assert!(local < global, "{names:?}");
    insta::assert_snapshot!(
        "global_ratelimit_filter",
        serde_json::to_string_pretty(&filters[global]).expect("pretty")
    );
    // Every declared route sends the per-user descriptor; the login route keeps its local one.
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("routes");
    let login = routes
        .iter()
        .find(|r| {
            r["match"]["path"] == "/login"
                && r["typed_per_filter_config"]
                    .get("envoy.filters.http.local_ratelimit")
                    .is_some()
        })
        .expect("the login route (not its content-type guards)");
    let per_route = &login["typed_per_filter_config"];
    insta::assert_snapshot!(
        "global_ratelimit_login_route",
        serde_json::to_string_pretty(&per_route["envoy.filters.http.ratelimit"]).expect("pretty")
    );
    let local_login = per_route["envoy.filters.http.local_ratelimit"].to_string();
    assert!(local_login.contains("\"login\""), "{local_login}");
    assert!(!local_login.contains("per-user"), "{local_login}");
    assert_eq!(
        sensor_yaml(&g).global_rate_limits,
        vec![GlobalRateLimit {
            name: "per-user".into(),
            requests: 600,
            unit_seconds: 60,
        }]
    );
    let cds = &g.files[CDS_FILE].contents;
    assert!(cds.contains(crate::sensor::config::SENSOR_CLUSTER), "{cds}");
}

#[test]
fn a_global_limit_alone_brings_the_sensor() {
    let mut f = with_global_limit();
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: false,
        ..Default::default()
    });
    let g = f.render().expect("render");
    assert_eq!(sensor_yaml(&g).global_rate_limits.len(), 1);
    let mut f = example("public-consumer-api.yaml");
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: false,
        ..Default::default()
    });
    let g = f.render().expect("render");
    assert!(
        !g.files
            .contains_key(crate::sensor::config::SENSOR_CONFIG_FILE)
    );
}
