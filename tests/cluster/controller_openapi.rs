//! `spec.openapi` against the real control plane: the controller reads the document from the
//! referenced ConfigMap (watched), sets ContractLoaded, renders `sensor.yaml` and the sensor
//! sidecar, and leaves the gateway as it was while the contract does not load.

use std::sync::Arc;
use std::time::Duration;

use crate::support::cluster::{eventually, with_temp_ns};
use crate::support::controller::Operator;
use apiguard::api::ApiSecurityPolicy;
use apiguard::sensor::config::{SENSOR_CONFIG_FILE, SensorConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const DOCUMENT: &str = "openapi: 3.1.0\ninfo: {title: items, version: '1'}\npaths:\n  /items:\n    get:\n      responses: {'200': {description: ok}}\n";
/// A status code that does not exist: the pointer of the problem is in the message.
const INVALID: &str = "openapi: 3.1.0\ninfo: {title: items, version: '1'}\npaths:\n  /items:\n    get:\n      responses: {'9000': {description: ok}}\n";

fn operator() -> Arc<Operator> {
    crate::support::isolation::shared(|| Operator::start("openapi-tests", "apiguard-controller"))
}

async fn create<K>(client: &Client, ns: &str, value: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("object");
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", K::kind(&())));
}

fn policy(ns: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": "items", "namespace": ns},
        "spec": {
            "target": {"service": "api", "port": 8080},
            "exposure": "Internal",
            "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
            "authorization": {"rules": [{"name": "read", "match": {"methods": ["GET"], "paths": ["/items"]},
                "allow": {"scopes": ["items:read"]}}]},
            "openapi": {"source": {"configMapRef": {"name": "items-openapi", "key": "openapi.yaml"}},
                        "requests": "Enforce", "responses": "Redact"},
        }
    })
}

fn config_map(ns: &str, document: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "items-openapi", "namespace": ns},
        "data": {"openapi.yaml": document},
    })
}

/// Waits for ContractLoaded with `status` and `reason` on the current generation; returns
/// its message.
async fn contract_loaded(client: &Client, ns: &str, status: &str, reason: &str) -> String {
    let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("ContractLoaded={status} ({reason})"),
        || async {
            let p = api.get("items").await.ok()?;
            let s = p.status.as_ref()?;
            let c = s.conditions.iter().find(|c| c.type_ == "ContractLoaded")?;
            (s.observed_generation == p.metadata.generation
                && c.status == status
                && c.reason == reason)
                .then(|| c.message.clone())
        },
    )
    .await
}

/// The document in the gateway ConfigMap's `sensor.yaml` (None: no ConfigMap or no file).
async fn gateway_document(client: &Client, ns: &str) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt("items-apiguard")
        .await
        .expect("reading the gateway ConfigMap")?;
    let text = cm.data?.get(SENSOR_CONFIG_FILE)?.clone();
    let config = SensorConfig::from_yaml(SENSOR_CONFIG_FILE, &text).expect("sensor.yaml parses");
    Some(config.openapi?.document)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_contract_comes_from_its_config_map_and_a_bad_one_keeps_the_gateway() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create::<Service>(
            &client,
            &ns,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "api", "namespace": ns},
                "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 8080}]},
            }),
        )
        .await;
        create::<ApiSecurityPolicy>(&client, &ns, policy(&ns)).await;

        // No ConfigMap yet: ContractLoaded=False, Ready=False, and no gateway at all.
        let message = contract_loaded(&client, &ns, "False", "ConfigMapNotFound").await;
        assert!(
            message.contains(&format!("ConfigMap {ns}/items-openapi does not exist")),
            "{message}"
        );
        let p = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns)
            .get("items")
            .await
            .unwrap();
        let ready = p
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ConfigMapNotFound")
        );
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        assert!(
            cms.get_opt("items-apiguard").await.unwrap().is_none(),
            "no gateway without a contract"
        );

        // The ConfigMap appears (the watch brings the policy back): loaded and rendered.
        create::<ConfigMap>(&client, &ns, config_map(&ns, DOCUMENT)).await;
        contract_loaded(&client, &ns, "True", "Loaded").await;
        eventually(WAIT, "sensor.yaml with the document", || async {
            (gateway_document(&client, &ns).await? == DOCUMENT).then_some(())
        })
        .await;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("items-apiguard")
            .await
            .unwrap();
        let containers = deployment.spec.unwrap().template.spec.unwrap().containers;
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["envoy", "sensor"]);

        // An invalid edit: ContractLoaded=False naming the ConfigMap, key and pointer; the
        // gateway keeps the previous document; a warning Event says why.
        cms.patch(
            "items-openapi",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"openapi.yaml": INVALID}})),
        )
        .await
        .expect("editing the ConfigMap");
        let message = contract_loaded(&client, &ns, "False", "InvalidOpenAPI").await;
        assert!(
            message.contains(&format!("ConfigMap {ns}/items-openapi key openapi.yaml"))
                && message.contains("/paths/~1items/get/responses/9000"),
            "{message}"
        );
        assert!(
            message.contains("the gateway enforces the last OpenAPI document that loaded"),
            "{message}"
        );
        assert_eq!(
            gateway_document(&client, &ns).await.as_deref(),
            Some(DOCUMENT)
        );
        // The rest of the policy still goes out with the last good contract: a new rule is
        // rendered (and certificates would be renewed), the document stays.
        Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns)
            .patch(
                "items",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"authorization": {"rules": [
                    {"name": "read", "match": {"methods": ["GET"], "paths": ["/items"]},
                     "allow": {"scopes": ["items:read"]}},
                    {"name": "audit-log", "match": {"methods": ["GET"], "paths": ["/audit"]},
                     "allow": {"scopes": ["audit:read"]}}]}}})),
            )
            .await
            .expect("adding a rule");
        contract_loaded(&client, &ns, "False", "InvalidOpenAPI").await;
        eventually(
            WAIT,
            "the new rule rendered beside the kept document",
            || async {
                let cm = cms.get_opt("items-apiguard").await.ok()??;
                let text = cm.data?.get(SENSOR_CONFIG_FILE)?.clone();
                let config = SensorConfig::from_yaml(SENSOR_CONFIG_FILE, &text).ok()?;
                let declared = config.discovery?.declared;
                (declared.iter().any(|r| r.rule == "audit-log")
                    && config.openapi?.document == DOCUMENT)
                    .then_some(())
            },
        )
        .await;
        let p = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns)
            .get("items")
            .await
            .unwrap();
        let programmed = p
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Programmed")
            .unwrap();
        assert_eq!(programmed.status, "True", "{programmed:?}");
        let events = Api::<Event>::namespaced(client.clone(), &ns);
        eventually(WAIT, "InvalidOpenAPI Event", || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("InvalidOpenAPI")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        })
        .await;
    })
    .await;
}
