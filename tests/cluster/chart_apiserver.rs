//! The chart's rendered objects are accepted by a real kube-apiserver
//! (`kubectl apply --dry-run=server`) for every supported shape of values, and a real
//! `helm install` / `helm upgrade` keeps the `caBundle` the operator server-side applied (the
//! very apply body `apiguard run` sends, field manager `apiguard-webhook-ca`), while
//! `helm uninstall` leaves no webhook registration behind.

use crate::support::cluster::control_plane;

/// The CRDs the chart's optional objects (cert-manager Certificate/Issuer, ServiceMonitor) and
/// the chart itself need, applied for real once.
fn prepare() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(prepare_once);
}

fn prepare_once() {
    let cp = control_plane();
    cp.kubectl_ok([
        "apply",
        "-f",
        "crds/",
        "-f",
        "tests/fixtures/crds/cert-manager.io.yaml",
        "-f",
        "tests/fixtures/crds/monitoring.coreos.com.yaml",
    ]);
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        "crds/",
        "-f",
        "tests/fixtures/crds/cert-manager.io.yaml",
        "-f",
        "tests/fixtures/crds/monitoring.coreos.com.yaml",
    ]);
}

#[test]
fn the_apiserver_accepts_the_rendered_chart_for_every_value_set() {
    let _group = crate::support::isolation::enter(module_path!());
    prepare();
    let cp = control_plane();
    let namespace = "chart-dry-run";
    cp.kubectl_ok(["create", "namespace", namespace]);
    let value_sets: &[&[&str]] = &[
        &[],
        &[
            "webhook.url=https://localhost:8443/validate",
            "webhook.caBundle=-----BEGIN CERTIFICATE-----",
        ],
        &["webhook.url=https://127.0.0.1:8443/validate"],
        &["certManager.enabled=true"],
        &[
            "certManager.enabled=true",
            "certManager.issuerRef.name=corp-ca",
            "certManager.issuerRef.kind=ClusterIssuer",
        ],
        &["controller.enabled=false"],
        &["webhook.enabled=false"],
        &[
            "metrics.serviceMonitor.enabled=true",
            "admission.mode=Warn",
            "webhook.failurePolicy=Ignore",
            "replicaCount=3",
        ],
    ];
    for values in value_sets {
        let mut args = vec!["template", "apiguard", "charts/apiguard", "-n", namespace];
        for v in *values {
            args.extend(["--set", v]);
        }
        let rendered = control_plane().helm_ok(&args);
        assert!(rendered.contains("kind: ClusterRole"), "{rendered}");
        let out = cp.kubectl_with_stdin(
            ["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
            &rendered,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the apiserver refused the chart rendered with {values:?}: {stderr}\n{rendered}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let objects =
            rendered.matches("\nkind: ").count() + rendered.starts_with("kind: ") as usize;
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            objects,
            "{values:?}: every object dry-run applied: {stdout}"
        );
    }
}

#[test]
fn helm_upgrade_keeps_the_operators_ca_bundle_and_uninstall_removes_the_registration() {
    let _group = crate::support::isolation::enter(module_path!());
    use apiguard::api::names::field_managers::WEBHOOK_CA_BUNDLE as CA_BUNDLE_FIELD_MANAGER;
    use apiguard::certs::ca_bundle::ca_bundle_apply;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    prepare();
    let cp = control_plane();
    control_plane().helm_ok(&[
        "install",
        "apiguard-upgrade",
        "charts/apiguard",
        "-n",
        "chart-upgrade",
        "--create-namespace",
        // Fail-closed with no pod to answer would refuse this test's own objects elsewhere.
        "--set",
        "webhook.failurePolicy=Ignore",
    ]);
    // Helm renders no caBundle and no certificate: that is the operator's job.
    assert_eq!(
        cp.webhook_ca_bundle("apiguard-upgrade"),
        None,
        "helm rendered a caBundle"
    );
    let secrets = cp.kubectl_ok(["-n", "chart-upgrade", "get", "secrets", "-o", "name"]);
    assert!(
        !secrets.contains("webhook-tls"),
        "helm rendered a certificate Secret: {secrets}"
    );

    // What every operator replica does: server-side apply the CA as each webhook's caBundle.
    let bundle = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";
    let live: ValidatingWebhookConfiguration = serde_json::from_str(&cp.kubectl_ok([
        "get",
        "validatingwebhookconfiguration",
        "apiguard-upgrade",
        "-o",
        "json",
    ]))
    .unwrap();
    let body = ca_bundle_apply(&live, bundle);
    let out = cp.kubectl_with_stdin(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            CA_BUNDLE_FIELD_MANAGER,
            "-f",
            "-",
        ],
        &body.to_string(),
    );
    assert!(
        out.status.success(),
        "the apiserver refused the operator's caBundle apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = cp.webhook_ca_bundle("apiguard-upgrade");
    assert!(applied.as_ref().is_some_and(|b| !b.is_empty()));

    control_plane().helm_ok(&[
        "upgrade",
        "apiguard-upgrade",
        "charts/apiguard",
        "-n",
        "chart-upgrade",
        "--reuse-values",
        "--set",
        "admission.mode=Warn",
        "--set",
        "webhook.timeoutSeconds=7",
    ]);
    assert_eq!(
        cp.webhook_ca_bundle("apiguard-upgrade"),
        applied,
        "helm upgrade dropped the operator's caBundle"
    );
    let vwc = cp.kubectl_ok([
        "get",
        "validatingwebhookconfiguration",
        "apiguard-upgrade",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let vwc: serde_json::Value = serde_json::from_str(&vwc).unwrap();
    assert_eq!(
        vwc["webhooks"][0]["timeoutSeconds"], 7,
        "the upgrade applied"
    );
    assert!(
        vwc["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["manager"] == CA_BUNDLE_FIELD_MANAGER && f["operation"] == "Apply"),
        "{}",
        vwc["metadata"]["managedFields"]
    );
    let mode = cp.kubectl_ok([
        "-n",
        "chart-upgrade",
        "get",
        "deploy",
        "apiguard-upgrade",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"APIGUARD_MODE\")].value}",
    ]);
    assert_eq!(mode, "Warn");

    control_plane().helm_ok(&["uninstall", "apiguard-upgrade", "-n", "chart-upgrade"]);
    let left = cp.kubectl_ok(["get", "validatingwebhookconfigurations", "-o", "name"]);
    assert!(
        !left.contains("apiguard-upgrade"),
        "helm uninstall left a webhook registration: {left}"
    );
}
