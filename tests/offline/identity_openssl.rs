//! The issued chain as the openssl CLI sees it, and the `apiguard identity` CLI end to end.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::tools::openssl;

use apiguard::identity::{CertificateAuthority, LeafRequest, SpiffeId, issue_leaf};
use time::{Duration, OffsetDateTime};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_leaf_text(dir: &Path, spiffe_id: &str, dns: &[&str]) {
    let out = openssl(&["x509", "-in", "tls.crt", "-text", "-noout"], dir);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("URI:{spiffe_id}")), "{t}");
    for name in dns {
        assert!(t.contains(&format!("DNS:{name}")), "{t}");
    }
    assert!(t.contains("Digital Signature"), "{t}");
    assert!(!t.contains("Certificate Sign"), "{t}");
    assert!(
        t.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{t}"
    );
    assert!(t.contains("CA:FALSE"), "{t}");
    assert!(t.contains("ASN1 OID: prime256v1"), "{t}");
    assert!(t.contains("X509v3 Subject Key Identifier"), "{t}");
    assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
}

fn verify(dir: &Path) -> Output {
    openssl(
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslclient",
            "-purpose",
            "sslserver",
            "tls.crt",
        ],
        dir,
    )
}

#[test]
fn openssl_verifies_the_issued_chain_and_shows_its_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::generate(now, Duration::days(3650)).unwrap();
    let mut req =
        LeafRequest::new(SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap());
    req.dns_names = vec!["payments.shop.svc".into()];
    let leaf = issue_leaf(&ca, &req, now).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &leaf.ca_bundle_pem).unwrap();
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("tls.crt: OK"));
    assert_leaf_text(
        dir.path(),
        "spiffe://cluster.local/ns/shop/sa/payments",
        &["payments.shop.svc"],
    );

    // The root as openssl sees it.
    let out = openssl(&["x509", "-in", "ca.crt", "-text", "-noout"], dir.path());
    let t = text(&out);
    assert!(
        t.contains("CA:TRUE") && t.contains("Certificate Sign, CRL Sign"),
        "{t}"
    );
    assert!(t.contains("CN = apiguard root CA "), "{t}");

    // Control: a leaf from another CA does not verify against this bundle.
    let other = CertificateAuthority::generate(now, Duration::days(1)).unwrap();
    let foreign = issue_leaf(&other, &req, now).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &foreign.cert_pem).unwrap();
    let out = verify(dir.path());
    assert!(!out.status.success(), "{}", text(&out));
}

fn apiguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(args)
        .output()
        .expect("run apiguard")
}

#[test]
fn cli_init_ca_and_issue_produce_a_chain_openssl_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let out_dir = tmp.path().join("leaf");
    let (ca_s, out_s) = (ca_dir.to_str().unwrap(), out_dir.to_str().unwrap());

    let out = apiguard(&["identity", "init-ca", "--out", ca_s, "--lifetime", "87600h"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("PRIVATE KEY"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second init-ca refuses to clobber the CA, and leaves it untouched.
    let before = std::fs::read(ca_dir.join("ca.key")).unwrap();
    let out = apiguard(&["identity", "init-ca", "--out", ca_s]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refusing to overwrite"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(ca_dir.join("ca.key")).unwrap(), before);

    let id = "spiffe://prod.example/ns/shop/sa/payments";
    let out = apiguard(&[
        "identity",
        "issue",
        "--ca-dir",
        ca_s,
        "--spiffe-id",
        id,
        "--dns",
        "payments.shop.svc",
        "--dns",
        "payments.shop.svc.cluster.local",
        "--lifetime",
        "90m",
        "--out",
        out_s,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(out_dir.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = verify(&out_dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_leaf_text(
        &out_dir,
        id,
        &["payments.shop.svc", "payments.shop.svc.cluster.local"],
    );
    // ca.crt of the leaf is the root written by init-ca.
    assert_eq!(
        std::fs::read(out_dir.join("ca.crt")).unwrap(),
        std::fs::read(ca_dir.join("ca.crt")).unwrap()
    );
    // 90m lifetime (+5m backdating) as openssl reports it.
    let dates = text(&openssl(
        &["x509", "-in", "tls.crt", "-noout", "-dates"],
        &out_dir,
    ));
    let t = |k: &str| {
        let line = dates.lines().find(|l| l.starts_with(k)).unwrap();
        let v = line.split_once('=').unwrap().1;
        time::PrimitiveDateTime::parse(
            v.trim_end_matches(" GMT"),
            &time::macros::format_description!(
                "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
            ),
        )
        .unwrap()
    };
    assert_eq!(t("notAfter") - t("notBefore"), Duration::minutes(95));

    // Bad input: a clear error naming the problem, exit code non-zero, no files.
    let bad = tmp.path().join("bad");
    let out = apiguard(&[
        "identity",
        "issue",
        "--ca-dir",
        ca_s,
        "--spiffe-id",
        "spiffe://cluster.local/shop/payments",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("path must be /ns/<namespace>/sa/<serviceAccount>"),
        "{}",
        text(&out)
    );
    assert!(!bad.exists());
    let out = apiguard(&[
        "identity",
        "issue",
        "--ca-dir",
        out_s,
        "--spiffe-id",
        id,
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ca.key"), "{}", text(&out));

    // A CA directory whose key belongs to another CA: the message names both files.
    let other = tmp.path().join("other");
    let out = apiguard(&["identity", "init-ca", "--out", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(ca_dir.join("ca.crt"), other.join("ca.crt")).unwrap();
    let out = apiguard(&[
        "identity",
        "issue",
        "--ca-dir",
        other.to_str().unwrap(),
        "--spiffe-id",
        id,
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains(&format!(
            "{} does not match the public key of the certificate in {}",
            other.join("ca.key").display(),
            other.join("ca.crt").display()
        )),
        "{}",
        text(&out)
    );
    assert!(!bad.exists());
}
