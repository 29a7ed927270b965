//! Property tests: arbitrary JSON values, arbitrary mutations of real manifests, and arbitrary
//! bytes never panic the rule engine, the manifest loader or lint's document locator.

use apiguard::lint::{document_lines, failing_document, lint_manifests};
use apiguard::manifest::{Manifest, parse_str};
use apiguard::rules::{AdmissionMode, EngineConfig, InMemoryView, decide, review};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::LazyLock;

const KINDS: &[(&str, &str)] = &[
    ("apiguard.dev/v1alpha1", "ApiSecurityPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("v1", "Service"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "Gateway"),
    ("security.istio.io/v1", "RequestAuthentication"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "CronJob"),
    ("v1", "Pod"),
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-zA-Z0-9*./:_ -]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("*"),
            Just("true"),
            Just("false"),
            Just("HTTP"),
            Just("1.0"),
            Just("null"),
            Just("http://x"),
            Just("LoadBalancer"),
            Just("APG003"),
            Just("APG001=x; bad"),
            Just("orders"),
            Just("orders-apiguard"),
            Just("Public"),
            Just("Internal"),
            Just("GRPC"),
            Just("TLSV1_0"),
            Just("CORS"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            "[a-zA-Z]{1,8}",
            prop_oneof![
                Just("spec"),
                Just("metadata"),
                Just("annotations"),
                Just("cors"),
                Just("tls"),
                Just("rules"),
                Just("http"),
                Just("paths"),
                Just("backend"),
                Just("service"),
                Just("name"),
                Just("listeners"),
                Just("protocol"),
                Just("allowOrigins"),
                Just("corsPolicy"),
                Just("env"),
                Just("containers"),
                Just("template"),
                Just("backendRefs"),
                Just("parentRefs"),
                Just("targetRefs"),
                Just("selector"),
                Just("type"),
                Just("minVersion"),
                Just("servers"),
                Just("port"),
                Just("minProtocolVersion"),
                Just("httpsRedirect"),
                Just("jwtRules"),
                Just("jwksUri"),
                Just("issuer"),
                Just("jwt"),
                Just("providers"),
                Just("remoteJWKS"),
                Just("oidc"),
                Just("filters"),
                Just("apiguard.dev/exempt"),
                Just("apiguard.dev/public"),
                Just("nginx.ingress.kubernetes.io/enable-cors"),
            ]
            .prop_map(str::to_string),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object of a covered kind with arbitrary metadata and spec.
fn kind_object() -> impl Strategy<Value = Value> {
    (prop::sample::select(KINDS), json_value(), json_value(), json_value()).prop_map(
        |((api_version, kind), metadata, spec, extra)| {
            json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec, "x": extra})
        },
    )
}

static FIXTURES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            out.extend(parse_str("f", &text).unwrap().into_iter().map(|m| m.object));
        }
    }
    out
});

/// Replaces the node reached by following `choices` (child indexes) with `replacement`.
fn mutate(mut v: Value, choices: &[usize], replacement: Value) -> Value {
    fn go(v: &mut Value, choices: &[usize], replacement: Value) {
        let child = match (v, choices.split_first()) {
            (Value::Object(m), Some((c, _))) if !m.is_empty() => {
                let key = m.keys().nth(c % m.len()).cloned();
                key.and_then(|k| m.get_mut(&k))
            }
            (Value::Array(a), Some((c, _))) if !a.is_empty() => {
                let len = a.len();
                a.get_mut(c % len)
            }
            (v, _) => {
                *v = replacement;
                return;
            }
        };
        if let Some(child) = child {
            go(child, choices.get(1..).unwrap_or(&[]), replacement);
        }
    }
    go(&mut v, choices, replacement);
    v
}

fn check(objects: &[Value]) {
    let view = InMemoryView::from_objects(objects.iter());
    let config = EngineConfig::default();
    for o in objects {
        let findings = review(o, &view, &config);
        for f in &findings {
            assert!(f.message.starts_with(f.rule.id()), "{f:?}");
        }
        for mode in [
            AdmissionMode::Enforce,
            AdmissionMode::Warn,
            AdmissionMode::Audit,
        ] {
            let _ = decide(&findings, mode);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics_review(v in json_value()) {
        check(&[v]);
    }

    #[test]
    fn arbitrary_objects_of_covered_kinds_never_panic(objs in prop::collection::vec(kind_object(), 1..4)) {
        check(&objs);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        picks in prop::collection::vec((any::<prop::sample::Index>(), prop::collection::vec(0usize..16, 0..8), json_value()), 1..4)
    ) {
        let objects: Vec<Value> = picks
            .into_iter()
            .map(|(i, path, repl)| mutate(i.get(&FIXTURES).clone(), &path, repl))
            .collect();
        check(&objects);
        let manifests: Vec<Manifest> = objects
            .iter()
            .filter_map(|o| parse_str("m.json", &o.to_string()).ok())
            .flatten()
            .collect();
        let _ = lint_manifests(&manifests, &EngineConfig::default());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_loader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(manifests) = parse_str("fuzz.yaml", &text) {
            let _ = lint_manifests(&manifests, &EngineConfig::default());
        }
        let _ = document_lines(&text);
        let _ = failing_document(&text);
    }

    #[test]
    fn yaml_like_text_never_panics_the_loader(lines in prop::collection::vec(
        prop_oneof![
            Just("---".to_string()), Just("apiVersion: v1".to_string()), Just("kind: Service".to_string()),
            Just("kind: List".to_string()), Just("items:".to_string()), Just("- {a: 1}".to_string()),
            Just("metadata: {name: x}".to_string()), Just("  - [".to_string()), Just("# c".to_string()),
            "[ -~]{0,20}",
        ], 0..20)) {
        let text = lines.join("\n");
        if let Ok(manifests) = parse_str("fuzz.yaml", &text) {
            let _ = lint_manifests(&manifests, &EngineConfig::default());
        }
        let _ = failing_document(&text);
    }
}
