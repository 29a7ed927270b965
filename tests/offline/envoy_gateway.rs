//! A real Envoy serving `apiguard render --envoy-dir` output on 127.0.0.1, in front of an echo
//! upstream started by the test: every enforcement promise of a policy, one assertion each.

use crate::support::envoy::{Gateway, Issuer, Request, echo_upstream, unix_now};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test.example/";
const AUDIENCE: &str = "shop-api";

/// Policy with JWT + scopes + ownership + CORS + rate limit + body limit + API keys.
fn manifests(jwks: &str, mode: &str, login_limit: u32) -> String {
    format!(
        r#"
apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: shop, namespace: test}}
spec:
  target: {{service: shop, port: 8080}}
  exposure: Public
  hosts: [api.test.example]
  mode: {mode}
  authentication:
    jwt:
      providers:
      - name: test
        issuer: {ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{inline: '{jwks}'}}
        clockSkew: 5s
        forwardClaims: [{{claim: sub, header: x-user-id}}]
    apiKeys:
      secretRef: {{name: shop-keys}}
      header: x-api-key
  authorization:
    rules:
    - name: read-own-orders
      match: {{methods: [GET], paths: ["/users/{{userId}}/orders"]}}
      allow: {{scopes: ["orders:read"]}}
      ownership: {{pathParam: userId, claim: sub}}
    - name: read-cart
      match: {{methods: [GET], paths: ["/cart"]}}
      allow: {{scopes: ["cart:read"]}}
    - name: write-cart
      match: {{methods: [POST], paths: ["/cart"]}}
      allow: {{scopes: ["cart:write"]}}
    - name: login
      match: {{methods: [POST], paths: ["/login"]}}
      public: true
    - name: health
      match: {{methods: [GET], paths: ["/healthz"]}}
      public: true
    - name: partner-reports
      match: {{methods: [GET], paths: ["/reports"]}}
      allow: {{apiKeyClients: [acme]}}
  cors:
    allowOrigins: ["https://shop.example", "https://*.shop.example"]
    allowMethods: [GET, POST]
    allowHeaders: [authorization, content-type]
    allowCredentials: true
    maxAge: 10m
  rateLimits:
  - name: login
    match: {{methods: [POST], paths: ["/login"]}}
    limit: {{requests: {login_limit}, per: Minute}}
    by: {{clientIP: {{}}}}
  requestValidation:
    maxBodyBytes: 1024
    allowedContentTypes: [application/json]
  eastWest: {{mtls: Disabled}}
  audit: {{accessLog: true, includeClaims: [sub]}}
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: test}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-keys, namespace: test}}
stringData:
  acme: acme-key-0123456789abcdef
  globex: globex-key-0123456789abcdef
"#
    )
}

struct Fixture {
    issuer: Issuer,
    gateway: Gateway,
    _upstream: crate::support::envoy::Upstream,
}

async fn start(mode: &str) -> Fixture {
    let issuer = Issuer::new("test-key");
    let upstream = echo_upstream().await;
    let gateway = Gateway::start(&manifests(&issuer.jwks(), mode, 3), upstream.addr).await;
    Fixture {
        issuer,
        gateway,
        _upstream: upstream,
    }
}

fn claims(sub: &str, scope: &str) -> Value {
    let now = unix_now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "iat": now, "exp": now + 600})
}

impl Fixture {
    fn token(&self, sub: &str, scope: &str) -> String {
        self.issuer.token(&claims(sub, scope))
    }
    async fn get(&self, path: &str, token: Option<&str>) -> crate::support::envoy::Response {
        let mut r = Request::get(path);
        if let Some(t) = token {
            r = r.bearer(t);
        }
        self.gateway.send(&r).await
    }
}

#[tokio::test]
async fn jwt_authentication_failures_are_401_and_wrong_audience_is_refused() {
    let f = start("Enforce").await;

    let r = f.get("/cart", None).await;
    assert_eq!(r.status, 401, "no token -> 401: {}", r.text());

    let now = unix_now();
    let mut expired = claims("alice", "cart:read");
    expired["iat"] = json!(now - 3600);
    expired["exp"] = json!(now - 1800);
    let r = f.get("/cart", Some(&f.issuer.token(&expired))).await;
    assert_eq!(r.status, 401, "expired token -> 401: {}", r.text());

    let mut wrong_iss = claims("alice", "cart:read");
    wrong_iss["iss"] = json!("https://evil.example/");
    let r = f.get("/cart", Some(&f.issuer.token(&wrong_iss))).await;
    assert_eq!(r.status, 401, "wrong issuer -> 401: {}", r.text());

    let other = Issuer::new("test-key");
    let r = f
        .get("/cart", Some(&other.token(&claims("alice", "cart:read"))))
        .await;
    assert_eq!(r.status, 401, "bad signature -> 401: {}", r.text());

    let mut wrong_aud = claims("alice", "cart:read");
    wrong_aud["aud"] = json!("other-api");
    let r = f.get("/cart", Some(&f.issuer.token(&wrong_aud))).await;
    assert!(
        r.status == 401 || r.status == 403,
        "wrong audience -> 401 or 403 (Envoy answers 403), got {}: {}",
        r.status,
        r.text()
    );

    let r = f.get("/cart", Some("not.a.jwt")).await;
    assert_eq!(r.status, 401, "malformed token -> 401: {}", r.text());
}

#[tokio::test]
async fn scopes_ownership_and_forwarded_claims() {
    let f = start("Enforce").await;

    let r = f.get("/cart", Some(&f.token("alice", "orders:read"))).await;
    assert_eq!(
        r.status,
        403,
        "valid token without the scope -> 403: {}",
        r.text()
    );

    let token = f.token("alice", "openid cart:read");
    let r = f
        .gateway
        .send(
            &Request::get("/cart")
                .bearer(&token)
                .header("x-user-id", "mallory"),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "valid token with the scope -> 200: {}",
        r.text()
    );
    assert_eq!(
        r.upstream_header("x-user-id"),
        vec!["alice".to_string()],
        "upstream sees the forwarded sub claim and not the spoofed copy"
    );
    assert!(
        r.upstream_header("x-apiguard-client-id").is_empty(),
        "no client id without an API key"
    );

    let r = f
        .get("/users/alice/orders", Some(&f.token("bob", "orders:read")))
        .await;
    assert_eq!(
        r.status,
        403,
        "/users/alice/orders with sub=bob -> 403: {}",
        r.text()
    );
    assert_eq!(r.text(), "forbidden\n", "the ownership refusal's own body");
    let lines = f
        .gateway
        .access_log_until(|l| l["decision"] == "deny:ownership")
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l["decision"] == "deny:ownership" && l["subject"] == "bob"),
        "the ownership refusal is logged as deny:ownership: {lines:?}"
    );
    let r = f
        .get(
            "/users/alice/orders",
            Some(&f.token("alice", "orders:read")),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "/users/alice/orders with sub=alice -> 200: {}",
        r.text()
    );
    let r = f
        .get(
            "/users/alice/orders?x=/users/bob",
            Some(&f.token("bob", "orders:read")),
        )
        .await;
    assert_eq!(
        r.status, 403,
        "a query string does not fool the ownership check"
    );

    let r = f.get("/healthz", None).await;
    assert_eq!(
        r.status,
        200,
        "public route -> 200 without a token: {}",
        r.text()
    );

    let r = f.get("/admin", Some(&f.token("alice", "cart:read"))).await;
    assert!(
        r.status == 404 || r.status == 403,
        "undeclared route -> 403/404, got {}",
        r.status
    );
    let r = f
        .gateway
        .send(&Request::new("DELETE", "/cart").bearer(&f.token("alice", "cart:read")))
        .await;
    assert_eq!(r.status, 404, "undeclared method on a declared path -> 404");
}

#[tokio::test]
async fn cors_preflight_only_for_allowed_origins() {
    let f = start("Enforce").await;
    let preflight = |origin: &str| {
        Request::new("OPTIONS", "/cart")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
    };
    let r = f.gateway.send(&preflight("https://shop.example")).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example"),
        "preflight from an allowed origin gets the CORS headers ({}): {:?}",
        r.status,
        r.headers
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = f.gateway.send(&preflight("https://app.shop.example")).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.shop.example"),
        "subdomain pattern origin is allowed"
    );
    let r = f.gateway.send(&preflight("https://evil.example")).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "preflight from another origin gets no CORS headers ({})",
        r.status
    );
    let r = f
        .gateway
        .send(&preflight("https://shop.example.evil.example"))
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "suffix trick refused"
    );
}

#[tokio::test]
async fn login_rate_limit_is_per_client() {
    let f = start("Enforce").await;
    let login = |ip: [u8; 4]| Request::post("/login").json("{}").from(ip.into());
    for i in 0..3 {
        let r = f.gateway.send(&login([127, 0, 0, 1])).await;
        assert_eq!(
            r.status,
            200,
            "login {i} within the limit -> 200: {}",
            r.text()
        );
    }
    let r = f.gateway.send(&login([127, 0, 0, 1])).await;
    assert_eq!(
        r.status, 429,
        "login after its limit -> 429 for that client"
    );
    let r = f.gateway.send(&login([127, 0, 0, 2])).await;
    assert_eq!(r.status, 200, "another client still gets 200: {}", r.text());
}

#[tokio::test]
async fn request_validation() {
    let f = start("Enforce").await;
    let token = f.token("alice", "cart:write");
    let r = f
        .gateway
        .send(
            &Request::post("/cart")
                .bearer(&token)
                .json(&format!("\"{}\"", "x".repeat(2048))),
        )
        .await;
    assert_eq!(r.status, 413, "body over the limit -> 413");
    let r = f
        .gateway
        .send(&Request::post("/cart").bearer(&token).json("{}"))
        .await;
    assert_eq!(r.status, 200, "body within the limit -> 200: {}", r.text());
    let r = f
        .gateway
        .send(
            &Request::post("/cart")
                .bearer(&token)
                .header("content-type", "text/xml")
                .body(b"<a/>".to_vec()),
        )
        .await;
    assert_eq!(r.status, 415, "disallowed content type -> 415");
    let r = f
        .gateway
        .send(&Request::post("/cart").bearer(&token).body(b"{}".to_vec()))
        .await;
    assert_eq!(r.status, 415, "body without a content type -> 415");
    let r = f
        .gateway
        .send(
            &Request::get("/cart")
                .bearer(&f.token("alice", "cart:read"))
                .header("x_user_id", "x"),
        )
        .await;
    assert_eq!(r.status, 400, "header with underscores -> 400");
    let r = f
        .get(
            "/users/alice%2Fbob/orders",
            Some(&f.token("alice", "orders:read")),
        )
        .await;
    assert_eq!(r.status, 400, "escaped slash -> 400");
    let r = f.get("//healthz", None).await;
    assert_eq!(r.status, 200, "merged slashes reach the declared route");
}

#[tokio::test]
async fn api_keys() {
    let f = start("Enforce").await;
    let r = f.gateway.send(&Request::get("/reports")).await;
    assert_eq!(r.status, 401, "no API key -> 401");
    let r = f
        .gateway
        .send(&Request::get("/reports").header("x-api-key", "wrong"))
        .await;
    assert_eq!(r.status, 401, "wrong API key -> 401");
    let r = f
        .gateway
        .send(&Request::get("/reports").header("x-api-key", "globex-key-0123456789abcdef"))
        .await;
    assert_eq!(
        r.status, 403,
        "valid key of a client the rule does not allow -> 403"
    );
    let r = f
        .gateway
        .send(
            &Request::get("/reports")
                .header("x-api-key", "acme-key-0123456789abcdef")
                .header("x-apiguard-client-id", "globex"),
        )
        .await;
    assert_eq!(r.status, 200, "allowed client -> 200: {}", r.text());
    assert_eq!(
        r.upstream_header("x-apiguard-client-id"),
        vec!["acme".to_string()],
        "client id forwarded, spoofed copy stripped"
    );
    assert!(
        r.upstream_header("x-api-key").is_empty(),
        "the key is not forwarded"
    );
}

#[tokio::test]
async fn access_log_and_audit_mode() {
    let f = start("Enforce").await;
    let r = f.get("/cart", Some(&f.token("alice", "cart:read"))).await;
    assert_eq!(r.status, 200);
    let r = f.get("/cart", Some(&f.token("bob", "nothing"))).await;
    assert_eq!(r.status, 403);
    let lines = f.gateway.access_log_until(|l| l["subject"] == "bob").await;
    let alice = lines
        .iter()
        .find(|l| l["subject"] == "alice")
        .unwrap_or_else(|| panic!("an access log line with subject alice: {lines:?}"));
    assert_eq!(
        alice["decision"], "allow",
        "allowed request logged as allow: {alice}"
    );
    assert_eq!(alice["rule"], "read-cart", "the rule is logged: {alice}");
    assert_eq!(alice["status"], 200);
    let bob = lines
        .iter()
        .find(|l| l["subject"] == "bob")
        .unwrap_or_else(|| panic!("an access log line with subject bob: {lines:?}"));
    assert_eq!(
        bob["decision"], "deny",
        "denied request logged as deny: {bob}"
    );
    assert_eq!(bob["status"], 403);
    drop(f);

    let audit = start("Audit").await;
    let r = audit
        .get("/cart", Some(&audit.token("bob", "nothing")))
        .await;
    assert_eq!(
        r.status,
        200,
        "Audit admits a request without the scope: {}",
        r.text()
    );
    let r = audit
        .get(
            "/users/alice/orders",
            Some(&audit.token("bob", "orders:read")),
        )
        .await;
    assert_eq!(r.status, 200, "Audit admits a foreign owner");
    let r = audit.get("/cart", None).await;
    assert_eq!(r.status, 200, "Audit admits a request without a token");
    let lines = audit
        .gateway
        .access_log_until(|l| l["path"] == "/cart" && l["subject"].is_null())
        .await;
    let scope = lines
        .iter()
        .find(|l| l["subject"] == "bob" && l["path"] == "/cart")
        .unwrap_or_else(|| panic!("audit line for bob on /cart: {lines:?}"));
    assert_eq!(scope["decision"], "audit-deny:authorization", "{scope}");
    let owner = lines
        .iter()
        .find(|l| l["path"] == "/users/alice/orders")
        .unwrap_or_else(|| panic!("audit line for the ownership case: {lines:?}"));
    assert_eq!(owner["decision"], "audit-deny:ownership", "{owner}");
    let anonymous = lines
        .iter()
        .find(|l| l["path"] == "/cart" && l["subject"].is_null())
        .unwrap_or_else(|| panic!("audit line for the anonymous request: {lines:?}"));
    assert_eq!(
        anonymous["decision"], "audit-deny:authorization",
        "{anonymous}"
    );
}

#[tokio::test]
async fn rerender_changes_enforcement_without_restart() {
    let issuer = Issuer::new("test-key");
    let upstream = echo_upstream().await;
    let gateway = Gateway::start(&manifests(&issuer.jwks(), "Enforce", 3), upstream.addr).await;
    let token = issuer.token(&claims("bob", "nothing"));
    let r = gateway.send(&Request::get("/cart").bearer(&token)).await;
    assert_eq!(r.status, 403, "Enforce denies before the change");
    let before = gateway.counter("listener_manager.lds.update_success").await;
    gateway.render(&manifests(&issuer.jwks(), "Audit", 3));
    gateway.wait_listener_update(before).await;
    let r = gateway.send(&Request::get("/cart").bearer(&token)).await;
    assert_eq!(
        r.status, 200,
        "after re-rendering to Audit the same request passes"
    );
    let (_, server_info) = gateway.admin_get("/server_info").await.expect("admin");
    let info: Value = serde_json::from_str(&server_info).expect("server_info JSON");
    let uptime = info["uptime_current_epoch"].as_str().unwrap_or("0s");
    let all = info["uptime_all_epochs"].as_str().unwrap_or("");
    assert_eq!(uptime, all, "same Envoy process epoch (no restart)");
}

/// The certificate Envoy presents on its listener, as PEM (openssl s_client).
fn served_certificate(port: u16) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (Debian package openssl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from 127.0.0.1:{port}: {text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    format!("{}-----END CERTIFICATE-----\n", &text[start..end])
}

fn first_pem(pem: &str) -> String {
    let start = pem.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = pem[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    format!("{}-----END CERTIFICATE-----\n", &pem[start..end])
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_restart() {
    // Certificates are renewed by rewriting the mounted files (the controller updates the
    // ConfigMap and Secret; the kubelet swaps the files). The listener must pick the new one up:
    // the same file names in an otherwise identical listener would not make Envoy reload it.
    let issuer = Issuer::new("test-key");
    let upstream = echo_upstream().await;
    let m = manifests(&issuer.jwks(), "Enforce", 3);
    let gateway = Gateway::start(&m, upstream.addr).await;
    let cert_file = gateway.envoy_dir().join("server.crt");
    let first = std::fs::read_to_string(&cert_file).unwrap();
    assert_eq!(served_certificate(gateway.port), first_pem(&first));
    let before = gateway.counter("listener_manager.lds.update_success").await;
    // Same policy, a new certificate (the render issues a fresh leaf, as a renewal does).
    gateway.render(&m);
    let renewed = std::fs::read_to_string(&cert_file).unwrap();
    assert_ne!(first, renewed, "the re-render issued a new certificate");
    gateway.wait_listener_update(before).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let served = served_certificate(gateway.port);
        if served == first_pem(&renewed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Envoy still serves the old certificate 20 s after the renewal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = gateway.send(&Request::get("/healthz")).await;
    assert_ne!(r.status, 0);
}
