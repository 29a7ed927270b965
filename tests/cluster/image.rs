//! The operator image: `tests/image.sh` builds the Dockerfile's final stage with buildah around
//! the binary cargo built for these tests, unpacks it with umoci and runs it with runc as the
//! chart's pod runs (uid 65532, read-only root, no capabilities, in-cluster configuration
//! against the test control plane). The script makes the assertions; this test runs it and
//! fails, never skips, when it or a tool it needs is missing.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::control_plane;

/// The script takes about 10 s; a cold machine with a busy disk gets far more.
const TIMEOUT: Duration = Duration::from_secs(300);

/// What `tests/tools.sh container` installs, plus what the test machine already has.
const NEEDED: &[&str] = &["buildah", "umoci", "runc", "jq", "curl", "kubectl", "ldd"];

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(name);
            candidate.is_file()
                && std::fs::metadata(&candidate).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    })
}

#[test]
fn image_builds_and_runs_like_the_charts_pod() {
    let _group = crate::support::isolation::enter(module_path!());
    let missing: Vec<&str> = NEEDED.iter().copied().filter(|t| !on_path(t)).collect();
    assert!(
        missing.is_empty(),
        "tests/image.sh needs {missing:?} on PATH: run tests/tools.sh (or `tests/tools.sh container`)"
    );
    let control_plane = control_plane();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image");
    let mut child = Command::new(root.join("tests/image.sh"))
        .arg(env!("CARGO_BIN_EXE_apiguard"))
        .arg(&control_plane.kubeconfig)
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run tests/image.sh: {e}"));
    // The script's output is small (a line per check); read it on threads so a full pipe never
    // blocks it while this thread enforces the timeout.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for tests/image.sh") {
            break Some(status);
        }
        if start.elapsed() > TIMEOUT {
            // SIGTERM first: the script's exit trap removes the container it started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(10)
                && child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    match status {
        None => panic!("tests/image.sh did not finish within {TIMEOUT:?}:\n{output}"),
        Some(status) => assert!(
            status.success(),
            "tests/image.sh failed ({status}):\n{output}"
        ),
    }
    println!("{output}");
    assert!(
        output.contains("all checks passed"),
        "tests/image.sh exited 0 without its final line:\n{output}"
    );
}
