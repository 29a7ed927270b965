//! The reconcile call sequence against a scripted in-memory apiserver (tower-test mock,
//! controller-rs `ApiServerVerifier` pattern): create, update/prune, conflict, missing target,
//! delete, and refusal to take over an object someone else owns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiguard::api::{ApiSecurityPolicy, ApiSecurityPolicySpec};
use apiguard::controller::gateway::{GatewayInput, GatewayObjects, GatewayRenderer, RenderError};
use apiguard::controller::reconcile::{
    self, ChildStores, Config, Context, ContextSettings, InputStores,
};
use apiguard::controller::{ControllerMetrics, Health};
use apiguard::identity::CertificateAuthority;
use apiguard::identity::secrets::ca_secret;
use axum::http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tower_test::mock;

const NS: &str = "shop";
const OP_NS: &str = "apiguard-system";

/// A renderer for call-sequence tests: one ConfigMap carrying the spec, one NetworkPolicy.
struct TestRenderer;

impl GatewayRenderer for TestRenderer {
    fn render(&self, input: &GatewayInput<'_>) -> Result<GatewayObjects, RenderError> {
        let name = input.policy.gateway_name();
        let spec =
            serde_json::to_string(&input.policy.spec).map_err(|e| RenderError(e.to_string()))?;
        let hash = format!("{:x}", spec.len() * 31 + input.policy.spec.hosts.len());
        Ok(GatewayObjects {
            config_maps: vec![ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    ("policy.json".to_string(), spec),
                    ("ca.crt".to_string(), input.trust_bundle_pem.to_string()),
                ])),
                ..Default::default()
            }],
            network_policies: vec![NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".into(), "api".into())])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            config_hash: hash,
            gateway_service: name,
            ..Default::default()
        })
    }
}

fn policy(name: &str, uid: &str, created: i64, target: &str) -> ApiSecurityPolicy {
    let spec: ApiSecurityPolicySpec = serde_json::from_value(json!({
        "target": {"service": target, "port": 8080},
        "exposure": "Internal",
        "authorization": {"rules": [{"name": "read", "match": {"methods": ["GET"], "paths": ["/items"]}, "allow": {"scopes": ["items:read"]}}]},
        "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/", "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
    }))
    .unwrap();
    let mut p = ApiSecurityPolicy::new(name, spec);
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some(uid.into());
    p.metadata.generation = Some(1);
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    p
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "uid": "svc-uid", "resourceVersion": "5"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 8080}]}})
}

/// One request as the fake apiserver saw it.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// In-memory apiserver: objects by path; apply stores the body; records every call.
#[derive(Default)]
struct FakeApi {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    rv: u64,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code})
}

impl FakeApi {
    fn respond(&mut self, call: &Call) -> (u16, Value) {
        let path = call.path.clone();
        match call.method {
            Method::GET => match self.objects.get(&path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404, "NotFound")),
            },
            Method::PATCH => {
                self.rv += 1;
                let mut obj = call.body.clone();
                if let Some(base) = path.strip_suffix("/status") {
                    let mut existing = self.objects.get(base).cloned().unwrap_or(json!({}));
                    existing["status"] = obj["status"].clone();
                    self.objects.insert(base.to_string(), existing.clone());
                    return (200, existing);
                }
                obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                obj["metadata"]["uid"] = json!(format!("uid-{}", self.rv));
                self.objects.insert(path, obj.clone());
                (200, obj)
            }
            Method::DELETE => match self.objects.remove(&path) {
                Some(_) => (200, status(200, "Success")),
                None => (404, status(404, "NotFound")),
            },
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }
}

struct Harness {
    ctx: Arc<Context>,
    api: Arc<Mutex<FakeApi>>,
    server: tokio::task::JoinHandle<()>,
    policies: Writer<ApiSecurityPolicy>,
    config_maps: Writer<PartialObjectMeta<ConfigMap>>,
    network_policies: Writer<PartialObjectMeta<NetworkPolicy>>,
    metrics: Arc<ControllerMetrics>,
    _inputs: (Writer<Service>, Writer<Pod>),
}

fn harness(objects: Vec<(String, Value)>) -> Harness {
    // The controller reads Services and Pods from its caches: those given here are listed.
    let (services_in, mut services_writer) = reflector::store::<Service>();
    let (pods_in, mut pods_writer) = reflector::store::<Pod>();
    services_writer.apply_watcher_event(&watcher::Event::Init);
    for (_, v) in objects.iter().filter(|(_, v)| v["kind"] == "Service") {
        services_writer.apply_watcher_event(&watcher::Event::InitApply(
            serde_json::from_value(v.clone()).unwrap(),
        ));
    }
    services_writer.apply_watcher_event(&watcher::Event::InitDone);
    pods_writer.apply_watcher_event(&watcher::Event::Init);
    pods_writer.apply_watcher_event(&watcher::Event::InitDone);
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let api = Arc::new(Mutex::new(FakeApi {
        objects: objects.into_iter().collect(),
        ..Default::default()
    }));
    let server_api = api.clone();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, value) = {
                let mut api = server_api.lock().unwrap();
                let r = api.respond(&call);
                api.calls.push(call);
                r
            };
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap(),
            );
        }
    });

    let now = time::OffsetDateTime::now_utc();
    let ca =
        CertificateAuthority::generate(now - time::Duration::hours(1), time::Duration::days(30))
            .unwrap();
    let mut ca_obj = ca_secret("apiguard-ca", OP_NS, &ca);
    ca_obj.metadata.resource_version = Some("1".into());
    let (ca_reader, mut ca_writer) = reflector::store::<Secret>();
    ca_writer.apply_watcher_event(&watcher::Event::Apply(ca_obj));

    let (policies, policy_writer) = reflector::store::<ApiSecurityPolicy>();
    let (config_maps, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let (secrets, _sw) = reflector::store();
    let (deployments, _dw) = reflector::store();
    let (services, _svw) = reflector::store();
    let (network_policies, np_writer) = reflector::store::<PartialObjectMeta<NetworkPolicy>>();
    let metrics = Arc::new(ControllerMetrics::default());
    let ctx = Arc::new(Context::new(ContextSettings {
        client,
        config: Config {
            operator_namespace: OP_NS.into(),
            trust_domain: "cluster.local".into(),
            ca_secret: "apiguard-ca".into(),
            leaf_lifetime: time::Duration::hours(24),
            concurrency: apiguard::controller::Config::DEFAULT_CONCURRENCY,
            debounce: apiguard::controller::Config::DEFAULT_DEBOUNCE,
            ca_rotation_propagation: apiguard::controller::Config::DEFAULT_CA_ROTATION_PROPAGATION,
        },
        renderer: Arc::new(TestRenderer),
        policies,
        children: ChildStores {
            config_maps,
            secrets,
            deployments,
            services,
            network_policies,
        },
        inputs: InputStores {
            services: services_in,
            pods: pods_in,
        },
        ca_secret: ca_reader,
        recorder: None,
        metrics: metrics.clone(),
        health: Arc::new(Health::default()),
    }));
    Harness {
        ctx,
        api,
        server,
        policies: policy_writer,
        config_maps: cm_writer,
        network_policies: np_writer,
        metrics,
        _inputs: (services_writer, pods_writer),
    }
}

impl Harness {
    fn add_policy(&mut self, p: &ApiSecurityPolicy) {
        self.policies
            .apply_watcher_event(&watcher::Event::Apply(p.clone()));
        let path = format!(
            "/apis/apiguard.dev/v1alpha1/namespaces/{NS}/apisecuritypolicies/{}",
            p.name_any()
        );
        self.api
            .lock()
            .unwrap()
            .objects
            .insert(path, serde_json::to_value(p).unwrap());
    }
    async fn reconcile(
        &self,
        p: &ApiSecurityPolicy,
    ) -> Result<kube::runtime::controller::Action, reconcile::Error> {
        tokio::time::timeout(
            Duration::from_secs(20),
            reconcile::reconcile(Arc::new(p.clone()), self.ctx.clone()),
        )
        .await
        .expect("reconcile finished in time")
    }
    async fn finish(self) -> Vec<Call> {
        drop(self.ctx);
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("fake apiserver ended")
            .unwrap();
        Arc::try_unwrap(self.api)
            .ok()
            .expect("only owner")
            .into_inner()
            .unwrap()
            .calls
    }
}

const SVC: &str = "/api/v1/namespaces/shop/services/api";
const POLICY: &str = "/apis/apiguard.dev/v1alpha1/namespaces/shop/apisecuritypolicies/payments";

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn condition<'a>(status_body: &'a Value, type_: &str) -> &'a Value {
    status_body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status_body}"))
}

#[tokio::test]
async fn create_applies_every_child_with_owner_and_writes_ready_status() {
    let p = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&p);
    let action = h.reconcile(&p).await.unwrap();
    // Requeued at the certificates' renewal (2/3 of 24h), not the hourly resync... capped by it.
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
    let metrics = h.metrics.clone();
    let calls = h.finish().await;
    let secrets = "/api/v1/namespaces/shop/secrets";
    let cms = "/api/v1/namespaces/shop/configmaps";
    let nps = "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies";
    assert_eq!(
        lines(&calls),
        vec![
            // Read once (to keep or renew the certificates), then written without a second look.
            format!("GET {secrets}/payments-apiguard-gateway-identity"),
            format!("GET {secrets}/payments-apiguard-target-identity"),
            format!("PATCH {secrets}/payments-apiguard-gateway-identity"),
            format!("PATCH {secrets}/payments-apiguard-target-identity"),
            format!("GET {cms}/apiguard-trust-bundle"),
            format!("PATCH {cms}/apiguard-trust-bundle"),
            format!("GET {cms}/payments-apiguard"),
            format!("PATCH {cms}/payments-apiguard"),
            format!("GET {nps}/payments-apiguard"),
            format!("PATCH {nps}/payments-apiguard"),
            format!("PATCH {POLICY}/status"),
        ]
    );
    for c in calls.iter().filter(|c| c.method == Method::PATCH) {
        assert!(
            c.query.contains("fieldManager=apiguard"),
            "{}: {}",
            c.line(),
            c.query
        );
        assert!(c.query.contains("force=true"), "{}: {}", c.line(), c.query);
        assert!(c.body["apiVersion"].as_str().is_some(), "{}", c.line());
        if c.path.ends_with("/status") || c.path.ends_with("apiguard-trust-bundle") {
            continue;
        }
        let owners = &c.body["metadata"]["ownerReferences"];
        assert_eq!(owners[0]["uid"], "p-uid", "{}", c.line());
        assert_eq!(owners[0]["controller"], true, "{}", c.line());
        assert_eq!(
            c.body["metadata"]["labels"]["apiguard.dev/policy"],
            "payments"
        );
        assert_eq!(
            c.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "apiguard"
        );
    }
    let bundle = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path.ends_with("apiguard-trust-bundle"))
        .unwrap();
    assert_eq!(
        bundle.body["metadata"]["ownerReferences"][0]["controller"],
        false
    );
    let gw = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path.ends_with("gateway-identity"))
        .unwrap();
    assert_eq!(gw.body["type"], "kubernetes.io/tls");
    assert_eq!(
        gw.body["metadata"]["annotations"]["apiguard.dev/spiffe-id"],
        "spiffe://cluster.local/ns/shop/sa/payments-apiguard"
    );
    let status = &calls.last().unwrap().body;
    assert_eq!(status["status"]["observedGeneration"], 1);
    for t in [
        "Accepted",
        "Programmed",
        "CertificatesReady",
        "NetworkIsolated",
        "Ready",
    ] {
        assert_eq!(condition(status, t)["status"], "True", "{t}: {status}");
        assert_eq!(condition(status, t)["observedGeneration"], 1);
    }
    assert_eq!(status["status"]["gateway"]["service"], "payments-apiguard");
    assert!(status["status"]["gateway"]["configHash"].as_str().is_some());
    assert_eq!(
        status["status"]["certificates"].as_array().unwrap().len(),
        2
    );
    assert_eq!(metrics.policies_with("Ready"), 1);
}

fn meta<K>(v: &Value) -> PartialObjectMeta<K> {
    PartialObjectMeta {
        types: None,
        metadata: serde_json::from_value(v["metadata"].clone()).unwrap(),
        _phantom: Default::default(),
    }
}

#[tokio::test]
async fn an_unchanged_policy_is_not_rewritten_on_the_second_pass() {
    let mut p = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&p);
    h.reconcile(&p).await.unwrap();
    // Feed back what the first pass wrote: status and the children's metadata in the caches.
    let (status, cm, np) = {
        let api = h.api.lock().unwrap();
        let status = api.objects[POLICY]["status"].clone();
        let cm = api.objects["/api/v1/namespaces/shop/configmaps/payments-apiguard"].clone();
        let np = api.objects["/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/payments-apiguard"].clone();
        drop(api);
        (status, cm, np)
    };
    p.status = Some(serde_json::from_value(status).unwrap());
    h.add_policy(&p);
    h.config_maps
        .apply_watcher_event(&watcher::Event::Apply(meta::<ConfigMap>(&cm)));
    h.network_policies
        .apply_watcher_event(&watcher::Event::Apply(meta::<NetworkPolicy>(&np)));
    h.api.lock().unwrap().calls.clear();
    h.reconcile(&p).await.unwrap();
    let calls = h.finish().await;
    let writes: Vec<_> = lines(&calls)
        .into_iter()
        .filter(|l| !l.starts_with("GET"))
        .collect();
    // The kept certificates are re-applied only because the Secret cache is empty in this
    // harness; the cached ConfigMap and NetworkPolicy and the status are not written again.
    assert!(
        !writes
            .iter()
            .any(|l| l.ends_with("configmaps/payments-apiguard")),
        "{writes:?}"
    );
    assert!(
        !writes.iter().any(|l| l.contains("networkpolicies")),
        "{writes:?}"
    );
    assert!(!writes.iter().any(|l| l.ends_with("/status")), "{writes:?}");
}

#[tokio::test]
async fn an_update_prunes_children_it_no_longer_wants() {
    let p = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&p);
    // A NetworkPolicy from an earlier version of the policy, and one someone else owns with
    // the same label: only the first goes.
    let owned = |name: &str, uid: &str| PartialObjectMeta::<NetworkPolicy> {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("{name}-uid")),
            labels: Some(BTreeMap::from([
                ("apiguard.dev/policy".into(), "payments".into()),
                ("app.kubernetes.io/managed-by".into(), "apiguard".into()),
            ])),
            owner_references: Some(vec![
                p.controller_owner_ref(&())
                    .map(|mut o| {
                        o.uid = uid.into();
                        o
                    })
                    .unwrap(),
            ]),
            ..Default::default()
        },
        _phantom: Default::default(),
    };
    h.network_policies
        .apply_watcher_event(&watcher::Event::Apply(owned(
            "payments-apiguard-egress",
            "p-uid",
        )));
    h.network_policies
        .apply_watcher_event(&watcher::Event::Apply(owned("foreign", "someone-else")));
    h.reconcile(&p).await.unwrap();
    let calls = h.finish().await;
    let deletes: Vec<_> = calls
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .collect();
    assert_eq!(deletes.len(), 1, "{:?}", lines(&calls));
    assert_eq!(
        deletes[0].path,
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/payments-apiguard-egress"
    );
    // Deleted with a uid precondition so a re-created object of the same name survives.
    assert_eq!(
        deletes[0].body["preconditions"]["uid"],
        "payments-apiguard-egress-uid"
    );
}

#[tokio::test]
async fn the_newer_of_two_policies_on_one_service_is_refused_with_conflict() {
    let older = policy("orders", "o-uid", 50, "api");
    let newer = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&older);
    h.add_policy(&newer);
    h.reconcile(&newer).await.unwrap();
    let calls = h.finish().await;
    // No Service read, no child written: straight to status.
    assert_eq!(lines(&calls), vec![format!("PATCH {POLICY}/status")]);
    let status = &calls[0].body;
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Conflict");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("shop/orders"),
        "{accepted}"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
}

#[tokio::test]
async fn a_missing_target_is_reported_and_nothing_is_created() {
    let p = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![]);
    h.add_policy(&p);
    h.reconcile(&p).await.unwrap();
    let calls = h.finish().await;
    assert_eq!(lines(&calls), vec![format!("PATCH {POLICY}/status")]);
    let status = &calls[0].body;
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "TargetNotFound");
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "TargetNotFound");
}

#[tokio::test]
async fn a_global_rate_limit_without_redis_programs_nothing_and_says_why() {
    // The test renderer, like an operator without --redis-url, has no shared state store.
    let mut p = policy("payments", "p-uid", 100, "api");
    p.spec.rate_limits = serde_json::from_value(json!([
        {"name": "per-client", "limit": {"requests": 100, "per": "Minute"}},
        {"name": "checkout", "scope": "Global", "limit": {"requests": 10, "per": "Minute"}},
    ]))
    .unwrap();
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&p);
    h.reconcile(&p).await.unwrap();
    let calls = h.finish().await;
    // Nothing applied or pruned: the gateway keeps what it had.
    assert_eq!(lines(&calls), vec![format!("PATCH {POLICY}/status")]);
    let status = &calls[0].body;
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "GlobalRateLimitWithoutRedis");
    let message = programmed["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.rateLimits[1].scope is Global")
            && message.contains("--redis-url"),
        "{message}"
    );
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(
        condition(status, "Ready")["reason"],
        "GlobalRateLimitWithoutRedis"
    );
}

#[tokio::test]
async fn the_trust_bundle_is_owned_by_the_namespaces_oldest_policy_only() {
    // Two policies on different Services: the bundle's one owner is the older policy, whoever
    // reconciles, so a new policy does not rewrite it (nor re-trigger every policy).
    let older = policy("orders", "o-uid", 50, "web");
    let newer = policy("payments", "p-uid", 100, "api");
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&newer);
    h.add_policy(&older);
    h.reconcile(&newer).await.unwrap();
    let calls = h.finish().await;
    let bundle = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path.ends_with("apiguard-trust-bundle"))
        .expect("the bundle is applied");
    let owners = bundle.body["metadata"]["ownerReferences"]
        .as_array()
        .unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0]["uid"], "o-uid");
    assert_eq!(owners[0]["controller"], false);
}

#[tokio::test]
async fn a_policy_being_deleted_makes_no_call() {
    let mut p = policy("payments", "p-uid", 100, "api");
    p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
    let h = harness(vec![(SVC.to_string(), service("api"))]);
    h.reconcile(&p).await.unwrap();
    assert!(h.finish().await.is_empty());
}

#[tokio::test]
async fn an_object_someone_else_owns_is_not_taken_over() {
    let p = policy("payments", "p-uid", 100, "api");
    let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "payments-apiguard", "namespace": NS, "uid": "x", "resourceVersion": "3"},
        "data": {"mine": "yes"}});
    let mut h = harness(vec![
        (SVC.to_string(), service("api")),
        (
            "/api/v1/namespaces/shop/configmaps/payments-apiguard".into(),
            foreign,
        ),
    ]);
    h.add_policy(&p);
    let err = h.reconcile(&p).await;
    assert!(
        err.is_ok(),
        "NotOwned is a condition, not a retry loop: {err:?}"
    );
    let calls = h.finish().await;
    assert!(
        !lines(&calls)
            .contains(&"PATCH /api/v1/namespaces/shop/configmaps/payments-apiguard".to_string()),
        "{:?}",
        lines(&calls)
    );
    let status = &calls.last().unwrap().body;
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "NotOwned");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("ConfigMap shop/payments-apiguard")
    );
}

#[tokio::test]
async fn an_invalid_policy_is_refused_with_its_rule_id() {
    let mut p = policy("payments", "p-uid", 100, "api");
    p.spec.cors = Some(serde_json::from_value(json!({"allowOrigins": ["*"]})).unwrap());
    let mut h = harness(vec![(SVC.to_string(), service("api"))]);
    h.add_policy(&p);
    h.reconcile(&p).await.unwrap();
    let calls = h.finish().await;
    assert_eq!(lines(&calls), vec![format!("PATCH {POLICY}/status")]);
    let accepted = condition(&calls[0].body, "Accepted");
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"].as_str().unwrap().contains("APG001"),
        "{accepted}"
    );
}

#[tokio::test]
async fn healthz_fails_while_a_reconcile_is_wedged() {
    use apiguard::admin::{AdminState, Metrics, Readiness, router};
    use tower::ServiceExt;
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let readiness = Arc::new(Readiness::new());
    {
        let health = health.clone();
        readiness.liveness_check(Arc::new(move || health.live(std::time::Instant::now())));
    }
    let state = AdminState {
        metrics: Arc::new(Metrics::new()),
        readiness,
    };
    let get = |state: AdminState| async move {
        let resp = router(state)
            .oneshot(
                axum::http::Request::get("/healthz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    };
    assert_eq!(get(state.clone()).await.0, 200);
    health.started(
        "shop/stuck",
        std::time::Instant::now() - Duration::from_secs(61),
    );
    let (code, body) = get(state.clone()).await;
    assert_eq!(code, 503);
    assert!(body.contains("shop/stuck"), "{body}");
    health.finished("shop/stuck");
    assert_eq!(get(state).await.0, 200);
}
