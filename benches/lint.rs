//! `apiguard lint` throughput on a generated corpus of 100,000 objects (mixed kinds, one team
//! of ten related objects per namespace, one team in five with a misconfiguration).
//!
//! `cargo bench --bench lint` measures:
//! - in memory: building the view and reviewing every object (`lint_manifests`);
//! - files: parsing YAML files, reviewing, rendering JSON (the `lint` code path in-process);
//! - the CLI: `apiguard lint DIR --format json` as a subprocess.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does one tiny smoke iteration.

use apiguard::lint::{lint_manifests, load, render_json};
use apiguard::manifest::{Manifest, Source};
use apiguard::rules::EngineConfig;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const OBJECTS_PER_TEAM: usize = 10;

fn team(i: usize) -> Vec<Value> {
    let ns = format!("team-{i}");
    let name = format!("api-{i}");
    let insecure = i.is_multiple_of(5);
    let origin = if insecure {
        "*"
    } else {
        "https://app.example.com"
    };
    let backend = if insecure {
        name.clone()
    } else {
        format!("{name}-apiguard")
    };
    vec![
        json!({"apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"target": {"service": name, "port": 8080}, "exposure": "Public",
                "hosts": [format!("{name}.example.com")],
                "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example.com/",
                    "audiences": [name], "jwks": {"uri": "https://idp.example.com/jwks.json"}}]}},
                "authorization": {"rules": [
                    {"name": "read", "match": {"methods": ["GET"], "paths": ["/items/{id}"]}, "allow": {"scopes": ["items:read"]}},
                    {"name": "login", "match": {"methods": ["POST"], "paths": ["/login"]}, "public": true}]},
                "rateLimits": [{"name": "login", "match": {"paths": ["/login"]}, "limit": {"requests": 5, "per": "Minute"}}],
                "cors": {"allowOrigins": ["https://app.example.com"]},
                "requestValidation": {"maxBodyBytes": 65536}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("{name}-apiguard"), "namespace": ns},
            "spec": {"type": "LoadBalancer", "selector": {"app.kubernetes.io/name": format!("{name}-apiguard")}, "ports": [{"port": 443}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1",
                    "env": [{"name": "CORS_ALLOWED_ORIGINS", "value": origin}, {"name": "LOG_LEVEL", "value": "info"}]}]}}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns,
                "annotations": {"nginx.ingress.kubernetes.io/enable-cors": "true", "nginx.ingress.kubernetes.io/cors-allow-origin": origin}},
            "spec": {"tls": [{"hosts": [format!("{name}.example.com")], "secretName": "tls"}],
                "rules": [{"host": format!("{name}.example.com"), "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": backend, "port": {"number": 443}}}}]}}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "edge", "namespace": ns},
            "spec": {"gatewayClassName": "envoy", "listeners": [{"name": "https", "protocol": if insecure { "HTTP" } else { "HTTPS" }, "port": 443}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": format!("{name}-apiguard"), "port": 443}]}]}}),
        json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "jwt", "namespace": ns},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
                "jwt": {"providers": [{"name": "corp", "remoteJWKS": {"uri": "https://idp.example.com/jwks.json"}}]},
                "cors": {"allowOrigins": [origin]}}}),
        json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "ClientTrafficPolicy", "metadata": {"name": "tls", "namespace": ns},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
                "tls": {"minVersion": if insecure { "1.1" } else { "1.2" }}}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": [name], "http": [{"corsPolicy": {"allowOrigins": [{"exact": origin}]}, "route": [{"destination": {"host": name}}]}]}}),
    ]
}

fn corpus(objects: usize) -> Vec<Value> {
    (0..objects.div_ceil(OBJECTS_PER_TEAM))
        .flat_map(team)
        .take(objects)
        .collect()
}

fn rate(n: usize, secs: f64) -> String {
    format!(
        "{:>10.0} objects/s ({n} objects in {:.3} s)",
        n as f64 / secs,
        secs
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let objects = if full { 100_000 } else { 200 };
    let config = EngineConfig::default();

    let values = corpus(objects);
    let manifests: Vec<Manifest> = values
        .into_iter()
        .enumerate()
        .map(|(i, object)| Manifest {
            source: Source {
                file: "corpus".into(),
                document: i + 1,
                item: None,
            },
            object,
        })
        .collect();

    // In memory: view + review of every object.
    let rounds = if full { 3 } else { 1 };
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        count = lint_manifests(&manifests, &config).len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    assert!(
        count > 0,
        "the corpus has insecure teams, so findings are expected"
    );
    println!(
        "lint in memory : {}  [{count} findings, best of {rounds}]",
        rate(objects, best)
    );

    // Files: YAML on disk, the lint code path in-process (load, review, render JSON).
    let dir = tempfile::tempdir().expect("temp dir");
    let per_file = 1_000;
    for (i, chunk) in manifests.chunks(per_file).enumerate() {
        let mut text = String::new();
        for m in chunk {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(&m.object).expect("YAML"));
        }
        std::fs::write(dir.path().join(format!("corpus-{i:04}.yaml")), text).expect("write corpus");
    }
    let t = Instant::now();
    let inputs = load(&[dir.path().to_path_buf()]);
    assert!(inputs.errors.is_empty(), "{:?}", inputs.errors);
    let loaded = t.elapsed().as_secs_f64();
    let findings = lint_manifests(&inputs.manifests, &config);
    let json = render_json(&findings).to_string();
    let total = t.elapsed().as_secs_f64();
    assert_eq!(inputs.manifests.len(), objects);
    println!(
        "lint from files: {}  [YAML parse {:.3} s, {} bytes of JSON]",
        rate(objects, total),
        loaded,
        json.len()
    );

    // The CLI as a subprocess.
    let exe = Path::new(env!("CARGO_BIN_EXE_apiguard"));
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["lint", "--format", "json"])
        .arg(dir.path())
        .output()
        .expect("run apiguard lint");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "apiguard lint  : {}  [exit 1, {} bytes of output]",
        rate(objects, secs),
        out.stdout.len()
    );
}
