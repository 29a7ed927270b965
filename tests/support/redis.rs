//! A real `redis-server` (Debian's, installed by `tests/tools.sh redis`) on 127.0.0.1 and a
//! free port, no persistence, in a temporary directory: started and ready (answers PING)
//! within a bounded wait, stopped and restarted on the same port, killed on drop.

use super::tools::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The redis-server binary: `$APIGUARD_REDIS_SERVER` (target/tools/env.sh), else Debian's.
/// Panics, saying how to install it, when it is not there: a test of the shared state must
/// not pass without a real Redis.
pub fn redis_server() -> PathBuf {
    let path = std::env::var_os("APIGUARD_REDIS_SERVER")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(&path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
    assert!(
        executable,
        "redis-server not found at {}: run `tests/tools.sh redis` (Debian's redis-server), \
         or set APIGUARD_REDIS_SERVER",
        path.display()
    );
    path
}

/// TLS material of a server: PEM files.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running redis-server.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    tls: bool,
    /// Files the server reads (TLS material, a Sentinel's config), kept while it runs.
    files: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server, no password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A plain server with extra arguments (`["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut args = vec!["--port".to_owned(), port.to_string()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        RedisServer::launch(port, args, false)
    }

    /// A TLS-only server (`--port 0 --tls-port N`); `auth_clients`: clients must present a
    /// certificate from `tls.ca` (Redis' `tls-auth-clients yes`).
    fn start_tls(tls: &Tls, auth_clients: bool) -> RedisServer {
        let port = free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &tls.cert.display().to_string(),
            "--tls-key-file",
            &tls.key.display().to_string(),
            "--tls-ca-cert-file",
            &tls.ca.display().to_string(),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]
        .map(str::to_owned)
        .to_vec();
        RedisServer::launch(port, args, true)
    }

    /// A TLS-only server whose certificate (for `localhost`) comes from a new private CA made
    /// by apiguard's own CA code; the CA's PEM (also in [`RedisServer::ca_file`]).
    pub fn start_tls_private_ca() -> (RedisServer, String) {
        RedisServer::start_tls_with_new_ca(false)
    }

    /// [`RedisServer::start_tls_private_ca`] asking clients for a certificate from the same CA;
    /// one is in [`RedisServer::client_cert_files`].
    pub fn start_mtls_private_ca() -> (RedisServer, String) {
        RedisServer::start_tls_with_new_ca(true)
    }

    fn start_tls_with_new_ca(auth_clients: bool) -> (RedisServer, String) {
        use apiguard::identity::{
            CertificateAuthority, DEFAULT_CA_LIFETIME, LeafRequest, SpiffeId, issue_leaf,
        };
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME).expect("a CA");
        let mut request = LeafRequest::new(
            SpiffeId::new("cluster.local", "apiguard", "redis").expect("a SPIFFE ID"),
        );
        request.dns_names = vec!["localhost".into()];
        let leaf = issue_leaf(&ca, &request, now).expect("a server certificate");
        let certs = tempfile::tempdir().expect("a temporary directory");
        let tls = Tls {
            cert: certs.path().join("tls.crt"),
            key: certs.path().join("tls.key"),
            ca: certs.path().join("ca.crt"),
        };
        std::fs::write(&tls.cert, &leaf.cert_pem).expect("write tls.crt");
        std::fs::write(&tls.key, &leaf.key_pem).expect("write tls.key");
        std::fs::write(&tls.ca, ca.cert_pem()).expect("write ca.crt");
        let client = issue_leaf(
            &ca,
            &LeafRequest::new(
                SpiffeId::new("cluster.local", "shop", "sensor").expect("a SPIFFE ID"),
            ),
            now,
        )
        .expect("a client certificate");
        std::fs::write(certs.path().join("client.crt"), &client.cert_pem).expect("write");
        std::fs::write(certs.path().join("client.key"), &client.key_pem).expect("write");
        let mut server = RedisServer::start_tls(&tls, auth_clients);
        server.files = Some(certs);
        (server, ca.cert_pem())
    }

    /// A Redis Cluster node (`--cluster-enabled yes`, its bus on another free port), not yet in
    /// a cluster: see [`create_cluster`].
    pub fn start_cluster_node() -> RedisServer {
        let bus = free_port().to_string();
        RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
            "--cluster-node-timeout",
            "2000",
        ])
    }

    /// A Sentinel (`redis-server sentinel.conf --sentinel`) monitoring `master` at
    /// 127.0.0.1:`master_port`, quorum 1, the master down after 1 s without an answer.
    pub fn start_sentinel(master: &str, master_port: u16) -> RedisServer {
        let port = free_port();
        let conf_dir = tempfile::tempdir().expect("a temporary directory");
        let conf = conf_dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {master} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n"
            ),
        )
        .expect("write sentinel.conf");
        let args = vec![
            conf.display().to_string(),
            "--sentinel".to_owned(),
            "--port".to_owned(),
            port.to_string(),
        ];
        let mut server = RedisServer::launch(port, args, false);
        server.files = Some(conf_dir);
        server
    }

    /// `redis-cli -p PORT ARGS...` against this server: its output (panics when it cannot run).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// A client certificate and its key from the CA of [`RedisServer::start_mtls_private_ca`]:
    /// `(cert, key)` files.
    pub fn client_cert_files(&self) -> (PathBuf, PathBuf) {
        let ca = self.ca_file();
        let dir = ca.parent().expect("the CA's directory");
        (dir.join("client.crt"), dir.join("client.key"))
    }

    /// The CA file of [`RedisServer::start_tls_private_ca`].
    pub fn ca_file(&self) -> PathBuf {
        self.files
            .as_ref()
            .expect("a server of start_tls_private_ca")
            .path()
            .join("ca.crt")
    }

    fn launch(port: u16, args: Vec<String>, tls: bool) -> RedisServer {
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a temporary directory"),
            args,
            tls,
            files: None,
            child: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://localhost:PORT` for TLS: the name the test
    /// certificate is for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The server's temporary directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(redis_server())
            .args(&self.args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the server answers PING (TLS: until it logs it is ready), bounded.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited ({status}) at start:\n{}", self.log());
            }
            let ready = if self.tls {
                self.log().contains("Ready to accept connections")
            } else {
                ping(self.port)
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready within {READY_WITHIN:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (an empty database: nothing is saved).
    pub fn restart(&mut self) {
        self.stop();
        let log = self.dir.path().join("redis.log");
        let _ = std::fs::remove_file(log);
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...` (Debian's redis-tools, installed by
/// `tests/tools.sh redis`): its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (run `tests/tools.sh redis`): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `nodes` one Redis Cluster of masters (`redis-cli --cluster create`, the slots split
/// evenly) and waits, bounded, until every node says `cluster_state:ok`.
pub fn create_cluster(nodes: &[RedisServer]) {
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (run `tests/tools.sh redis`): {e}"));
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + READY_WITHIN;
    for node in nodes {
        while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok within {READY_WITHIN:?}: {}",
                node.cli(&["cluster", "info"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether a server on 127.0.0.1:`port` answers PING (or says it wants a password first).
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 64];
    match stream.read(&mut answer) {
        Ok(n) => answer[..n].starts_with(b"+PONG") || answer[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}
