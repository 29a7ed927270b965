//! What the controller writes is what a real Envoy enforces: a policy applied to the real
//! control plane (in-process operator), its ConfigMap `<policy>-apiguard` and Secret
//! `<policy>-apiguard-secrets` copied out of the cluster into a temp dir, and served by the
//! real Envoy in front of an echo upstream that presents the target identity the controller
//! issued (east-west mTLS stays at its default, Strict).
//!
//! Only what a pod would provide is adapted, nothing in the policy semantics:
//! - the mount path `/etc/apiguard/gateway` (RenderOptions' `config_dir` = `secret_dir`, where
//!   the Deployment mounts the ConfigMap and the Secret as one projected volume) is rewritten
//!   to `<tmp>/gateway` in every file, and both objects' files are written there;
//! - the listener address `0.0.0.0:8443` (a pod's own network namespace) becomes a free
//!   127.0.0.1 port, and the admin address `127.0.0.1:9901` a free 127.0.0.1 port, so that
//!   tests can run side by side;
//! - the upstream endpoint `<service>.<namespace>.svc.cluster.local:<port>` (cluster DNS,
//!   absent here) becomes the echo upstream's 127.0.0.1 address. The upstream TLS context
//!   (the gateway's client certificate, the trust bundle, the target's SPIFFE ID to match)
//!   is left as rendered; the upstream serves the `<policy>-apiguard-target-identity` Secret
//!   and requires client certificates from the `apiguard-trust-bundle` roots.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{eventually, with_temp_ns};
use crate::support::controller::Operator;
use crate::support::envoy::{
    HOST, Issuer, Request, Response, TlsClient, echo_upstream_mtls, raw_request, unix_now,
};
use crate::support::tools::{free_port, tool};
use apiguard::api::ApiSecurityPolicy;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test.example/";
const AUDIENCE: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);

fn policy(ns: &str, jwks: &str) -> Value {
    json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": "shop", "namespace": ns},
        "spec": {
            "target": {"service": "shop", "port": 8080},
            "exposure": "Public",
            "hosts": [HOST],
            "authentication": {"jwt": {"providers": [{"name": "test", "issuer": ISSUER,
                "audiences": [AUDIENCE], "jwks": {"inline": jwks}}]}},
            "authorization": {"rules": [
                {"name": "health", "match": {"methods": ["GET"], "paths": ["/healthz"]},
                 "public": true},
                {"name": "read-cart", "match": {"methods": ["GET"], "paths": ["/cart"]},
                 "allow": {"scopes": ["cart:read"]}},
            ]},
        }
    })
}

/// Replaces every `socket_address` equal to (`host`, `port`) by (`new_host`, `new_port`);
/// returns how many were replaced.
fn rewrite_sockets(v: &mut Value, host: &str, port: u64, new_host: &str, new_port: u16) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            if let Some(sa) = map.get_mut("socket_address")
                && sa["address"] == host
                && sa["port_value"].as_u64() == Some(port)
            {
                sa["address"] = json!(new_host);
                sa["port_value"] = json!(new_port);
                n += 1;
            }
            for (_, child) in map.iter_mut() {
                n += rewrite_sockets(child, host, port, new_host, new_port);
            }
            n
        }
        Value::Array(items) => items
            .iter_mut()
            .map(|c| rewrite_sockets(c, host, port, new_host, new_port))
            .sum(),
        _ => 0,
    }
}

fn parse(name: &str, text: &str) -> Value {
    if name.ends_with(".json") {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
    } else {
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

struct Envoy {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn send(port: u16, ca_pem: &str, req: &Request) -> Response {
    let tls = TlsClient::new(ca_pem, None);
    raw_request(([127, 0, 0, 1], port).into(), Some(&tls), None, req)
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controllers_configmap_and_secret_enforce_jwt_and_scopes_in_a_real_envoy() {
    let _group = crate::support::isolation::enter(module_path!());
    let envoy_bin = tool("envoy");
    let _op = Operator::start("envoy-tests", "apiguard-controller-envoy");
    with_temp_ns(|client, ns| async move {
        let issuer = Issuer::new("controller-envoy");
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {"selector": {"app": "shop"}, "ports": [{"name": "http", "port": 8080}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let p: ApiSecurityPolicy = serde_json::from_value(policy(&ns, &issuer.jwks())).unwrap();
        let policies = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        policies.create(&PostParams::default(), &p).await.unwrap();
        eventually(WAIT, "policy shop Ready", || async {
            let p = policies.get("shop").await.ok()?;
            let st = p.status.as_ref()?;
            (st.observed_generation == p.metadata.generation
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True"))
            .then_some(())
        })
        .await;

        // What the controller wrote.
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let config = cms.get("shop-apiguard").await.unwrap().data.unwrap();
        let secret_files = secrets
            .get("shop-apiguard-secrets")
            .await
            .unwrap()
            .data
            .unwrap();
        let target = secrets
            .get("shop-apiguard-target-identity")
            .await
            .unwrap()
            .data
            .unwrap();
        let bundle = cms
            .get("apiguard-trust-bundle")
            .await
            .unwrap()
            .data
            .unwrap()["ca.crt"]
            .clone();
        let text = |b: &k8s_openapi::ByteString| String::from_utf8(b.0.clone()).unwrap();

        let upstream = echo_upstream_mtls(
            &text(&target["tls.crt"]),
            &text(&target["tls.key"]),
            &bundle,
        )
        .await;
        let home = tempfile::tempdir().unwrap();
        // The projected volume: the ConfigMap's and the Secret's files in one directory.
        let gateway_dir = home.path().join("gateway");
        std::fs::create_dir_all(&gateway_dir).unwrap();
        let (config_dir, secret_dir) = (gateway_dir.clone(), gateway_dir.clone());
        let port = free_port();
        let admin_port = free_port();
        let upstream_host = format!("shop.{ns}.svc.cluster.local");
        let (mut listeners, mut admins, mut upstreams) = (0, 0, 0);
        let mut write = |dir: &Path, name: &str, contents: String| {
            let contents = contents.replace("/etc/apiguard/gateway", gateway_dir.to_str().unwrap());
            let contents = if name.ends_with(".json") || name.ends_with(".yaml") {
                let mut v = parse(name, &contents);
                listeners += rewrite_sockets(&mut v, "0.0.0.0", 8443, "127.0.0.1", port);
                admins += rewrite_sockets(&mut v, "127.0.0.1", 9901, "127.0.0.1", admin_port);
                upstreams += rewrite_sockets(
                    &mut v,
                    &upstream_host,
                    8080,
                    "127.0.0.1",
                    upstream.addr.port(),
                );
                // JSON is YAML: the bootstrap keeps its name.
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                contents
            };
            std::fs::write(dir.join(name), contents).unwrap();
        };
        for (name, contents) in &config {
            write(&config_dir, name, contents.clone());
        }
        for (name, contents) in &secret_files {
            write(&secret_dir, name, text(contents));
        }
        assert_eq!(
            (listeners, admins, upstreams),
            (1, 1, 1),
            "expected one listener, admin and upstream address to adapt in {:?}",
            config.keys().collect::<Vec<_>>()
        );

        let log = home.path().join("envoy.log");
        let mut envoy = Envoy {
            child: Command::new(&envoy_bin)
                .arg("-c")
                .arg(config_dir.join("bootstrap.yaml"))
                .args(["--disable-hot-restart", "--concurrency", "1"])
                .args(["--base-id", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .expect("start envoy"),
            log,
        };
        // Ready once the listener accepts connections (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not listening within 30s:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let token = |scope: &str| {
            let now = unix_now();
            issuer.token(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                "scope": scope, "iat": now, "exp": now + 600}))
        };
        let health = send(port, &bundle, &Request::get("/healthz")).await;
        assert_eq!(
            health.status,
            200,
            "public route: {}\n{}",
            health.text(),
            envoy.log()
        );
        assert_eq!(health.json()["path"], "/healthz", "reached the upstream");
        let anon = send(port, &bundle, &Request::get("/cart")).await;
        assert_eq!(anon.status, 401, "no token: {}", anon.text());
        let wrong = send(
            port,
            &bundle,
            &Request::get("/cart").bearer(&token("orders:read")),
        )
        .await;
        assert_eq!(
            wrong.status,
            403,
            "token without the scope: {}",
            wrong.text()
        );
        let right = send(
            port,
            &bundle,
            &Request::get("/cart").bearer(&token("cart:read")),
        )
        .await;
        assert_eq!(right.status, 200, "token with the scope: {}", right.text());
        assert_eq!(right.json()["path"], "/cart");
        let forged = Issuer::new("controller-envoy").token(&json!({"iss": ISSUER,
            "aud": AUDIENCE, "scope": "cart:read", "exp": unix_now() + 600}));
        let forged = send(port, &bundle, &Request::get("/cart").bearer(&forged)).await;
        assert_eq!(
            forged.status,
            401,
            "token from another key: {}",
            forged.text()
        );
    })
    .await;
}
