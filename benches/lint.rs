//! `apiguard lint` throughput on a generated corpus of 100,000 objects (mixed kinds, one team
//! of ten related objects per namespace, one team in five with a misconfiguration).
//!
//! `cargo bench --bench lint` measures:
//! - in memory: building the view and reviewing every object (`lint_manifests`);
//! - files: parsing YAML files, reviewing, rendering JSON (the `lint` code path in-process);
//! - the CLI: `apiguard lint DIR --format json` as a subprocess, on that corpus and on a
//!   repository-shaped one (each team's ten reviewed objects plus ten of kinds no rule reads:
//!   ConfigMap, ServiceAccount, Role, RoleBinding, HPA, PDB, NetworkPolicy, Secret, ResourceQuota,
//!   ServiceMonitor);
//! - side by side with the kyverno CLI: `apiguard lint DIR --format json` and
//!   `kyverno apply benches/kyverno/apg001-apg011.yaml --resource DIR` (a ClusterPolicy
//!   equivalent to APG001 + APG011) on the same files, one after the other in the same run, for
//!   both corpora (reviewed kinds only, then repository-shaped). The kyverno binary is `$APIGUARD_KYVERNO` (`tests/tools.sh kyverno && source
//!   target/tools/env.sh`). Both get the full corpora (kyverno takes about 2.5 minutes for each);
//!   `APIGUARD_BENCH_KYVERNO_OBJECTS=N` gives both the first N objects instead, for a quicker run.
//!
//! - the background audit's full run over 10,000 existing objects (`audit_part`; alone with
//!   `cargo bench --bench lint -- audit`), which must stay under 30 s.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does one tiny smoke iteration;
//! the side-by-side part runs there only when `$APIGUARD_KYVERNO` is an existing file.

use apiguard::api::gateway_name;
use apiguard::lint::{lint_manifests, load, render_json};
use apiguard::manifest::{Manifest, Source};
use apiguard::reports::Timestamp;
use apiguard::rules::EngineConfig;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const OBJECTS_PER_TEAM: usize = 10;
/// The Kyverno ClusterPolicy equivalent to APG001 + APG011.
const KYVERNO_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/kyverno/apg001-apg011.yaml"
);

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
        gateway_name(&name)
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
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": gateway_name(&name), "namespace": ns},
            "spec": {"type": "LoadBalancer", "selector": {"app.kubernetes.io/name": gateway_name(&name)}, "ports": [{"port": 443}]}}),
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
            "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": gateway_name(&name), "port": 443}]}]}}),
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

/// The objects a team's directory holds besides the ten the rules review: configuration,
/// RBAC, autoscaling and disruption budgets (no rule reads them; `lint` loads them through its
/// header-only path).
fn team_support(i: usize) -> Vec<Value> {
    let ns = format!("team-{i}");
    let name = format!("api-{i}");
    vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-config"), "namespace": ns,
                "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shop"}},
            "data": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "checkout-v2,search-v3", "DB_POOL_SIZE": "20",
                "application.yaml": "server:\n  port: 8080\n  shutdown: graceful\nmanagement:\n  endpoints:\n    web:\n      exposure:\n        include: health,metrics\n"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns,
                "annotations": {"eks.amazonaws.com/role-arn": format!("arn:aws:iam::123456789012:role/{name}")}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 2, "maxReplicas": 20,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "namespace": ns},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": name}}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": format!("{name}-ingress"), "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": gateway_name(&name)}}}],
                             "ports": [{"protocol": "TCP", "port": 8080}]}]}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-db"), "namespace": ns},
            "type": "Opaque", "stringData": {"username": "app", "password": "change-me"}}),
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute", "namespace": ns},
            "spec": {"hard": {"requests.cpu": "8", "requests.memory": "16Gi", "limits.cpu": "16", "limits.memory": "32Gi", "pods": "50"}}}),
        json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": name}}, "endpoints": [{"port": "metrics", "interval": "30s"}]}}),
    ]
}

/// A repository-shaped corpus: every team's ten reviewed objects and its ten others.
fn repository_corpus(objects: usize) -> Vec<Value> {
    (0..objects.div_ceil(2 * OBJECTS_PER_TEAM))
        .flat_map(|i| team(i).into_iter().chain(team_support(i)))
        .take(objects)
        .collect()
}

fn as_manifests(values: Vec<Value>) -> Vec<Manifest> {
    values
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
        .collect()
}

/// `apiguard lint DIR --format json` as a subprocess: (objects/s line, exit code).
fn cli_once(exe: &Path, dir: &Path, objects: usize, label: &str) {
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["lint", "--format", "json"])
        .arg(dir)
        .output()
        .expect("run apiguard lint");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        report["summary"]["objects"], objects,
        "every object checked"
    );
    println!(
        "{label}: {}  [exit 1, {} bytes of output]",
        rate(objects, secs),
        out.stdout.len()
    );
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

/// Writes the manifests as YAML files of 1,000 documents each into `dir`.
fn write_corpus(dir: &Path, manifests: &[Manifest]) {
    for (i, chunk) in manifests.chunks(1_000).enumerate() {
        let mut text = String::new();
        for m in chunk {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(&m.object).expect("YAML"));
        }
        std::fs::write(dir.join(format!("corpus-{i:04}.yaml")), text).expect("write corpus");
    }
}

/// CPU seconds (user + system) of this process's waited-for children so far
/// (`/proc/self/stat` cutime + cstime, in clock ticks of 1/100 s).
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, cutime 16, cstime 17 (1-based).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    match (ticks(16), ticks(17)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs a command, returning its output, wall-clock and CPU (user + system) seconds.
fn timed_run(cmd: &mut Command) -> (std::process::Output, f64, f64) {
    let cpu = children_cpu_secs();
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (out, t.elapsed().as_secs_f64(), children_cpu_secs() - cpu)
}

/// The kyverno CLI: `$APIGUARD_KYVERNO`, `None` when unset or missing and not `required`.
fn kyverno_binary(required: bool) -> Option<PathBuf> {
    let hint =
        "run `tests/tools.sh kyverno && source target/tools/env.sh` for the side-by-side part";
    match std::env::var_os("APIGUARD_KYVERNO").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        Some(p) if required => panic!("APIGUARD_KYVERNO={} does not exist: {hint}", p.display()),
        None if required => panic!("APIGUARD_KYVERNO is not set: {hint}"),
        _ => None,
    }
}

/// How many kyverno rule results the policy gives an object of the corpus (rules that match
/// its kind), or 0.
fn kyverno_rules_for(object: &Value) -> usize {
    let api = object["apiVersion"].as_str().unwrap_or("");
    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, object["kind"].as_str().unwrap_or("")) {
        // default origin, wildcard origin, snippets
        ("networking.k8s.io", "Ingress") => 3,
        ("apiguard.dev", "ApiSecurityPolicy")
        | ("gateway.envoyproxy.io", "SecurityPolicy")
        | ("networking.istio.io", "VirtualService")
        | ("apps", "Deployment") => 1,
        _ => 0,
    }
}

/// kyverno's closing `pass: N, fail: N, warn: N, error: N, skip: N` line.
fn kyverno_counts(stdout: &str) -> Option<[usize; 5]> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("pass:"))?;
    let mut counts = [0; 5];
    for (i, (part, key)) in line
        .split(',')
        .zip(["pass", "fail", "warn", "error", "skip"])
        .enumerate()
    {
        let (k, v) = part.trim().split_once(':')?;
        if k.trim() != key {
            return None;
        }
        counts[i] = v.trim().parse().ok()?;
    }
    Some(counts)
}

/// `apiguard lint` and `kyverno apply` (APG001 + APG011 as a ClusterPolicy) on the same files.
fn side_by_side(exe: &Path, kyverno: &Path, manifests: &[Manifest], dir: &Path) {
    let objects = manifests.len();
    let version = Command::new(kyverno)
        .arg("version")
        .output()
        .expect("run kyverno version");
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map_or("?", str::trim)
        .to_string();
    println!(
        "side by side with kyverno {version}: {objects} objects, {} files (load average {})",
        objects.div_ceil(1_000),
        load_average()
    );

    let (out, ours, ours_cpu) = timed_run(
        Command::new(exe)
            .args(["lint", "--format", "json"])
            .arg(dir),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("apiguard lint JSON");
    let findings = report["findings"].as_array().expect("findings");
    let same_rules = findings
        .iter()
        .filter(|f| matches!(f["rule"].as_str(), Some("APG001" | "APG011")))
        .count();
    println!(
        "  apiguard lint : {}  [CPU {ours_cpu:.2} s; all 14 rules: {} findings, {same_rules} APG001/APG011]",
        rate(objects, ours),
        findings.len()
    );

    // Default (text) output: one `policy ... failed:` block per failing resource and the
    // closing counts, which show how many rule results kyverno produced.
    let (out, theirs, theirs_cpu) = timed_run(
        Command::new(kyverno)
            .args(["apply", KYVERNO_POLICY, "--remove-color", "--resource"])
            .arg(dir),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some([pass, fail, warn, error, skip]) = kyverno_counts(&stdout) else {
        panic!(
            "kyverno printed no pass/fail counts (exit {:?}):\n{}\n{}",
            out.status.code(),
            stdout.lines().take(40).collect::<Vec<_>>().join("\n"),
            stderr.lines().take(40).collect::<Vec<_>>().join("\n")
        );
    };
    let expected: usize = manifests.iter().map(|m| kyverno_rules_for(&m.object)).sum();
    println!(
        "  kyverno apply : {}  [CPU {theirs_cpu:.2} s; pass {pass}, fail {fail}, warn {warn}, error {error}, skip {skip}]",
        rate(objects, theirs)
    );
    assert!(
        fail > 0,
        "the corpus has insecure teams, so kyverno must report failures"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "kyverno apply exits 1 on Enforce failures: {stderr}"
    );
    assert_eq!(
        (pass + fail, error),
        (expected, 0),
        "kyverno must evaluate every rule on every matching object of the {objects}"
    );
    assert_eq!(
        fail, same_rules,
        "kyverno's failures must be apiguard's APG001/APG011 findings, one each"
    );
    println!(
        "  ratio         : apiguard lint is {:.1}x kyverno apply in objects/s ({:.1}x in CPU time); load average {}",
        theirs / ours,
        theirs_cpu / ours_cpu,
        load_average()
    );
}

/// The background audit's full run over `objects` existing objects of this corpus: grouping by
/// namespace, the rules over each namespace (its objects as the cluster view) and building each
/// namespace's `apiguard-audit` report, as the leader does between the caches and the writes
/// (API writes are not part of it: an unchanged report is not written at all).
fn audit_part(full: bool) {
    let objects = if full { 10_000 } else { 200 };
    let config = EngineConfig::default();
    let mut values = corpus(objects);
    for (i, v) in values.iter_mut().enumerate() {
        v["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{i:012}"));
    }
    let rounds = if full { 3 } else { 1 };
    let (mut best, mut results, mut reports) = (f64::MAX, 0, 0);
    for _ in 0..rounds {
        let t = Instant::now();
        let groups = apiguard::audit::by_namespace(values.iter().cloned());
        let built: Vec<_> = groups
            .iter()
            .filter_map(|(ns, objects)| {
                let findings = apiguard::audit::audit_namespace(objects, &config);
                apiguard::audit::report(ns, &findings, None, Timestamp::from_unix(0))
            })
            .collect();
        best = best.min(t.elapsed().as_secs_f64());
        results = built.iter().map(|r| r.results.len()).sum();
        reports = built.len();
    }
    assert!(reports > 0 && results > 0, "insecure teams give reports");
    println!(
        "audit full run : {}  [{results} results in {reports} reports, best of {rounds}]",
        rate(objects, best)
    );
    if full {
        assert!(
            best < 30.0,
            "the audit of {objects} objects took {best:.1} s (budget 30 s)"
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    audit_part(full);
    if std::env::args().any(|a| a == "audit") {
        // `cargo bench --bench lint -- audit`: the audit part alone (no kyverno needed).
        return;
    }
    // Checked first, so that a `--bench` run without kyverno fails at once.
    let kyverno = kyverno_binary(full);
    let objects = if full { 100_000 } else { 200 };
    let config = EngineConfig::default();

    let manifests = as_manifests(corpus(objects));

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
    write_corpus(dir.path(), &manifests);
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

    // The CLI as a subprocess: the corpus above (every object of a kind the rules review), and
    // a repository-shaped one where half the objects are of kinds no rule reads.
    let exe = Path::new(env!("CARGO_BIN_EXE_apiguard"));
    cli_once(
        exe,
        dir.path(),
        objects,
        "apiguard lint (reviewed kinds only)",
    );
    let repository_manifests = as_manifests(repository_corpus(objects));
    let repository = tempfile::tempdir().expect("temp dir");
    write_corpus(repository.path(), &repository_manifests);
    cli_once(
        exe,
        repository.path(),
        objects,
        "apiguard lint (repository-shaped) ",
    );

    // Side by side with kyverno, on the same files: both corpora.
    let Some(kyverno) = kyverno else {
        println!("side by side with kyverno: skipped (APIGUARD_KYVERNO is not an existing file)");
        return;
    };
    let n = if full {
        std::env::var("APIGUARD_BENCH_KYVERNO_OBJECTS")
            .ok()
            .map(|v| {
                v.parse()
                    .expect("APIGUARD_BENCH_KYVERNO_OBJECTS is a number")
            })
            .map_or(objects, |n: usize| n.min(objects))
    } else {
        objects
    };
    if n < objects {
        println!(
            "(APIGUARD_BENCH_KYVERNO_OBJECTS: each side-by-side corpus is the first {n} of the {objects} objects)"
        );
    }
    for (label, corpus, dir) in [
        ("reviewed kinds only", &manifests, dir.path()),
        (
            "repository-shaped",
            &repository_manifests,
            repository.path(),
        ),
    ] {
        println!("[{label}]");
        if n == objects {
            side_by_side(exe, &kyverno, corpus, dir);
        } else {
            let small = tempfile::tempdir().expect("temp dir");
            write_corpus(small.path(), &corpus[..n]);
            side_by_side(exe, &kyverno, &corpus[..n], small.path());
        }
    }
}
