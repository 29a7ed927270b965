//! Property tests: whatever the body, the review handler answers (an AdmissionReview or a
//! 400/413 JSON error) and never panics.

use crate::support::webhook::*;
use apiguard::admin::AdmissionMetrics;
use apiguard::rules::AdmissionMode;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        // Strings the rules look at, so garbage reaches deep into the rule code.
        prop::sample::select(vec![
            "*",
            "true",
            "false",
            "on",
            "http://x",
            "https://a.example",
            "APG001=why",
            "APG001",
            "/login",
            "{userId}",
            "TLSv1",
            "TLSv1.1",
            "HTTP",
            "LoadBalancer",
            "Public",
            "Allow",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop::sample::select(vec![
            "spec",
            "metadata",
            "annotations",
            "name",
            "namespace",
            "rules",
            "tls",
            "hosts",
            "http",
            "paths",
            "backend",
            "service",
            "port",
            "cors",
            "allowOrigins",
            "template",
            "containers",
            "env",
            "value",
            "type",
            "selector",
            "listeners",
            "protocol",
            "target",
            "exposure",
            "authentication",
            "authorization",
            "match",
            "jwt",
            "providers",
            "parentRefs",
            "backendRefs",
            "corsPolicy",
            "minVersion",
            "nginx.ingress.kubernetes.io/enable-cors",
            "apiguard.dev/exempt",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys, inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

const KINDS: &[(&str, &str)] = &[
    ("apiguard.dev/v1alpha1", "ApiSecurityPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("v1", "Service"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"),
    ("networking.istio.io/v1", "VirtualService"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "CronJob"),
    ("v1", "Pod"),
    ("v1", "ConfigMap"),
];

/// Mostly well-formed annotations (so the object gets past kube's ObjectMeta and into the
/// rules), sometimes garbage.
fn arb_annotations() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "nginx.ingress.kubernetes.io/enable-cors",
        "nginx.ingress.kubernetes.io/cors-allow-origin",
        "nginx.ingress.kubernetes.io/auth-url",
        "nginx.ingress.kubernetes.io/ssl-redirect",
        "nginx.ingress.kubernetes.io/configuration-snippet",
        "apiguard.dev/exempt",
        "apiguard.dev/public",
        "other",
    ]);
    let value = prop_oneof![
        ".{0,16}",
        prop::sample::select(vec![
            "true",
            "*",
            "APG001=ok",
            "APG001",
            "APG999=x; APG003",
            ""
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        4 => prop::collection::btree_map(key, value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect())),
        1 => arb_json(),
    ]
}

fn arb_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(KINDS),
        arb_json(),
        arb_annotations(),
        any::<bool>(),
    )
        .prop_map(|((api_version, kind), spec, annotations, namespaced)| {
            let mut metadata = json!({"name": "x", "annotations": annotations});
            if namespaced {
                metadata["namespace"] = json!("shop");
            }
            json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec})
        })
}

fn answer_status(body: Vec<u8>) -> StatusCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let resp = app(AdmissionMode::Enforce)
            .oneshot(Request::post("/validate").body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
        if status == StatusCode::OK {
            assert_eq!(json["kind"], "AdmissionReview");
            assert!(json["response"]["allowed"].is_boolean());
        } else {
            assert!(json["error"].is_string());
        }
        status
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_an_answer(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let status = answer_status(body);
        prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{status}");
    }

    #[test]
    fn arbitrary_json_bodies_get_an_answer(body in arb_json()) {
        let status = answer_status(serde_json::to_vec(&body).unwrap());
        prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{status}");
    }

    #[test]
    fn arbitrary_objects_in_a_valid_review_are_answered(
        object in arb_object(),
        op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT"]),
        dry_run in any::<bool>(),
    ) {
        let body = review(op, &object, "prop", dry_run);
        let admission = admission(AdmissionMode::Enforce, AdmissionMetrics::unregistered());
        // Straight through the handler as well as through the router.
        let direct = admission.handle(&serde_json::to_vec(&body).unwrap());
        let status = answer_status(serde_json::to_vec(&body).unwrap());
        match direct {
            Ok(json) => {
                prop_assert_eq!(status, StatusCode::OK);
                let answer: Value = serde_json::from_slice(&json).unwrap();
                prop_assert_eq!(&answer["response"]["uid"], "prop");
                if op == "DELETE" || op == "CONNECT" {
                    prop_assert_eq!(&answer["response"]["allowed"], true);
                }
            }
            // An object kube's DynamicObject cannot read (e.g. metadata of the wrong shape).
            Err(e) => {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
