//! Every example policy renders to a configuration the real Envoy 1.40 accepts
//! (`envoy --mode validate`), with the file-based resources inlined so validation sees them.

use crate::support::envoy::{apiguard_render, envoy_validate, read_rendered_dir};
use apiguard::render::envoy::{BOOTSTRAP_FILE, LDS_FILE, static_bootstrap};
use rstest::rstest;
use std::path::{Path, PathBuf};

fn render_example(example: &Path, dir: &Path) {
    apiguard_render(&[
        "-f",
        example.to_str().expect("path"),
        "--envoy-dir",
        dir.to_str().expect("path"),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
}

#[rstest]
fn example_renders_to_a_valid_envoy_config(#[files("examples/*.yaml")] example: PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("envoy");
    render_example(&example, &dir);
    let (ok, log) = envoy_validate(&dir.join(BOOTSTRAP_FILE));
    assert!(ok, "{}: bootstrap rejected:\n{log}", example.display());
    let gateway = read_rendered_dir(&dir);
    let full = static_bootstrap(&gateway).expect("static bootstrap");
    let path = tmp.path().join("static.json");
    std::fs::write(&path, full).expect("write static bootstrap");
    let (ok, log) = envoy_validate(&path);
    assert!(
        ok,
        "{}: rendered listener/clusters rejected:\n{log}",
        example.display()
    );
}

#[test]
fn validation_really_checks_the_rendered_resources() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("envoy");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/public-consumer-api.yaml");
    render_example(&example, &dir);
    let mut gateway = read_rendered_dir(&dir);
    let lds = gateway.files.get_mut(LDS_FILE).expect("lds");
    let broken = lds
        .contents
        .replace("\"merge_slashes\":true", "\"merge_slashes_typo\":true");
    assert_ne!(broken, lds.contents, "the control edit applies");
    lds.contents = broken;
    let path = tmp.path().join("static.json");
    std::fs::write(&path, static_bootstrap(&gateway).expect("static")).expect("write");
    let (ok, log) = envoy_validate(&path);
    assert!(
        !ok,
        "a listener with an unknown field must be rejected:\n{log}"
    );
}

/// `scope: Global` limits (the `ratelimit` filter to the sensor, per-route descriptors), one
/// keyed by the client IP and one by a claim, beside a Replica limit: Envoy accepts them.
#[test]
fn global_rate_limits_render_to_a_valid_envoy_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/public-consumer-api.yaml");
    let text = std::fs::read_to_string(&example).expect("example");
    let global = text
        .replace(
            "  - name: per-user\n",
            "  - name: per-user\n    scope: Global\n",
        )
        .replace(
            "    by: {claim: sub}\n",
            "    by: {claim: sub}\n  - name: login-global\n    scope: Global\n    match: {methods: [POST], paths: [\"/login\"]}\n    limit: {requests: 50, per: Hour}\n",
        );
    assert!(
        global.matches("scope: Global").count() == 2,
        "the edits apply:\n{global}"
    );
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, global).expect("write policy");
    let dir = tmp.path().join("envoy");
    render_example(&policy, &dir);
    let gateway = read_rendered_dir(&dir);
    let lds = &gateway.files[LDS_FILE].contents;
    assert!(lds.contains("envoy.filters.http.ratelimit"), "{lds}");
    assert!(lds.contains("\"apiguard_limit\""), "{lds}");
    let (ok, log) = envoy_validate(&dir.join(BOOTSTRAP_FILE));
    assert!(ok, "bootstrap rejected:\n{log}");
    let path = tmp.path().join("static.json");
    std::fs::write(&path, static_bootstrap(&gateway).expect("static")).expect("write");
    let (ok, log) = envoy_validate(&path);
    assert!(ok, "rendered global rate limits rejected:\n{log}");
}
