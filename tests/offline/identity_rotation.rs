//! Rotation decisions as table tests with an injected clock, including tampered Secrets.

use apiguard::identity::rotation::{CurrentIssuers, renew_at};
use apiguard::identity::{
    CertificateAuthority, Decision, ExpectedIdentity, IssuedLeaf, LeafRequest, ReissueReason,
    SpiffeId, StoredSecret, decide, issue_leaf,
};
use rstest::rstest;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// When the leaf in the fixtures was issued.
const ISSUED: OffsetDateTime = datetime!(2026-05-01 00:00 UTC);

struct World {
    ca: CertificateAuthority,
    /// A retired CA (still trusted during a rotation).
    old_ca: CertificateAuthority,
    /// A CA nobody trusts.
    rogue: CertificateAuthority,
    leaf: IssuedLeaf,
    expected: ExpectedIdentity,
}

fn world() -> World {
    let ca =
        CertificateAuthority::generate(ISSUED - Duration::days(1), Duration::days(3650)).unwrap();
    let old_ca =
        CertificateAuthority::generate(ISSUED - Duration::days(400), Duration::days(3650)).unwrap();
    let rogue =
        CertificateAuthority::generate(ISSUED - Duration::days(1), Duration::days(3650)).unwrap();
    let spiffe_id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
    let dns_names = vec![
        "payments.shop.svc".to_string(),
        "payments.shop.svc.cluster.local".to_string(),
    ];
    let leaf = issue_leaf(
        &ca,
        &LeafRequest {
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.clone(),
            lifetime: Duration::hours(24),
        },
        ISSUED,
    )
    .unwrap();
    World {
        ca,
        old_ca,
        rogue,
        leaf,
        expected: ExpectedIdentity {
            spiffe_id,
            dns_names,
        },
    }
}

/// Secret data as the table case leaves it.
struct Data {
    crt: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

fn leaf_with(
    w: &World,
    ca: &CertificateAuthority,
    id: &str,
    dns: &[&str],
    at: OffsetDateTime,
) -> IssuedLeaf {
    issue_leaf(
        ca,
        &LeafRequest {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            lifetime: Duration::hours(24),
        },
        at,
    )
    .map(|mut l| {
        l.ca_bundle_pem = w.ca.roots_pem();
        l
    })
    .unwrap()
}

fn from_leaf(l: &IssuedLeaf) -> Data {
    Data {
        crt: Some(l.cert_pem.clone()),
        key: Some(l.key_pem.clone()),
        ca: Some(l.ca_bundle_pem.clone()),
    }
}

/// Tampering applied to the good Secret.
fn tamper(w: &World, case: &str) -> Data {
    let good = from_leaf(&w.leaf);
    let sid = "spiffe://cluster.local/ns/shop/sa/payments";
    let dns = ["payments.shop.svc", "payments.shop.svc.cluster.local"];
    match case {
        "good" => good,
        "deleted" => Data {
            crt: None,
            key: None,
            ca: None,
        },
        "no-key" => Data { key: None, ..good },
        "empty-cert" => Data {
            crt: Some("\n".into()),
            ..good
        },
        "no-ca" => Data { ca: None, ..good },
        "garbage-cert" => Data {
            crt: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
            ..good
        },
        "not-pem" => Data {
            crt: Some("hello".into()),
            ..good
        },
        "garbage-key" => Data {
            key: Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into()),
            ..good
        },
        "key-of-other-leaf" => {
            let other = leaf_with(w, &w.ca, sid, &dns, ISSUED);
            Data {
                key: Some(other.key_pem),
                ..good
            }
        }
        "other-workload" => from_leaf(&leaf_with(
            w,
            &w.ca,
            "spiffe://cluster.local/ns/shop/sa/frontend",
            &dns,
            ISSUED,
        )),
        "other-trust-domain" => from_leaf(&leaf_with(
            w,
            &w.ca,
            "spiffe://evil.example/ns/shop/sa/payments",
            &dns,
            ISSUED,
        )),
        "missing-dns" => from_leaf(&leaf_with(w, &w.ca, sid, &dns[..1], ISSUED)),
        "extra-dns" => from_leaf(&leaf_with(
            w,
            &w.ca,
            sid,
            &[
                "payments.shop.svc",
                "payments.shop.svc.cluster.local",
                "evil.example",
            ],
            ISSUED,
        )),
        "dns-reordered" => from_leaf(&leaf_with(
            w,
            &w.ca,
            sid,
            &["payments.shop.svc.cluster.local", "payments.shop.svc"],
            ISSUED,
        )),
        "rogue-issuer" => from_leaf(&leaf_with(w, &w.rogue, sid, &dns, ISSUED)),
        "retired-issuer" => from_leaf(&leaf_with(w, &w.old_ca, sid, &dns, ISSUED)),
        "stale-bundle" => Data {
            ca: Some(w.old_ca.roots_pem()),
            ..good
        },
        "bundle-with-extra-root" => Data {
            ca: Some(format!("{}{}", w.ca.roots_pem(), w.rogue.roots_pem())),
            ..good
        },
        other => panic!("unknown case {other}"),
    }
}

use ReissueReason::*;

#[rstest]
// fresh and intact: keep until 2/3 of (24h + 5m backdating) after notBefore
#[case::fresh("good", Duration::hours(1), None)]
#[case::just_before_renewal("good", Duration::hours(15) + Duration::minutes(58), None)]
#[case::renewal_due("good", Duration::hours(16), Some(RenewalDue))]
#[case::expired("good", Duration::hours(24), Some(Expired))]
#[case::long_expired("good", Duration::days(30), Some(Expired))]
#[case::clock_went_back("good", -Duration::hours(1), Some(NotYetValid))]
#[case::deleted("deleted", Duration::hours(1), Some(Missing))]
#[case::no_key("no-key", Duration::hours(1), Some(Missing))]
#[case::empty_cert("empty-cert", Duration::hours(1), Some(Missing))]
#[case::no_ca("no-ca", Duration::hours(1), Some(Missing))]
#[case::garbage_cert("garbage-cert", Duration::hours(1), Some(Unparseable))]
#[case::not_pem("not-pem", Duration::hours(1), Some(Unparseable))]
#[case::garbage_key("garbage-key", Duration::hours(1), Some(Unparseable))]
#[case::key_mismatch("key-of-other-leaf", Duration::hours(1), Some(KeyMismatch))]
#[case::other_workload("other-workload", Duration::hours(1), Some(WrongSan))]
#[case::other_trust_domain("other-trust-domain", Duration::hours(1), Some(WrongSan))]
#[case::missing_dns("missing-dns", Duration::hours(1), Some(WrongSan))]
#[case::extra_dns("extra-dns", Duration::hours(1), Some(WrongSan))]
#[case::dns_order_is_irrelevant("dns-reordered", Duration::hours(1), None)]
#[case::rogue_issuer("rogue-issuer", Duration::hours(1), Some(WrongIssuer))]
#[case::rogue_and_expired("rogue-issuer", Duration::days(3), Some(WrongIssuer))]
#[case::retired_issuer("retired-issuer", Duration::hours(1), Some(CaRotated))]
#[case::retired_and_expired("retired-issuer", Duration::days(3), Some(Expired))]
#[case::stale_bundle("stale-bundle", Duration::hours(1), Some(TrustBundleChanged))]
#[case::extra_root("bundle-with-extra-root", Duration::hours(1), Some(TrustBundleChanged))]
fn decides(#[case] case: &str, #[case] age: Duration, #[case] expected: Option<ReissueReason>) {
    let w = world();
    let data = tamper(&w, case);
    let stored = StoredSecret {
        tls_crt: data.crt.as_deref().map(str::as_bytes),
        tls_key: data.key.as_deref().map(str::as_bytes),
        ca_crt: data.ca.as_deref().map(str::as_bytes),
    };
    let retired = [w.old_ca.cert_der().clone()];
    let bundle = w.ca.roots_pem();
    let issuers = CurrentIssuers {
        active: w.ca.cert_der(),
        retired: &retired,
        bundle_pem: &bundle,
    };
    let now = ISSUED + age;
    let decision = decide(&stored, &w.expected, &issuers, now);
    match expected {
        Some(reason) => assert_eq!(decision, Decision::Reissue { reason }, "{case} at +{age}"),
        None => {
            let Decision::Keep { renew_at: at } = decision else {
                panic!("{case} at +{age}: expected Keep, got {decision:?}");
            };
            // Requeue exactly at 2/3 of the certificate's own lifetime.
            let expected_at = renew_at(ISSUED - Duration::minutes(5), ISSUED + Duration::hours(24));
            assert_eq!(at, expected_at);
            assert_eq!(at, datetime!(2026-05-01 15:58:20 UTC));
            assert!(now < at);
        }
    }
}

#[test]
fn a_reissued_secret_is_kept_again() {
    let w = world();
    let now = ISSUED + Duration::hours(20);
    let bundle = w.ca.roots_pem();
    let issuers = CurrentIssuers {
        active: w.ca.cert_der(),
        retired: &[],
        bundle_pem: &bundle,
    };
    let stale = from_leaf(&w.leaf);
    let stored = |d: &Data| {
        decide(
            &StoredSecret {
                tls_crt: d.crt.as_deref().map(str::as_bytes),
                tls_key: d.key.as_deref().map(str::as_bytes),
                ca_crt: d.ca.as_deref().map(str::as_bytes),
            },
            &w.expected,
            &issuers,
            now,
        )
    };
    assert_eq!(stored(&stale), Decision::Reissue { reason: RenewalDue });
    let renewed = issue_leaf(
        &w.ca,
        &LeafRequest {
            spiffe_id: w.expected.spiffe_id.clone(),
            dns_names: w.expected.dns_names.clone(),
            lifetime: Duration::hours(24),
        },
        now,
    )
    .unwrap();
    assert!(matches!(stored(&from_leaf(&renewed)), Decision::Keep { renew_at } if renew_at > now));
    // Without the old CA in `retired`, its leaves are simply foreign.
    let retired_leaf = from_leaf(&leaf_with(
        &w,
        &w.old_ca,
        "spiffe://cluster.local/ns/shop/sa/payments",
        &["payments.shop.svc", "payments.shop.svc.cluster.local"],
        now,
    ));
    assert_eq!(
        stored(&retired_leaf),
        Decision::Reissue {
            reason: WrongIssuer
        }
    );
}
