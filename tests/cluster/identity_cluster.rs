//! Workload identity against a real kube-apiserver: race-free CA bootstrap across replicas
//! and issuing + writing 1,000 leaf Secrets.

use std::time::Instant;

use crate::support::cluster::{control_plane, with_temp_ns};
use apiguard::certs::{CaOrigin, ensure_ca, load_ca};
use apiguard::identity::rotation::CurrentIssuers;
use apiguard::identity::secrets;
use apiguard::identity::{Decision, ExpectedIdentity, LeafRequest, SpiffeId, decide, issue_leaf};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use time::OffsetDateTime;

#[tokio::test]
async fn concurrent_replicas_bootstrap_exactly_one_ca() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let now = OffsetDateTime::now_utc();
        // Eight "replicas" start at once; each reads, finds nothing, generates and creates.
        let replicas: Vec<_> = (0..8)
            .map(|_| {
                let (client, ns) = (client.clone(), ns.clone());
                tokio::spawn(async move { ensure_ca(client, &ns, "apiguard-ca", now).await })
            })
            .collect();
        let mut fingerprints = Vec::new();
        let mut origins = Vec::new();
        for r in replicas {
            let (ca, origin) = r
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("ensure_ca failed: {e}"));
            fingerprints.push(ca.fingerprint());
            origins.push(origin);
        }
        fingerprints.dedup();
        assert_eq!(
            fingerprints.len(),
            1,
            "replicas disagree on the CA: {fingerprints:?}"
        );
        // Exactly one replica created the CA; the others read or adopted it.
        let created = origins.iter().filter(|o| **o == CaOrigin::Created).count();
        assert_eq!(created, 1, "{origins:?}");
        eprintln!("identity: ensure_ca origins of 8 concurrent replicas: {origins:?}");

        // The stored Secret is that CA, and a later start reuses it instead of overwriting.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let stored = secrets.get("apiguard-ca").await.unwrap();
        assert_eq!(
            secrets::ca_from_secret(&stored, now).unwrap().fingerprint(),
            fingerprints[0]
        );
        let (again, origin) = ensure_ca(client.clone(), &ns, "apiguard-ca", now)
            .await
            .unwrap();
        assert_eq!(again.fingerprint(), fingerprints[0]);
        assert_eq!(origin, CaOrigin::Existing);
        let after = secrets.get("apiguard-ca").await.unwrap();
        assert_eq!(
            after.metadata.resource_version,
            stored.metadata.resource_version
        );

        // As a user sees it.
        let cp = control_plane();
        let ty = cp.kubectl_ok([
            "get",
            "secret",
            "apiguard-ca",
            "-n",
            &ns,
            "-o",
            "jsonpath={.type}",
        ]);
        assert_eq!(ty, "kubernetes.io/tls");
        let keys = cp.kubectl_ok([
            "get",
            "secret",
            "apiguard-ca",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data}",
        ]);
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(keys.contains(key), "{keys}");
        }
    })
    .await;
}

#[tokio::test]
async fn issues_and_writes_a_thousand_leaf_secrets() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let now = OffsetDateTime::now_utc();
        let (ca, _) = ensure_ca(client.clone(), &ns, "apiguard-ca", now).await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let start = Instant::now();
        let mut leaves = Vec::with_capacity(1000);
        for i in 0..1000 {
            let mut req = LeafRequest::new(SpiffeId::new("cluster.local", &ns, &format!("sa-{i}")).unwrap());
            req.dns_names = vec![format!("svc-{i}.{ns}.svc")];
            leaves.push((i, issue_leaf(&ca, &req, now).unwrap()));
        }
        let issued = start.elapsed();
        futures::stream::iter(leaves)
            .map(|(i, leaf)| {
                let secrets = secrets.clone();
                let ns = ns.clone();
                async move {
                    let secret = secrets::leaf_secret(&format!("sa-{i}-identity"), &ns, &leaf, None);
                    secrets.create(&PostParams::default(), &secret).await.map(|_| ())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .unwrap_or_else(|e| panic!("writing Secrets: {e}"));
        let total = start.elapsed();
        eprintln!(
            "identity: issued 1000 leaves in {:.3}s, issued + wrote 1000 Secrets in {:.3}s ({:.0} Secrets/s)",
            issued.as_secs_f64(),
            total.as_secs_f64(),
            1000.0 / total.as_secs_f64()
        );

        let listed = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=apiguard,app.kubernetes.io/component=workload-identity"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1000);
        // What was written reads back as a Secret to keep, for the identity it was issued to.
        let bundle = ca.roots_pem();
        let issuers = CurrentIssuers { active: ca.cert_der(), retired: &[], bundle_pem: &bundle };
        for i in [0, 499, 999] {
            let s = secrets.get(&format!("sa-{i}-identity")).await.unwrap();
            let expected = ExpectedIdentity {
                spiffe_id: SpiffeId::new("cluster.local", &ns, &format!("sa-{i}")).unwrap(),
                dns_names: vec![format!("svc-{i}.{ns}.svc")],
            };
            assert!(
                matches!(decide(&secrets::stored(&s), &expected, &issuers, now), Decision::Keep { .. }),
                "sa-{i}"
            );
        }
        assert!(total.as_secs() < 120, "1000 Secrets took {total:?}");
    })
    .await;
}

#[tokio::test]
async fn a_user_supplied_ca_secret_created_with_kubectl_is_used_as_issuer() {
    let _group = crate::support::isolation::enter(module_path!());
    with_temp_ns(|client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args(["identity", "init-ca", "--out", ca_dir.to_str().unwrap(), "--lifetime", "720h"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cp = control_plane();
        let (crt, key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
        cp.kubectl_ok([
            "create", "secret", "tls", "corp-ca", "-n", &ns,
            &format!("--cert={}", crt.display()),
            &format!("--key={}", key.display()),
        ]);
        let now = OffsetDateTime::now_utc();
        let ca = load_ca(client.clone(), &ns, "corp-ca", now).await.unwrap();
        assert_eq!(ca.cert_pem(), std::fs::read_to_string(&crt).unwrap());
        let leaf = issue_leaf(&ca, &LeafRequest::new(SpiffeId::new("cluster.local", &ns, "api").unwrap()), now).unwrap();
        assert_eq!(leaf.ca_bundle_pem, ca.roots_pem());

        // A Secret whose key belongs to another CA is refused with a message naming it.
        let other = dir.path().join("other");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args(["identity", "init-ca", "--out", other.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let mismatch = cp.kubectl_with_stdin(
            ["create", "secret", "generic", "broken-ca", "-n", &ns,
             &format!("--from-file=tls.crt={}", crt.display()),
             &format!("--from-file=tls.key={}", other.join("ca.key").display())],
            "",
        );
        assert!(mismatch.status.success());
        let err = load_ca(client.clone(), &ns, "broken-ca", now).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Secret {ns}/broken-ca key tls.key does not match the public key of the certificate in Secret {ns}/broken-ca key tls.crt")
        );
        let err = load_ca(client, &ns, "absent", now).await.unwrap_err();
        assert_eq!(err.to_string(), format!("CA Secret {ns}/absent not found"));
    })
    .await;
}
