//! Rendering a policy with `spec.openapi`: the `ext_proc` filter, the sensor's cluster,
//! `sensor.yaml` and the sensor sidecar; and nothing of it without `spec.openapi`. Also the
//! `ext_proc` filter of `spec.discovery.sensitiveData` (response bodies only, failing open).

use super::envoy::{CDS_FILE, LDS_FILE};
use super::objects::gateway_objects;
use super::tests::{Fixture, example};
use crate::api::{
    OpenApi, OpenApiSource, PolicyMode, RequestContractMode, ResponseContractMode,
    SensitiveDataMode, UnknownPropertiesMode,
};
use crate::sensor::config::{
    JWT_METADATA_NAMESPACE, REQUEST_ATTRIBUTES, SENSOR_ADMIN_PORT, SENSOR_CLUSTER,
    SENSOR_CONFIG_FILE, SensorConfig,
};
use serde_json::{Value, json};

const DOCUMENT: &str = "openapi: 3.1.0\ninfo: {title: orders, version: '1'}\npaths:\n  /users/{userId}/orders:\n    get:\n      parameters: [{name: userId, in: path, required: true, schema: {type: string}}]\n      responses: {'200': {description: ok}}\n";

/// `example` with a contract (given inline, and resolved as the caller would).
pub(crate) fn with_contract(
    name: &str,
    requests: RequestContractMode,
    responses: ResponseContractMode,
) -> Fixture {
    let mut f = example(name);
    f.policy.spec.openapi = Some(OpenApi {
        source: OpenApiSource {
            config_map_ref: None,
            inline: Some(DOCUMENT.into()),
        },
        requests,
        responses,
        unknown_properties: UnknownPropertiesMode::Reject,
        max_response_bytes: 4096,
    });
    f.openapi_document = Some(DOCUMENT.into());
    f
}

fn bola() -> Fixture {
    with_contract(
        "bola-user-orders.yaml",
        RequestContractMode::Enforce,
        ResponseContractMode::Redact,
    )
}

fn lds(f: &Fixture) -> Value {
    let g = f.render().expect("render");
    serde_json::from_str(&g.files[LDS_FILE].contents).expect("LDS is JSON")
}

fn hcm(lds: &Value) -> &Value {
    &lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn filter_names(lds: &Value) -> Vec<String> {
    hcm(lds)["http_filters"]
        .as_array()
        .expect("filters")
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ext_proc(lds: &Value) -> Value {
    hcm(lds)["http_filters"]
        .as_array()
        .expect("filters")
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_proc")
        .map(|f| f["typed_config"].clone())
        .expect("an ext_proc filter")
}

#[test]
fn ext_proc_comes_after_authentication_and_authorization_right_before_the_router() {
    let names = filter_names(&lds(&bola()));
    let at = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("no {n}: {names:?}"))
    };
    let ext = at("envoy.filters.http.ext_proc");
    for before in [
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        super::envoy::decision::DECISION_FILTER,
    ] {
        assert!(at(before) < ext, "{before} before ext_proc: {names:?}");
    }
    assert_eq!(
        names[ext + 1..],
        ["apiguard.content-length", "envoy.filters.http.router"],
        "{names:?}"
    );

    // API keys too.
    let f = with_contract(
        "partner-api-mtls-apikeys.yaml",
        RequestContractMode::Enforce,
        ResponseContractMode::Off,
    );
    let names = filter_names(&lds(&f));
    let key = names
        .iter()
        .position(|n| n == "envoy.filters.http.api_key_auth");
    let ext = names
        .iter()
        .position(|n| n == "envoy.filters.http.ext_proc");
    assert!(key.is_some() && key < ext, "{names:?}");
}

#[test]
fn the_filter_talks_grpc_to_the_sensor_with_the_shared_attributes() {
    let config = ext_proc(&lds(&bola()));
    assert_eq!(
        config["grpc_service"]["envoy_grpc"]["cluster_name"],
        SENSOR_CLUSTER
    );
    assert_eq!(config["message_timeout"], "0.200s");
    assert_eq!(config["status_on_error"], json!({"code": 503}));
    assert_eq!(config["request_attributes"], json!(REQUEST_ATTRIBUTES));
    assert_eq!(
        config["metadata_options"]["forwarding_namespaces"]["untyped"],
        json!([JWT_METADATA_NAMESPACE])
    );
    // Without JWT there is no JWT metadata to forward.
    let f = with_contract(
        "partner-api-mtls-apikeys.yaml",
        RequestContractMode::Enforce,
        ResponseContractMode::Off,
    );
    assert_eq!(ext_proc(&lds(&f)).get("metadata_options"), None);
}

#[test]
fn processing_mode_follows_the_contract_modes() {
    use RequestContractMode as Rq;
    use ResponseContractMode as Rs;
    for (requests, responses, request_body, response_headers, response_body) in [
        (
            Rq::Enforce,
            Rs::Redact,
            "STREAMED",
            "SEND",
            "BUFFERED_PARTIAL",
        ),
        (
            Rq::Enforce,
            Rs::Audit,
            "STREAMED",
            "SEND",
            "BUFFERED_PARTIAL",
        ),
        (Rq::Enforce, Rs::Off, "STREAMED", "SKIP", "NONE"),
        (
            Rq::Audit,
            Rs::Redact,
            "STREAMED",
            "SEND",
            "BUFFERED_PARTIAL",
        ),
        (Rq::Audit, Rs::Off, "STREAMED", "SKIP", "NONE"),
        (Rq::Off, Rs::Redact, "NONE", "SEND", "BUFFERED_PARTIAL"),
        (Rq::Off, Rs::Audit, "NONE", "SEND", "BUFFERED_PARTIAL"),
        (Rq::Off, Rs::Off, "NONE", "SKIP", "NONE"),
    ] {
        let f = with_contract("bola-user-orders.yaml", requests, responses);
        let config = ext_proc(&lds(&f));
        let mode = config["processing_mode"].clone();
        // A checked body comes right behind its headers (one round trip, not two).
        assert_eq!(
            config.get("send_body_without_waiting_for_header_response"),
            (request_body == "STREAMED").then_some(&json!(true)),
            "requests {requests:?}"
        );
        assert_eq!(
            mode,
            json!({
                "request_header_mode": "SEND",
                "response_header_mode": response_headers,
                "request_body_mode": request_body,
                "response_body_mode": response_body,
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            }),
            "requests {requests:?}, responses {responses:?}"
        );
    }
}

/// The `max_request_bytes` of each `buffer` filter by name, in chain order.
fn buffers(lds: &Value) -> Vec<(String, Value)> {
    hcm(lds)["http_filters"]
        .as_array()
        .expect("filters")
        .iter()
        .filter(|f| {
            f["typed_config"]["@type"]
                .as_str()
                .unwrap_or("")
                .ends_with("buffer.v3.Buffer")
        })
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["typed_config"]["max_request_bytes"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_checked_request_body_is_buffered_whole_before_the_sensor_and_again_after_it() {
    let ext_proc_at = |lds: &Value| {
        filter_names(lds)
            .iter()
            .position(|n| n == "envoy.filters.http.ext_proc")
            .unwrap()
    };
    // maxBodyBytes (131072 in the example) bounds both; the second one restores the
    // content-length Envoy drops from a body it streams.
    let l = lds(&bola());
    assert_eq!(
        buffers(&l),
        [
            ("envoy.filters.http.buffer".to_string(), json!(131072)),
            ("apiguard.content-length".to_string(), json!(131072)),
        ]
    );
    let names = filter_names(&l);
    assert_eq!(names[ext_proc_at(&l) - 1], "envoy.filters.http.buffer");
    // Without maxBodyBytes: Envoy's default buffer limit, which BUFFERED had anyway.
    let mut f = bola();
    f.policy
        .spec
        .request_validation
        .as_mut()
        .unwrap()
        .max_body_bytes = None;
    assert_eq!(
        buffers(&lds(&f)),
        [
            ("envoy.filters.http.buffer".to_string(), json!(1048576)),
            ("apiguard.content-length".to_string(), json!(1048576)),
        ]
    );
    // Bodies not checked: no buffer the policy did not ask for.
    let mut f = with_contract(
        "bola-user-orders.yaml",
        RequestContractMode::Off,
        ResponseContractMode::Redact,
    );
    f.policy
        .spec
        .request_validation
        .as_mut()
        .unwrap()
        .max_body_bytes = None;
    assert_eq!(buffers(&lds(&f)), []);
    // With the sensitive-data scan the body is BUFFERED after the headers' answer (the scan's
    // mode override needs it): buffered once, content-length kept by Envoy.
    let mut f = bola();
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: true,
        sensitive_data: SensitiveDataMode::Sampled,
    });
    let l = lds(&f);
    assert_eq!(
        buffers(&l),
        [("envoy.filters.http.buffer".to_string(), json!(131072))]
    );
    assert_eq!(
        ext_proc(&l).get("send_body_without_waiting_for_header_response"),
        None
    );
}

#[test]
fn the_sensor_fails_closed_in_enforce_and_open_in_audit() {
    let mut f = bola();
    f.policy.spec.mode = PolicyMode::Enforce;
    assert_eq!(ext_proc(&lds(&f))["failure_mode_allow"], false);
    f.policy.spec.mode = PolicyMode::Audit;
    assert_eq!(ext_proc(&lds(&f))["failure_mode_allow"], true);
}

#[test]
fn routes_that_answer_directly_do_not_call_the_sensor() {
    let lds = lds(&bola());
    let routes = hcm(&lds)["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("routes")
        .clone();
    let mut direct = 0;
    for r in &routes {
        let disabled = &r["typed_per_filter_config"]["envoy.filters.http.ext_proc"];
        if r.get("direct_response").is_some() {
            direct += 1;
            assert_eq!(disabled["disabled"], true, "{r}");
        } else {
            assert!(disabled.is_null(), "{r}");
        }
    }
    assert!(direct > 0, "the example has an undeclared-route answer");
}

#[test]
fn the_sensor_cluster_is_plaintext_http2_on_loopback() {
    let mut f = bola();
    let g = f.render().expect("render");
    let cds: Value = serde_json::from_str(&g.files[CDS_FILE].contents).unwrap();
    let sensor = cds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == SENSOR_CLUSTER)
        .cloned()
        .expect("sensor cluster");
    assert_eq!(sensor["type"], "STATIC");
    assert_eq!(sensor.get("transport_socket"), None);
    let addr = &sensor["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        (addr["address"].clone(), addr["port_value"].clone()),
        (json!("127.0.0.1"), json!(9002))
    );
    assert_eq!(
        sensor["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"],
        json!({"http2_protocol_options": {}})
    );
    f.options.sensor_address = "127.0.0.1:19002".into();
    let cds = f.render().unwrap().files[CDS_FILE].contents.clone();
    assert!(cds.contains("19002"), "{cds}");
    f.options.sensor_address = "nope".into();
    let e = f.render().unwrap_err().to_string();
    assert!(e.contains("options.sensorAddress"), "{e}");
}

#[test]
fn sensor_yaml_carries_the_policy_mode_and_contract() {
    let mut f = bola();
    f.policy.spec.mode = PolicyMode::Audit;
    let g = f.render().expect("render");
    let file = &g.files[SENSOR_CONFIG_FILE];
    assert!(!file.secret, "sensor.yaml goes into the ConfigMap");
    let config = SensorConfig::from_yaml(SENSOR_CONFIG_FILE, &file.contents).expect("parses");
    assert_eq!(
        (
            config.policy.namespace.as_str(),
            config.policy.name.as_str()
        ),
        ("shop", "orders")
    );
    assert_eq!(config.mode, PolicyMode::Audit);
    let contract = config.openapi.expect("contract");
    assert_eq!(contract.document, DOCUMENT);
    assert_eq!(contract.requests, RequestContractMode::Enforce);
    assert_eq!(contract.responses, ResponseContractMode::Redact);
    assert_eq!(contract.unknown_properties, UnknownPropertiesMode::Reject);
    assert_eq!(contract.max_response_bytes, 4096);
    insta::assert_snapshot!("openapi_sensor_yaml", file.contents);
    let lds: Value = serde_json::from_str(&g.files[LDS_FILE].contents).unwrap();
    insta::assert_snapshot!("openapi_lds", serde_json::to_string_pretty(&lds).unwrap());
}

#[test]
fn the_config_hash_follows_the_document_and_the_modes() {
    let base = bola().render().unwrap().config_hash;
    let mut doc = bola();
    doc.openapi_document = Some(DOCUMENT.replace("orders, version: '1'", "orders, version: '2'"));
    let mut requests = bola();
    requests.policy.spec.openapi.as_mut().unwrap().requests = RequestContractMode::Audit;
    let mut unknown = bola();
    unknown
        .policy
        .spec
        .openapi
        .as_mut()
        .unwrap()
        .unknown_properties = UnknownPropertiesMode::Allow;
    for (what, f) in [
        ("document", doc),
        ("requests", requests),
        ("unknownProperties", unknown),
    ] {
        assert_ne!(
            f.render().unwrap().config_hash,
            base,
            "{what} changes the hash"
        );
    }
}

#[test]
fn a_contract_without_its_document_is_an_error_naming_the_field() {
    let mut f = bola();
    f.openapi_document = None;
    let e = f.render().unwrap_err().to_string();
    assert!(
        e.contains("shop/orders") && e.contains("spec.openapi.source"),
        "{e}"
    );
}

#[test]
fn without_openapi_discovery_streams_the_access_log_but_nothing_runs_inline() {
    for name in ["bola-user-orders.yaml", "partner-api-mtls-apikeys.yaml"] {
        let f = example(name);
        let g = f.render().unwrap();
        let sensor = &g.files[SENSOR_CONFIG_FILE].contents;
        assert!(sensor.contains("discovery:"), "{name}: {sensor}");
        assert!(!sensor.contains("openapi:"), "{name}: {sensor}");
        let lds = &g.files["lds.json"].contents;
        assert!(!lds.contains("ext_proc"), "{name}: no inline filter");
        assert!(lds.contains("envoy.access_loggers.http_grpc"), "{name}");
        assert!(
            g.files["cds.json"].contents.contains(SENSOR_CLUSTER),
            "{name}"
        );
        let o = gateway_objects(&f.policy, &g, &f.options).unwrap();
        let pod = o.deployment.spec.unwrap().template.spec.unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["envoy", "sensor"], "{name}");
    }
}

#[test]
fn with_discovery_disabled_and_no_openapi_there_is_no_sensor_anywhere() {
    for name in ["bola-user-orders.yaml", "partner-api-mtls-apikeys.yaml"] {
        let mut f = example(name);
        f.policy.spec.discovery = Some(crate::api::Discovery {
            enabled: false,
            ..crate::api::Discovery::default()
        });
        let g = f.render().unwrap();
        assert!(!g.files.contains_key(SENSOR_CONFIG_FILE), "{name}");
        for (file, f) in &g.files {
            assert!(!f.contents.contains("ext_proc"), "{name}: {file}");
            assert!(!f.contents.contains("http_grpc"), "{name}: {file}");
            assert!(!f.contents.contains(SENSOR_CLUSTER), "{name}: {file}");
        }
        let o = gateway_objects(&f.policy, &g, &f.options).unwrap();
        let pod = o.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1, "{name}: Envoy only");
        assert_eq!(pod.volumes.unwrap().len(), 2, "{name}");
    }
}

#[test]
fn the_sensor_sidecar_is_hardened_and_probed() {
    let mut f = bola();
    f.options.sensor_image = "registry.example/apiguard:1.2.3".into();
    let g = f.render().unwrap();
    let o = gateway_objects(&f.policy, &g, &f.options).unwrap();
    assert!(
        o.config_map
            .data
            .as_ref()
            .unwrap()
            .contains_key(SENSOR_CONFIG_FILE)
    );
    let pod = o.deployment.spec.unwrap().template.spec.unwrap();
    let sensor = pod
        .containers
        .iter()
        .find(|c| c.name == "sensor")
        .expect("sidecar");
    assert_eq!(
        sensor.image.as_deref(),
        Some("registry.example/apiguard:1.2.3")
    );
    let admin = format!("0.0.0.0:{SENSOR_ADMIN_PORT}");
    assert_eq!(
        sensor.args.clone().unwrap(),
        [
            "sensor",
            "--config",
            "/etc/apiguard/sensor/sensor.yaml",
            "--listen",
            "127.0.0.1:9002",
            "--admin-addr",
            admin.as_str(),
        ]
    );
    let sc = sensor.security_context.clone().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    for (probe, path) in [
        (sensor.liveness_probe.clone(), "/healthz"),
        (sensor.readiness_probe.clone(), "/readyz"),
    ] {
        let get = probe.and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        let port = sensor.ports.as_ref().unwrap()[0].clone();
        assert_eq!(port.container_port, i32::from(SENSOR_ADMIN_PORT));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(port.name.unwrap())
        );
    }
    assert_eq!(sensor.resources, Some(f.options.sensor_resources.clone()));
    // The sensor mounts sensor.yaml alone, not the gateway's keys.
    let mounts = sensor.volume_mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].read_only, Some(true));
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == mounts[0].name)
        .unwrap();
    let items = volume.config_map.unwrap().items.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, SENSOR_CONFIG_FILE);
}

#[test]
fn sensor_yaml_rejects_undeclared_operations_as_the_gateway_rejects_undeclared_routes() {
    let reject = |f: &Fixture| {
        let g = f.render().expect("render");
        let text = &g.files[SENSOR_CONFIG_FILE].contents;
        let config = SensorConfig::from_yaml(SENSOR_CONFIG_FILE, text).expect("parses");
        config.openapi.expect("contract").reject_undeclared
    };
    let mut f = bola();
    assert!(reject(&f), "rejectUndeclaredRoutes defaults to true");
    let mut validation = f.policy.spec.request_validation();
    validation.reject_undeclared_routes = false;
    f.policy.spec.request_validation = Some(validation);
    assert!(!reject(&f));
    let mut f = bola();
    if let Some(authorization) = f.policy.spec.authorization.as_mut() {
        authorization.default_action = crate::api::DefaultAction::Allow;
    }
    assert!(
        !reject(&f),
        "defaultAction: Allow serves what is undeclared"
    );
}

/// `example(name)` with `spec.discovery.sensitiveData: mode`.
fn scanning(name: &str, mode: SensitiveDataMode) -> Fixture {
    let mut f = example(name);
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: true,
        sensitive_data: mode,
    });
    f
}

#[test]
fn sensitive_data_alone_sends_responses_to_the_sensor_and_fails_open_even_in_enforce() {
    for mode in [SensitiveDataMode::Sampled, SensitiveDataMode::All] {
        let mut f = scanning("bola-user-orders.yaml", mode);
        f.policy.spec.mode = PolicyMode::Enforce;
        let g = f.render().unwrap();
        let lds: Value = serde_json::from_str(&g.files[LDS_FILE].contents).unwrap();
        let config = ext_proc(&lds);
        assert_eq!(
            config["processing_mode"],
            json!({
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "NONE",
                "response_body_mode": "BUFFERED_PARTIAL",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            }),
            "{mode:?}: no request body for scanning"
        );
        assert_eq!(
            config["failure_mode_allow"], true,
            "{mode:?}: scanning is observation"
        );
        assert_eq!(
            config["allow_mode_override"], true,
            "{mode:?}: the sensor skips the bodies it does not scan"
        );
        let text = &g.files[LDS_FILE].contents;
        assert!(
            !text.contains("sensor-unavailable"),
            "{mode:?}: no 503 for a sensor failure without a contract"
        );
        let names = filter_names(&lds);
        assert_eq!(
            names[names.len() - 2..],
            ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]
        );
        let sensor =
            SensorConfig::from_yaml(SENSOR_CONFIG_FILE, &g.files[SENSOR_CONFIG_FILE].contents)
                .unwrap();
        assert_eq!(sensor.discovery.unwrap().sensitive_data, mode);
        assert!(sensor.openapi.is_none());
        // The gateway's own answers (undeclared routes) are not sent to the sensor.
        let routes = hcm(&lds)["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .clone();
        for r in routes.iter().filter(|r| r.get("direct_response").is_some()) {
            assert_eq!(
                r["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["disabled"], true,
                "{r}"
            );
        }
    }
}

#[test]
fn sensitive_data_with_a_contract_adds_the_response_and_keeps_the_contract_failure_mode() {
    let mut f = with_contract(
        "bola-user-orders.yaml",
        RequestContractMode::Enforce,
        ResponseContractMode::Off,
    );
    f.policy.spec.discovery = Some(crate::api::Discovery {
        enabled: true,
        sensitive_data: SensitiveDataMode::Sampled,
    });
    f.policy.spec.mode = PolicyMode::Enforce;
    let config = ext_proc(&lds(&f));
    assert_eq!(config["processing_mode"]["request_body_mode"], "BUFFERED");
    assert_eq!(config["processing_mode"]["response_header_mode"], "SEND");
    assert_eq!(
        config["processing_mode"]["response_body_mode"],
        "BUFFERED_PARTIAL"
    );
    assert_eq!(
        config["failure_mode_allow"], false,
        "the contract fails closed"
    );
    assert_eq!(config["allow_mode_override"], true);
    let names = filter_names(&lds(&f));
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "envoy.filters.http.ext_proc")
            .count(),
        1,
        "one filter for both"
    );
    f.policy.spec.mode = PolicyMode::Audit;
    assert_eq!(ext_proc(&lds(&f))["failure_mode_allow"], true);
}

#[test]
fn sensitive_data_off_or_without_discovery_renders_no_inline_filter() {
    for name in ["bola-user-orders.yaml", "partner-api-mtls-apikeys.yaml"] {
        let g = scanning(name, SensitiveDataMode::Off).render().unwrap();
        assert!(!g.files[LDS_FILE].contents.contains("ext_proc"), "{name}");
        let sensor = &g.files[SENSOR_CONFIG_FILE].contents;
        assert!(!sensor.contains("sensitiveData"), "{name}: {sensor}");
        // Discovery disabled (which the invariant refuses with sensitiveData): nothing inline.
        let mut f = scanning(name, SensitiveDataMode::All);
        f.policy.spec.discovery.as_mut().unwrap().enabled = false;
        let g = f.render().unwrap();
        for (file, f) in &g.files {
            assert!(!f.contents.contains("ext_proc"), "{name}: {file}");
        }
        assert!(!g.files.contains_key(SENSOR_CONFIG_FILE), "{name}");
    }
}

#[test]
fn the_config_hash_follows_sensitive_data() {
    let off = scanning("bola-user-orders.yaml", SensitiveDataMode::Off);
    let sampled = scanning("bola-user-orders.yaml", SensitiveDataMode::Sampled);
    let all = scanning("bola-user-orders.yaml", SensitiveDataMode::All);
    let hashes: Vec<String> = [off, sampled, all]
        .iter()
        .map(|f| f.render().unwrap().config_hash)
        .collect();
    assert_ne!(hashes[0], hashes[1]);
    assert_ne!(hashes[1], hashes[2]);
}
