//! The API the node tests protect: an echo Deployment (the local echo image, serving HTTPS with
//! the target identity the controller issues, requiring the gateway's client certificate) behind
//! an ApiSecurityPolicy with JWT scopes, a public route and an OpenAPI contract (so the gateway
//! pods run the sensor sidecar), and the client side: tokens, the trust bundle, requests to the
//! gateway Service.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::envoy::{Issuer, Request, Response, TlsClient, raw_request, unix_now};
use crate::support::node::{NodeCluster, TestNamespace, is_ready};
use crate::support::tools::wait_until;

/// The policy's name, host and issuer.
pub const POLICY: &str = "orders";
pub const HOST: &str = crate::support::envoy::HOST;
const ISSUER: &str = "https://idp.node.test";
const AUDIENCE: &str = "orders-api";

/// The OpenAPI document of the API (ConfigMap `orders-openapi`).
const OPENAPI: &str = r#"
openapi: 3.1.0
info: {title: Orders, version: "1.0"}
paths:
  /public/{name}:
    get:
      security: []
      parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
      responses: {"200": {description: ok}}
  /orders:
    get:
      responses: {"200": {description: ok}}
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [item]
              properties:
                item: {type: string}
                quantity: {type: integer, minimum: 1}
      responses: {"200": {description: ok}}
"#;

/// The API deployed in a namespace, its policy Ready and its gateway pods Ready.
pub struct Api<'a> {
    pub cluster: &'a NodeCluster,
    pub ns: TestNamespace<'a>,
    pub issuer: Issuer,
}

/// Deploys the API into a new namespace and waits for its gateway. `spec_patch` is merged into
/// the policy's spec (e.g. network settings).
pub fn deploy<'a>(cluster: &'a NodeCluster, prefix: &str, spec_patch: Value) -> Api<'a> {
    let ns = cluster.namespace(prefix);
    let issuer = Issuer::new("node-test");
    let mut spec = json!({
        "target": {"service": "orders", "port": 8080},
        "exposure": "Public",
        "hosts": [HOST],
        "authentication": {"jwt": {"providers": [{
            "name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "jwks": {"inline": issuer.jwks()},
        }]}},
        "authorization": {"defaultAction": "Deny", "rules": [
            {"name": "public", "match": {"methods": ["GET"], "paths": ["/public/*"]}, "public": true},
            {"name": "read", "match": {"methods": ["GET"], "paths": ["/orders"]},
             "allow": {"scopes": ["orders:read"]}},
            {"name": "write", "match": {"methods": ["POST"], "paths": ["/orders"]},
             "allow": {"scopes": ["orders:write"]}},
        ]},
        "openapi": {
            "source": {"configMapRef": {"name": "orders-openapi", "key": "openapi.yaml"}},
            "requests": "Enforce",
            "responses": "Off",
        },
        "network": {"isolation": "Strict"},
    });
    merge(&mut spec, spec_patch);
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "orders-openapi", "namespace": ns.name},
         "data": {"openapi.yaml": OPENAPI}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "orders", "namespace": ns.name}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "orders", "namespace": ns.name, "labels": {"app": "orders"}},
         "spec": {"selector": {"app": "orders"},
                  "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}},
        target_deployment(cluster, &ns.name),
        {"apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
         "metadata": {"name": POLICY, "namespace": ns.name}, "spec": spec},
    ]});
    cluster
        .cp
        .kubectl_ok_with_stdin(["apply", "-f", "-"], &objects.to_string());
    let api = Api {
        cluster,
        ns,
        issuer,
    };
    api.wait_ready();
    api
}

/// The target: the echo image serving HTTPS on 8080 with the target identity Secret the
/// controller issues, as docs/certificates.md tells users to mount it.
fn target_deployment(cluster: &NodeCluster, ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": ns, "labels": {"app": "orders"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {
                "metadata": {"labels": {"app": "orders"}},
                "spec": {
                    "serviceAccountName": "orders",
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                    "containers": [{
                        "name": "api", "image": cluster.echo_image, "imagePullPolicy": "Never",
                        "args": ["serve", "--listen", ":8080", "--tls-dir", "/var/run/apiguard/identity"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "identity",
                            "mountPath": "/var/run/apiguard/identity", "readOnly": true}],
                    }],
                    "volumes": [{"name": "identity", "secret": {
                        "secretName": format!("{POLICY}-apiguard-target-identity"),
                        "defaultMode": 0o440}}],
                },
            },
        },
    })
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch,
    }
}

impl Api<'_> {
    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    /// Waits for the policy's Ready condition and the gateway's and target's pods.
    pub fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(180),
            &format!("policy {}/{POLICY} Ready", self.ns()),
            || {
                let policy = self.cluster.get(self.ns(), "apisecuritypolicy", POLICY)?;
                policy["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    .then_some(())
            },
        );
        self.cluster
            .ready_pods(self.ns(), &self.gateway_selector(), self.gateway_replicas());
        self.cluster.ready_pods(self.ns(), "app=orders", 1);
        // kube-proxy programs the Service's endpoints within its sync period.
        self.cluster
            .wait_service_routed(&self.gateway_addr().ip().to_string());
        let (answer, last) = crate::support::tools::poll_until(
            Duration::from_secs(60),
            || {
                let answer = self.call(&Request::get("/public/ready"));
                let last = format!("{answer:?}");
                (answer.is_ok(), last)
            },
            |(ok, _)| *ok,
        );
        assert!(answer, "the gateway Service does not answer: {last}");
    }

    /// The label selector of the gateway's pods (from its Deployment).
    pub fn gateway_selector(&self) -> String {
        let deployment = self
            .cluster
            .get(self.ns(), "deployment", &format!("{POLICY}-apiguard"))
            .expect("the gateway Deployment exists");
        deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn gateway_replicas(&self) -> usize {
        let deployment = self
            .cluster
            .get(self.ns(), "deployment", &format!("{POLICY}-apiguard"))
            .expect("the gateway Deployment exists");
        deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize
    }

    /// The gateway pods, Ready.
    pub fn gateway_pods(&self) -> Vec<Value> {
        let pods = self.cluster.pods(self.ns(), &self.gateway_selector());
        assert!(
            pods.iter().all(is_ready),
            "gateway pods not Ready: {pods:#?}"
        );
        pods
    }

    /// The gateway Service's ClusterIP and port (reached from the node through kube-proxy).
    pub fn gateway_addr(&self) -> SocketAddr {
        let svc = self
            .cluster
            .get(self.ns(), "service", &format!("{POLICY}-apiguard"))
            .expect("the gateway Service exists");
        let ip = svc["spec"]["clusterIP"].as_str().expect("clusterIP");
        let port = svc["spec"]["ports"][0]["port"].as_u64().expect("port");
        format!("{ip}:{port}").parse().unwrap()
    }

    /// The namespace's trust bundle (the operator CA the gateway's serving certificate chains to).
    pub fn trust_bundle(&self) -> String {
        let cm = self
            .cluster
            .get(self.ns(), "configmap", "apiguard-trust-bundle")
            .expect("the trust bundle ConfigMap exists");
        cm["data"]["ca.crt"].as_str().expect("ca.crt").to_owned()
    }

    /// The gateway's SPIFFE ID (annotation of its identity Secret).
    pub fn gateway_spiffe_id(&self) -> String {
        let secret = self
            .cluster
            .get(
                self.ns(),
                "secret",
                &format!("{POLICY}-apiguard-gateway-identity"),
            )
            .expect("the gateway identity Secret exists");
        secret["metadata"]["annotations"]["apiguard.dev/spiffe-id"]
            .as_str()
            .expect("spiffe-id annotation")
            .to_owned()
    }

    /// A token of the policy's issuer with `scope`.
    pub fn token(&self, scope: &str) -> String {
        let now = unix_now();
        self.issuer.token(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": scope,
            "iat": now, "exp": now + 600,
        }))
    }

    /// One HTTPS request to the gateway Service, verifying its certificate for HOST.
    pub fn call(&self, request: &Request) -> Result<Response, String> {
        let tls = TlsClient::new(&self.trust_bundle(), None);
        let addr = self.gateway_addr();
        runtime().block_on(raw_request(addr, Some(&tls), None, request))
    }

    /// The serial number (hex) of the certificate the gateway serves now, verified against the
    /// trust bundle for HOST; None when the handshake fails (bounded to 10 s).
    pub fn served_certificate_serial(&self) -> Option<String> {
        let tls = TlsClient::new(&self.trust_bundle(), None);
        let addr = self.gateway_addr();
        let der = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                let name = rustls::pki_types::ServerName::try_from(HOST).ok()?;
                let stream = tls.connector().connect(name, tcp).await.ok()?;
                let (_, connection) = stream.get_ref();
                Some(connection.peer_certificates()?.first()?.as_ref().to_vec())
            })
            .await
            .ok()
            .flatten()
        })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some(cert.raw_serial_as_string())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
