//! CA rotation on a live operator (real kube-apiserver + etcd from `tests/tools.sh`, the
//! operator in-process): the user annotates the CA Secret and the rotation walks
//! AddingRoot -> Draining -> Stable, with the trust bundle and the leaf Secrets following.
//!
//! The leader changes during Draining (the first operator stops, a second one takes the Lease)
//! and the second one completes the rotation from the state stored in the Secret.
//!
//! Durations: propagation 10 s; leaf lifetime 180 s. The drain lasts one leaf lifetime after
//! the switch (leaves the old CA issued just before it must stay trusted), and a leaf's
//! `notBefore` is backdated 5 minutes for clock skew, so a lifetime under 150 s would renew
//! leaves continuously: this test takes about 3.5 minutes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::cluster::{eventually, with_temp_ns};
use crate::support::controller::{OPERATOR_NS, Operator};
use apiguard::api::ApiSecurityPolicy;
use apiguard::api::names::TRUST_BUNDLE_CONFIGMAP;
use apiguard::api::names::annotations::{
    CA_ROTATION_STATE as STATE_ANNOTATION, ROTATE_CA as ROTATE_ANNOTATION,
};
use apiguard::identity::CertificateAuthority;
use apiguard::identity::bundle::latest_not_after_signed_by;
use apiguard::identity::ca::PemSource;
use apiguard::identity::ca_rotation::{NEXT_CRT, NEXT_KEY, PREVIOUS_CRT};
use apiguard::identity::secrets::ca_from_secret;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const PROPAGATION: Duration = Duration::from_secs(10);
const LEAF_LIFETIME: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(30);
const CA_SECRET: &str = "apiguard-ca";
const LEAVES: [&str; 2] = [
    "payments-apiguard-gateway-identity",
    "payments-apiguard-target-identity",
];

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The certificates of a PEM text, as normalized PEM blocks.
fn pem_blocks(text: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(text)
        .split("-----END CERTIFICATE-----")
        .filter_map(|b| {
            let body: String = b
                .split("-----BEGIN CERTIFICATE-----")
                .nth(1)?
                .split_whitespace()
                .collect();
            Some(body)
        })
        .collect()
}

fn data<'a>(s: &'a Secret, key: &str) -> &'a [u8] {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .unwrap_or_default()
}

fn rotation_state(s: &Secret) -> Option<String> {
    let json = s.annotations().get(STATE_ANNOTATION)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["state"].as_str().map(str::to_string)
}

fn signed_by(ca: &CertificateAuthority, leaf_pem: &[u8]) -> bool {
    latest_not_after_signed_by(ca, [leaf_pem]).is_some()
}

async fn ca_secret(client: &Client) -> Secret {
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NS)
        .get(CA_SECRET)
        .await
        .unwrap_or_else(|e| panic!("reading Secret {OPERATOR_NS}/{CA_SECRET}: {e}"))
}

async fn bundle(client: &Client, ns: &str) -> Option<BTreeSet<String>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(TRUST_BUNDLE_CONFIGMAP)
        .await
        .ok()??;
    Some(pem_blocks(cm.data?.get("ca.crt")?.as_bytes()))
}

/// Whether both leaf Secrets are signed by `issuer` and carry exactly `roots` as ca.crt.
async fn leaves_are(
    client: &Client,
    ns: &str,
    issuer: &CertificateAuthority,
    roots: &BTreeSet<String>,
) -> bool {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    for name in LEAVES {
        let Ok(Some(s)) = api.get_opt(name).await else {
            return false;
        };
        if !signed_by(issuer, data(&s, "tls.crt")) || pem_blocks(data(&s, "ca.crt")) != *roots {
            return false;
        }
    }
    true
}

async fn setup_policy(client: &Client, ns: &str) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": ns},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("creating Service {ns}/api: {e}"));
    let p: ApiSecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": "payments", "namespace": ns},
        "spec": {
            "target": {"service": "api", "port": 8080},
            "exposure": "Internal",
            "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
            "authorization": {"rules": [{"name": "read", "match": {"methods": ["GET"], "paths": ["/items"]},
                "allow": {"scopes": ["items:read"]}}]},
        }
    }))
    .unwrap();
    Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("creating ApiSecurityPolicy {ns}/payments: {e}"));
}

async fn wait_ready(client: &Client, ns: &str) {
    let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/payments Ready=True"), || async {
        let p = api.get("payments").await.ok()?;
        let st = p.status.as_ref()?;
        (st.observed_generation == p.metadata.generation
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_annotated_ca_secret_rotates_through_adding_root_draining_and_stable() {
    let _group = crate::support::isolation::enter(module_path!());
    let mut first = operator("rotation-tests-1");
    with_temp_ns(|client, ns| async move {
        setup_policy(&client, &ns).await;
        wait_ready(&client, &ns).await;

        // Stable: one root, the leaves signed by it.
        let before = ca_secret(&client).await;
        assert_eq!(rotation_state(&before), None);
        let old = ca_from_secret(&before, now()).expect("the operator's CA");
        let old_roots = pem_blocks(old.roots_pem().as_bytes());
        assert_eq!(old_roots.len(), 1);
        assert_eq!(bundle(&client, &ns).await, Some(old_roots.clone()));
        assert!(leaves_are(&client, &ns, &old, &old_roots).await);

        request_rotation(&client).await;

        // 1. AddingRoot: both roots trusted, the old CA still issues.
        let adding = eventually(WAIT, "CA Secret in AddingRoot", || async {
            let s = ca_secret(&client).await;
            (rotation_state(&s).as_deref() == Some("AddingRoot")).then_some(s)
        })
        .await;
        assert!(
            !adding.annotations().contains_key(ROTATE_ANNOTATION),
            "the request is consumed"
        );
        let new = CertificateAuthority::from_pem(
            data(&adding, NEXT_CRT),
            data(&adding, NEXT_KEY),
            None,
            PemSource::described("next"),
            now(),
        )
        .expect("the next CA in next.crt/next.key");
        assert_ne!(new.fingerprint(), old.fingerprint());
        let new_roots = pem_blocks(new.roots_pem().as_bytes());
        let both: BTreeSet<String> = old_roots.union(&new_roots).cloned().collect();
        assert_eq!(both.len(), 2);
        assert_eq!(pem_blocks(data(&adding, "ca.crt")), both);
        assert_eq!(
            ca_from_secret(&adding, now()).unwrap().fingerprint(),
            old.fingerprint()
        );
        eventually(
            WAIT,
            "trust bundle with both roots and leaves re-issued by the OLD CA with both roots",
            || async {
                (bundle(&client, &ns).await.as_ref() == Some(&both)
                    && leaves_are(&client, &ns, &old, &both).await)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            rotation_state(&ca_secret(&client).await).as_deref(),
            Some("AddingRoot"),
            "the bundle reached the namespace before the new CA took over"
        );

        // 2. Draining: the new CA issues, the old root stays trusted.
        let draining = eventually(WAIT + PROPAGATION, "CA Secret in Draining", || async {
            let s = ca_secret(&client).await;
            (rotation_state(&s).as_deref() == Some("Draining")).then_some(s)
        })
        .await;
        assert_eq!(
            ca_from_secret(&draining, now()).unwrap().fingerprint(),
            new.fingerprint()
        );
        assert_eq!(pem_blocks(data(&draining, PREVIOUS_CRT)), old_roots);
        assert!(!draining.data.as_ref().unwrap().contains_key(NEXT_KEY));
        eventually(
            WAIT,
            "leaves re-issued by the NEW CA, bundle still both roots",
            || async {
                (bundle(&client, &ns).await.as_ref() == Some(&both)
                    && leaves_are(&client, &ns, &new, &both).await)
                    .then_some(())
            },
        )
        .await;

        // A second request while the rotation is in progress is dropped, with the reason.
        request_rotation(&client).await;
        eventually(WAIT, "the second request removed", || async {
            let s = ca_secret(&client).await;
            (!s.annotations().contains_key(ROTATE_ANNOTATION)
                && rotation_state(&s).as_deref() == Some("Draining"))
            .then_some(())
        })
        .await;
        eventually(WAIT, "Event CARotationRequestIgnored", || async {
            ca_events(&client)
                .await
                .contains(&"CARotationRequestIgnored".to_string())
                .then_some(())
        })
        .await;

        // The leader changes mid-rotation: the state is in the Secret, the next one carries on.
        assert!(first.health.is_leader());
        first.stop();
        let second = operator("rotation-tests-2");
        eventually(WAIT, "the second operator leads", || async {
            second.health.is_leader().then_some(())
        })
        .await;
        assert_eq!(
            rotation_state(&ca_secret(&client).await).as_deref(),
            Some("Draining"),
            "the handover happened before the rotation completed"
        );

        // 3. Stable: only the new root, once every old leaf has expired.
        let stable = eventually(LEAF_LIFETIME + WAIT, "CA Secret back to Stable", || async {
            let s = ca_secret(&client).await;
            (!s.annotations().contains_key(STATE_ANNOTATION)).then_some(s)
        })
        .await;
        let keys: Vec<&String> = stable.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(pem_blocks(data(&stable, "ca.crt")), new_roots);
        assert!(!stable.annotations().contains_key(ROTATE_ANNOTATION));
        assert_eq!(
            ca_from_secret(&stable, now()).unwrap().fingerprint(),
            new.fingerprint()
        );
        eventually(
            WAIT,
            "trust bundle and leaves with the new root only",
            || async {
                (bundle(&client, &ns).await.as_ref() == Some(&new_roots)
                    && leaves_are(&client, &ns, &new, &new_roots).await)
                    .then_some(())
            },
        )
        .await;
        wait_ready(&client, &ns).await;
        let reasons = eventually(WAIT, "an Event for every step", || async {
            let r = ca_events(&client).await;
            [
                "CARotationAddingRoot",
                "CARotationDraining",
                "CARotationStable",
            ]
            .iter()
            .all(|want| r.iter().any(|x| x == want))
            .then_some(r)
        })
        .await;
        assert!(
            !reasons.contains(&"CARotationFailed".to_string()),
            "{reasons:?}"
        );
    })
    .await;
}

/// An in-process operator with the test's leaf lifetime and propagation.
fn operator(identity: &str) -> Operator {
    Operator::start_with(identity, "apiguard-controller", |c| {
        c.leaf_lifetime = time::Duration::try_from(LEAF_LIFETIME).unwrap();
        c.ca_rotation_propagation = PROPAGATION;
    })
}

/// The user's request (what `kubectl annotate` does).
async fn request_rotation(client: &Client) {
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NS)
        .patch(
            CA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "requested"}}})),
        )
        .await
        .expect("annotating the CA Secret");
}

/// Reasons of the Events recorded on the CA Secret.
async fn ca_events(client: &Client) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), OPERATOR_NS)
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(CA_SECRET))
                })
                .filter_map(|e| e.reason)
                .collect()
        })
        .unwrap_or_default()
}
