use super::*;
use crate::discovery::SensitiveClass;
use crate::reports::{ReportBuilder, Timestamp};

fn endpoint(method: &str, path: &str, declared: bool, requests: u64) -> EndpointReport {
    EndpointReport {
        method: method.into(),
        path: path.into(),
        declared,
        deprecated: false,
        requests,
        statuses: BTreeMap::from([("2xx".to_string(), requests)]),
        authenticated: 0,
        sensitive: Vec::new(),
        sensitive_counts: BTreeMap::new(),
        content_types: BTreeMap::new(),
        parameters: BTreeMap::new(),
        first_seen: "2026-12-03T10:00:00Z".into(),
        last_seen: "2026-12-03T10:00:00Z".into(),
    }
}

fn report(endpoints: Vec<EndpointReport>) -> Report {
    Report {
        policy: Some("shop/orders".into()),
        endpoints,
        shadow: Vec::new(),
        zombie: Vec::new(),
        observed: 0,
        overflow: 0,
    }
}

fn push(reporter: &str, declarations: &str, endpoints: Vec<EndpointReport>) -> Push {
    Push {
        namespace: "shop".into(),
        name: "orders".into(),
        reporter: reporter.into(),
        declarations: declarations.into(),
        inventory: report(endpoints),
        discovery: true,
        runtime: None,
    }
}

fn policy_ref() -> ObjectReference {
    ObjectReference {
        api_version: Some("apiguard.dev/v1alpha1".into()),
        kind: Some("ApiSecurityPolicy".into()),
        namespace: Some("shop".into()),
        name: Some("orders".into()),
        ..Default::default()
    }
}

#[test]
fn only_the_policys_gateway_identity_may_push() {
    let gw = "spiffe://cluster.local/ns/shop/sa/orders-apiguard";
    assert_eq!(
        authorize(true, Some(gw), "cluster.local", "shop", "orders"),
        Ok(())
    );
    assert_eq!(
        authorize(false, None, "cluster.local", "shop", "orders"),
        Err(Refusal::NoCertificate)
    );
    assert_eq!(
        authorize(true, None, "cluster.local", "shop", "orders"),
        Err(Refusal::NoSpiffeId)
    );
    // Another workload of the same namespace (the target's identity), another policy's
    // gateway, the same name in another namespace or trust domain: all refused.
    for other in [
        "spiffe://cluster.local/ns/shop/sa/orders",
        "spiffe://cluster.local/ns/shop/sa/payments-apiguard",
        "spiffe://cluster.local/ns/other/sa/orders-apiguard",
        "spiffe://example.org/ns/shop/sa/orders-apiguard",
    ] {
        let e = authorize(true, Some(other), "cluster.local", "shop", "orders").unwrap_err();
        assert!(
            matches!(&e, Refusal::WrongIdentity { found, expected, .. } if found == other && expected == gw),
            "{other}: {e:?}"
        );
        assert!(e.to_string().contains("shop/orders"), "{e}");
    }
}

#[test]
fn the_push_budget_is_a_burst_then_a_steady_rate_per_policy() {
    let mut intake = Intake::new(IntakeLimits {
        burst: 3,
        seconds_per_push: 2.0,
        ..Default::default()
    });
    let t0 = 1_800_000_000_000;
    for _ in 0..3 {
        intake.admit("shop", "orders", t0).unwrap();
    }
    let e = intake.admit("shop", "orders", t0).unwrap_err();
    assert_eq!(
        e,
        Refusal::RateLimited {
            policy: "shop/orders".into(),
            retry_after_seconds: 2
        }
    );
    // Another policy has its own budget.
    intake.admit("shop", "payments", t0).unwrap();
    // One push earned after 2 s, not two.
    intake.admit("shop", "orders", t0 + 2_000).unwrap();
    assert!(intake.admit("shop", "orders", t0 + 2_000).is_err());
    // The budget never grows past the burst.
    for _ in 0..3 {
        intake.admit("shop", "orders", t0 + 3_600_000).unwrap();
    }
    assert!(intake.admit("shop", "orders", t0 + 3_600_000).is_err());
}

#[test]
fn replicas_merge_and_shadow_endpoints_are_announced_once() {
    let mut intake = Intake::default();
    let t0 = 1_800_000_000_000;
    let mut card = endpoint("GET", "/users/{id}", true, 5);
    card.sensitive = vec![SensitiveClass::Email];
    card.sensitive_counts = BTreeMap::from([(SensitiveClass::Email, 5)]);
    let first = intake.take(
        push(
            "gw-a",
            "d1",
            vec![card.clone(), endpoint("GET", "/v1/admin/export", false, 1)],
        ),
        &BTreeSet::new(),
        t0,
    );
    assert_eq!(first.new_shadow, ["GET /v1/admin/export"]);
    let mut other = endpoint("GET", "/users/{id}", true, 2);
    other.last_seen = "2026-12-03T11:00:00Z".into();
    other.sensitive = vec![SensitiveClass::PaymentCard];
    other.sensitive_counts = BTreeMap::from([(SensitiveClass::PaymentCard, 1)]);
    let second = intake.take(
        push(
            "gw-b",
            "d1",
            vec![other, endpoint("GET", "/v1/admin/export", false, 3)],
        ),
        &BTreeSet::new(),
        t0 + 1000,
    );
    assert!(second.new_shadow.is_empty(), "{:?}", second.new_shadow);
    let users = second
        .endpoints
        .iter()
        .find(|e| e.path == "/users/{id}")
        .unwrap();
    assert_eq!(users.requests, 7);
    assert_eq!(users.statuses["2xx"], 7);
    assert_eq!(
        users.sensitive,
        [SensitiveClass::Email, SensitiveClass::PaymentCard]
    );
    assert_eq!(users.last_seen, "2026-12-03T11:00:00Z");
    let export = second
        .endpoints
        .iter()
        .find(|e| e.path == "/v1/admin/export")
        .unwrap();
    assert_eq!(export.requests, 4);
    // A replica's newer push replaces its older one (counts are cumulative per replica).
    let third = intake.take(
        push(
            "gw-a",
            "d1",
            vec![endpoint("GET", "/v1/admin/export", false, 10)],
        ),
        &BTreeSet::new(),
        t0 + 2000,
    );
    let export = third
        .endpoints
        .iter()
        .find(|e| e.path == "/v1/admin/export")
        .unwrap();
    assert_eq!(export.requests, 13);
    let s = status(&third.endpoints, "2026-12-03T12:00:00Z".into());
    assert_eq!((s.endpoints, s.undeclared, s.sensitive), (2, 1, 1));
}

#[test]
fn a_shadow_endpoint_already_reported_is_not_announced_and_new_declarations_start_over() {
    let mut intake = Intake::default();
    let t0 = 1_800_000_000_000;
    let known = BTreeSet::from(["GET /old".to_string()]);
    let taken = intake.take(
        push(
            "gw-a",
            "d1",
            vec![
                endpoint("GET", "/old", false, 1),
                endpoint("GET", "/new", false, 1),
            ],
        ),
        &known,
        t0,
    );
    assert_eq!(taken.new_shadow, ["GET /new"]);
    // The rules changed: /new is declared now; replicas' old inventories are dropped.
    let taken = intake.take(
        push("gw-b", "d2", vec![endpoint("GET", "/new", true, 1)]),
        &BTreeSet::new(),
        t0 + 1000,
    );
    assert_eq!(taken.endpoints.len(), 1);
    assert!(taken.endpoints[0].declared);
    assert!(taken.new_shadow.is_empty());
}

#[test]
fn silent_replicas_are_forgotten_and_replicas_are_bounded() {
    let mut intake = Intake::new(IntakeLimits {
        max_reporters: 2,
        reporter_ttl_seconds: 60,
        ..Default::default()
    });
    let t0 = 1_800_000_000_000;
    intake.take(
        push("a", "d", vec![endpoint("GET", "/a", true, 1)]),
        &BTreeSet::new(),
        t0,
    );
    intake.take(
        push("b", "d", vec![endpoint("GET", "/b", true, 1)]),
        &BTreeSet::new(),
        t0 + 1000,
    );
    let taken = intake.take(
        push("c", "d", vec![endpoint("GET", "/c", true, 1)]),
        &BTreeSet::new(),
        t0 + 2000,
    );
    let paths: Vec<&str> = taken.endpoints.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/b", "/c"], "the oldest replica a is forgotten");
    let taken = intake.take(
        push("c", "d", vec![endpoint("GET", "/c", true, 1)]),
        &BTreeSet::new(),
        t0 + 120_000,
    );
    let paths: Vec<&str> = taken.endpoints.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/c"], "b has been silent for 2 minutes");
}

#[test]
fn results_are_fail_per_shadow_and_warn_per_zombie_and_sensitive_endpoint() {
    let mut zombie = endpoint("GET", "/v0/orders", true, 3);
    zombie.deprecated = true;
    let mut leaky = endpoint("GET", "/v1/admin/export", false, 1);
    leaky.sensitive = vec![SensitiveClass::Email, SensitiveClass::PaymentCard];
    let clean = endpoint("GET", "/v1/orders", true, 9);
    let results = results(&policy_ref(), &[zombie, leaky, clean]);
    let summary: Vec<(String, Outcome, String)> = results
        .iter()
        .map(|r| {
            (
                r.rule.clone().unwrap(),
                r.result.unwrap(),
                r.properties["path"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ZOMBIE_RULE.into(), Outcome::Warn, "/v0/orders".into()),
            (SHADOW_RULE.into(), Outcome::Fail, "/v1/admin/export".into()),
            (
                SENSITIVE_RULE.into(),
                Outcome::Warn,
                "/v1/admin/export".into()
            ),
        ]
    );
    let sensitive = &results[2];
    assert_eq!(sensitive.properties["classes"], "email,payment_card");
    assert_eq!(sensitive.resources[0].name.as_deref(), Some("orders"));
    assert!(
        results
            .iter()
            .all(|r| r.source.as_deref() == Some("apiguard"))
    );
}

#[test]
fn stored_results_of_the_same_declarations_are_carried_over() {
    use crate::api::names::annotations::DECLARATIONS;
    let stored_results = results(
        &policy_ref(),
        &[
            endpoint("GET", "/seen-by-another-replica", false, 1),
            endpoint("GET", "/both", false, 1),
        ],
    );
    let mut builder = ReportBuilder::new("shop", "apiguard-orders");
    builder.extend(stored_results);
    let mut stored = builder.build(None, Timestamp::from_unix(1));
    stored.metadata.annotations = Some(BTreeMap::from([(DECLARATIONS.into(), "d1".into())]));
    let fresh = results(&policy_ref(), &[endpoint("GET", "/both", false, 1)]);
    let kept = carried_over(Some(&stored), "d1", &fresh);
    // The status agrees with the report: the shadow endpoint another operator replica took
    // counts, though this replica's view has only /both and /declared.
    let mut all = fresh.clone();
    all.extend(kept.iter().cloned());
    let view = [
        endpoint("GET", "/both", false, 1),
        endpoint("GET", "/declared", true, 1),
    ];
    let s = status_of(&view, &all, "t".into());
    assert_eq!((s.endpoints, s.undeclared, s.sensitive), (3, 2, 0));
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].properties["path"], "/seen-by-another-replica");
    assert!(carried_over(Some(&stored), "d2", &fresh).is_empty());
    assert!(carried_over(None, "d1", &fresh).is_empty());
    assert_eq!(
        reported_shadow(Some(&stored)),
        BTreeSet::from([
            "GET /both".to_string(),
            "GET /seen-by-another-replica".to_string()
        ])
    );
}
