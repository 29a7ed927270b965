//! `--redis-url`: where the shared state lives, parsed into a [`RedisConfig`].
//!
//! One URL names the topology by its scheme (the `+` suffix follows the redis crate's own
//! `redis+unix://`; envoyproxy/ratelimit and Envoy Gateway say the same with a separate
//! `REDIS_TYPE` of `single`, `sentinel` or `cluster` and a comma-separated host list, which
//! is what the host part here is):
//!
//! | form | topology |
//! |---|---|
//! | `redis://[[user]:password@]host[:port][/db]` | one server (port 6379, db 0 by default) |
//! | `redis+sentinel://[[user]:password@]host1[:port],host2[:port]/master[/db]` | Sentinel (port 26379 by default); `master` is the monitored master's name |
//! | `redis+cluster://[[user]:password@]host1[:port],host2[:port]` | Redis Cluster (seed nodes; db 0 only) |
//!
//! `rediss`, `rediss+sentinel` and `rediss+cluster` are the same over TLS (rustls; the
//! system's roots, or a CA given with [`RedisConfig::with_ca_pem`]). With Sentinel, TLS and
//! the credentials apply to the master the Sentinels name; the Sentinels themselves are asked
//! without a password, over TLS when the scheme is `rediss+sentinel`. IPv6 hosts are written
//! in brackets (`[::1]:6379`). The password may be percent-encoded in the URL, but a Secret
//! should rather come through [`Password::from_env`] or [`Password::from_file`] and
//! [`RedisConfig::with_password`], so that it is not on a command line.
//!
//! The password is never printed: [`RedisConfig`]'s and [`Password`]'s `Debug` and `Display`
//! show `***` in its place.

use super::Error;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Default bound of one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound of one operation (the request path): a caller that gets no answer by then
/// carries on without the shared state.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(50);

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// Upper bound of the number of hosts in one URL.
const MAX_HOSTS: usize = 64;

/// A Redis password: its `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password from a string.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password in environment variable `var` (the operator maps a Secret's key to one).
    pub fn from_env(var: &str) -> Result<Password, Error> {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Password(value)),
            Ok(_) => Err(Error::Config(format!("{var} is empty"))),
            Err(_) => Err(Error::Config(format!("{var} is not set (or not UTF-8)"))),
        }
    }

    /// The password in a file (a mounted Secret), without the trailing newline.
    pub fn from_file(path: &Path) -> Result<Password, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(Error::Config(format!("{} is empty", path.display())));
        }
        Ok(Password(password.to_owned()))
    }

    /// The password itself, to hand to the client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A `host:port` of the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A client certificate (chain) and its private key, PEM: the key is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"***")
            .finish()
    }
}

/// How the Redis deployment is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a managed endpoint in front of a replicated one).
    Standalone(HostPort),
    /// Redis Sentinel: the Sentinels to ask, and the name of the master they monitor.
    Sentinel {
        /// The Sentinels.
        sentinels: Vec<HostPort>,
        /// The master's name (`sentinel monitor NAME ...`).
        master: String,
    },
    /// Redis Cluster: seed nodes (the client discovers the others).
    Cluster(Vec<HostPort>),
}

/// Where and how to connect: `--redis-url`, and what the operator adds (a password from a
/// Secret, a CA).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The topology and its hosts.
    pub topology: Topology,
    /// TLS (`rediss...` schemes).
    pub tls: bool,
    /// ACL user (Redis 6+); `None`: the default user.
    pub username: Option<String>,
    password: Option<Password>,
    /// The logical database (standalone and Sentinel; always 0 in a Cluster).
    pub db: i64,
    /// PEM CA certificates to trust instead of the system's roots (TLS only).
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate presented to a server that asks for one (TLS only).
    pub client_identity: Option<ClientIdentity>,
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Bound of one operation, its round trip included.
    pub op_timeout: Duration,
}

impl RedisConfig {
    /// Parses a `--redis-url` (forms in the module's documentation).
    pub fn parse(url: &str) -> Result<RedisConfig, Error> {
        // Errors never quote the URL: it may hold a password.
        let bad = |why: &str| Error::Config(format!("invalid Redis URL: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected SCHEME://HOST (redis://, rediss://, redis+sentinel://, redis+cluster://, ...)"))?;
        let (tls, kind) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, Kind::Standalone),
            "rediss" => (true, Kind::Standalone),
            "redis+sentinel" => (false, Kind::Sentinel),
            "rediss+sentinel" => (true, Kind::Sentinel),
            "redis+cluster" => (false, Kind::Cluster),
            "rediss+cluster" => (true, Kind::Cluster),
            _ => {
                return Err(bad(
                    "unknown scheme (redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster)",
                ));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // The last '@' ends the user info: a raw '@' in a password still parses.
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = parse_userinfo(userinfo)?;
        let default_port = match kind {
            Kind::Sentinel => DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_PORT,
        };
        let hosts = parse_hosts(hosts, default_port)?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let parse_db = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|db| (0..=1_000_000).contains(db))
                .ok_or_else(|| bad("the database must be a number"))
        };
        let (topology, db) = match kind {
            Kind::Standalone => {
                let [host] = <[HostPort; 1]>::try_from(hosts)
                    .map_err(|_| bad("redis:// takes one host (redis+cluster:// or redis+sentinel:// for several)"))?;
                let db = match segments.as_slice() {
                    [] => 0,
                    [db] => parse_db(db)?,
                    _ => return Err(bad("the path is /DB")),
                };
                (Topology::Standalone(host), db)
            }
            Kind::Sentinel => {
                let (master, db) = match segments.as_slice() {
                    [master] => (*master, 0),
                    [master, db] => (*master, parse_db(db)?),
                    _ => {
                        return Err(bad(
                            "redis+sentinel:// needs the master's name: /MASTER[/DB]",
                        ));
                    }
                };
                if !master
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(bad(
                        "the master's name has characters other than letters, digits, '-', '_', '.'",
                    ));
                }
                let sentinels = hosts;
                let master = master.to_owned();
                (Topology::Sentinel { sentinels, master }, db)
            }
            Kind::Cluster => {
                if !segments.is_empty() {
                    return Err(bad(
                        "redis+cluster:// takes no path (a Cluster has database 0 only)",
                    ));
                }
                (Topology::Cluster(hosts), 0)
            }
        };
        Ok(RedisConfig {
            topology,
            tls,
            username,
            password,
            db,
            ca_pem: None,
            client_identity: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            op_timeout: DEFAULT_OP_TIMEOUT,
        })
    }

    /// Sets the password (replacing one in the URL).
    pub fn with_password(mut self, password: Password) -> RedisConfig {
        self.password = Some(password);
        self
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    /// Trusts these PEM CA certificates (TLS) instead of the system's roots.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> RedisConfig {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trusts the CA certificates of the PEM file `path` (a private CA's, mounted from a
    /// Secret). An error names the file: unreadable, no certificate in it, a certificate that
    /// does not parse, or a URL without TLS (a CA is for `rediss…` URLs).
    pub fn with_ca_file(self, path: &Path) -> Result<RedisConfig, Error> {
        let bad = |why: String| Error::Config(format!("{}: {why}", path.display()));
        if !self.tls {
            return Err(bad(
                "a CA file is for TLS URLs (rediss://, rediss+sentinel://, rediss+cluster://); \
                 this URL is plain text"
                    .into(),
            ));
        }
        let pem = read_certificates(path)?;
        Ok(self.with_ca_pem(pem))
    }

    /// Presents the certificate (chain) and key of these PEM files to a `rediss…` server that
    /// asks for one (Redis' `tls-auth-clients yes`). An error names the file: unreadable, no
    /// certificate or no private key in it, a certificate that does not parse, or a URL without
    /// TLS. The key's content is never in an error.
    pub fn with_client_cert_files(self, cert: &Path, key: &Path) -> Result<RedisConfig, Error> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let bad = |path: &Path, why: String| Error::Config(format!("{}: {why}", path.display()));
        if !self.tls {
            return Err(bad(
                cert,
                "a client certificate is for TLS URLs (rediss://, rediss+sentinel://, \
                 rediss+cluster://); this URL is plain text"
                    .into(),
            ));
        }
        let cert_pem = read_certificates(cert)?;
        let key_pem = std::fs::read(key).map_err(|e| bad(key, format!("cannot read it: {e}")))?;
        if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(bad(
                key,
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into(),
            ));
        }
        Ok(RedisConfig {
            client_identity: Some(ClientIdentity { cert_pem, key_pem }),
            ..self
        })
    }

    /// Sets the bound of one operation.
    pub fn with_op_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.op_timeout = timeout;
        self
    }

    /// Sets the bound of one connection attempt.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Standalone,
    Sentinel,
    Cluster,
}

/// `[user][:password]` of the URL, percent-decoded; empty parts are absent.
/// The PEM file `path`, when it holds at least one certificate and each parses; an error names
/// the file.
fn read_certificates(path: &Path) -> Result<Vec<u8>, Error> {
    let bad = |why: String| Error::Config(format!("{}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certificates = crate::identity::pem::certificates(&pem).map_err(bad)?;
    if certificates.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    for (i, der) in certificates.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| bad(format!("certificate {} does not parse: {e}", i + 1)))?;
    }
    Ok(pem)
}

fn parse_userinfo(info: Option<&str>) -> Result<(Option<String>, Option<Password>), Error> {
    let Some(info) = info else {
        return Ok((None, None));
    };
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| Error::Config("invalid Redis URL: bad percent-encoding".into()))
    };
    let (user, password) = match info.split_once(':') {
        Some((user, password)) => (decode(user)?, decode(password)?),
        None => (decode(info)?, String::new()),
    };
    Ok((
        (!user.is_empty()).then_some(user),
        (!password.is_empty()).then_some(Password(password)),
    ))
}

fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<HostPort>, Error> {
    let bad = |why: String| Error::Config(format!("invalid Redis URL: {why}"));
    let mut out = Vec::new();
    for item in hosts.split(',') {
        if out.len() == MAX_HOSTS {
            return Err(bad(format!("more than {MAX_HOSTS} hosts")));
        }
        let (host, port) = if let Some(bracketed) = item.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad(format!("unclosed '[' in host {item:?}")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(format!("bad host {item:?}")))?,
                ),
            };
            (host, port)
        } else {
            match item.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (item, None),
            }
        };
        if host.is_empty() {
            return Err(bad("a host is empty".to_owned()));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(bad(format!("bad host {host:?}")));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("bad port {p:?}")))?,
        };
        out.push(HostPort {
            host: host.to_owned(),
            port,
        });
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL back, with `***` for the password.
impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        let join = |hosts: &[HostPort]| {
            hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let (scheme, hosts) = match &self.topology {
            Topology::Standalone(host) => (format!("redis{s}"), host.to_string()),
            Topology::Sentinel { sentinels, .. } => (format!("redis{s}+sentinel"), join(sentinels)),
            Topology::Cluster(nodes) => (format!("redis{s}+cluster"), join(nodes)),
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (None, None) => {}
            (user, password) => {
                f.write_str(user.as_deref().unwrap_or(""))?;
                if password.is_some() {
                    f.write_str(":***")?;
                }
                f.write_str("@")?;
            }
        }
        f.write_str(&hosts)?;
        match &self.topology {
            Topology::Standalone(_) if self.db != 0 => write!(f, "/{}", self.db),
            Topology::Sentinel { master, .. } if self.db != 0 => write!(f, "/{master}/{}", self.db),
            Topology::Sentinel { master, .. } => write!(f, "/{master}"),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_identity", &self.client_identity)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn standalone_forms() {
        let c = RedisConfig::parse("redis://localhost").unwrap();
        assert_eq!(c.topology, Topology::Standalone(hp("localhost", 6379)));
        assert!(!c.tls);
        assert_eq!((c.db, c.username.as_deref(), c.password()), (0, None, None));
        assert_eq!(c.op_timeout, DEFAULT_OP_TIMEOUT);

        let c = RedisConfig::parse("redis://:s3cret@redis.apiguard.svc:6380/2").unwrap();
        assert_eq!(
            c.topology,
            Topology::Standalone(hp("redis.apiguard.svc", 6380))
        );
        assert_eq!(c.db, 2);
        assert_eq!(c.password().map(Password::expose), Some("s3cret"));
        assert_eq!(c.username, None);

        let c = RedisConfig::parse("rediss://apiguard:p%40ss%3Aword@10.0.0.7:6379/").unwrap();
        assert!(c.tls);
        assert_eq!(c.username.as_deref(), Some("apiguard"));
        assert_eq!(c.password().map(Password::expose), Some("p@ss:word"));

        let c = RedisConfig::parse("redis://[::1]:7000").unwrap();
        assert_eq!(c.topology, Topology::Standalone(hp("::1", 7000)));
        assert_eq!(c.to_string(), "redis://[::1]:7000");
    }

    #[test]
    fn sentinel_and_cluster_forms() {
        let c = RedisConfig::parse("redis+sentinel://:pw@s1:26379,s2,s3:26380/mymaster/1").unwrap();
        assert_eq!(
            c.topology,
            Topology::Sentinel {
                sentinels: vec![hp("s1", 26379), hp("s2", 26379), hp("s3", 26380)],
                master: "mymaster".into()
            }
        );
        assert_eq!(c.db, 1);
        assert_eq!(
            c.to_string(),
            "redis+sentinel://:***@s1:26379,s2:26379,s3:26380/mymaster/1"
        );

        let c = RedisConfig::parse("rediss+cluster://n1:6379,n2:6379,n3").unwrap();
        assert!(c.tls);
        assert_eq!(
            c.topology,
            Topology::Cluster(vec![hp("n1", 6379), hp("n2", 6379), hp("n3", 6379)])
        );
        assert_eq!(c.to_string(), "rediss+cluster://n1:6379,n2:6379,n3:6379");
    }

    #[test]
    fn rejects_what_it_cannot_mean() {
        for url in [
            "localhost:6379",
            "http://localhost",
            "redis://",
            "redis://a,b",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:6379/x",
            "redis://h/1/2",
            "redis://h?db=1",
            "redis://h#insecure",
            "redis+sentinel://s1,s2",
            "redis+sentinel://s1/ma ster",
            "redis+cluster://n1,n2/0",
            "redis://[::1",
            "redis://h,",
            "redis://:%zz@h",
        ] {
            assert!(RedisConfig::parse(url).is_err(), "{url} parsed");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let err = RedisConfig::parse("redis://:hunter2@h:notaport").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let c = RedisConfig::parse("rediss://admin:hunter2@h:6379/3").unwrap();
        for shown in [
            format!("{c:?}"),
            c.to_string(),
            format!("{:?}", c.password()),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(c.to_string(), "rediss://admin:***@h:6379/3");
    }

    #[test]
    fn password_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "from-secret\n").unwrap();
        let c = RedisConfig::parse("redis://:url@h")
            .unwrap()
            .with_password(Password::from_file(&path).unwrap());
        assert_eq!(c.password().map(Password::expose), Some("from-secret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(Password::from_file(&path).is_err());
        assert!(Password::from_file(&dir.path().join("missing")).is_err());
        // An unset variable (no test sets it): an error naming the variable, not a panic.
        let err = Password::from_env("APIGUARD_TEST_REDIS_PASSWORD_UNSET").unwrap_err();
        assert!(
            err.to_string()
                .contains("APIGUARD_TEST_REDIS_PASSWORD_UNSET")
        );
    }

    #[test]
    fn ca_file_is_checked_and_names_the_file() {
        use crate::identity::CertificateAuthority;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate(now, time::Duration::days(1)).unwrap();
        std::fs::write(&path, ca.cert_pem()).unwrap();
        let tls = RedisConfig::parse("rediss://h").unwrap();
        let c = tls.clone().with_ca_file(&path).unwrap();
        assert_eq!(c.ca_pem.as_deref(), Some(ca.cert_pem().as_bytes()));

        let error = |c: RedisConfig, path: &Path| c.with_ca_file(path).unwrap_err().to_string();
        let plain = error(RedisConfig::parse("redis://h").unwrap(), &path);
        assert!(
            plain.contains("ca.crt") && plain.contains("plain text"),
            "{plain}"
        );
        let missing = error(tls.clone(), &dir.path().join("missing.crt"));
        assert!(
            missing.contains("missing.crt") && missing.contains("cannot read"),
            "{missing}"
        );
        std::fs::write(&path, "not a certificate\n").unwrap();
        let empty = error(tls.clone(), &path);
        assert!(empty.contains("no PEM certificate"), "{empty}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let garbage = error(tls, &path);
        assert!(
            garbage.contains("certificate 1 does not parse"),
            "{garbage}"
        );
    }

    #[test]
    fn client_cert_files_are_checked_and_the_key_never_shown() {
        use crate::identity::{CertificateAuthority, LeafRequest, SpiffeId, issue_leaf};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate(now, time::Duration::days(1)).unwrap();
        let leaf = issue_leaf(
            &ca,
            &LeafRequest::new(SpiffeId::new("cluster.local", "shop", "sensor").unwrap()),
            now,
        )
        .unwrap();
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let tls = RedisConfig::parse("rediss://h").unwrap();
        let c = tls.clone().with_client_cert_files(&cert, &key).unwrap();
        let id = c.client_identity.as_ref().expect("identity");
        assert_eq!(id.cert_pem, leaf.cert_pem.as_bytes());
        assert_eq!(id.key_pem, leaf.key_pem.as_bytes());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && shown.contains("***"),
            "{shown}"
        );

        let plain = RedisConfig::parse("redis://h")
            .unwrap()
            .with_client_cert_files(&cert, &key)
            .unwrap_err()
            .to_string();
        assert!(plain.contains("plain text"), "{plain}");
        let no_key = tls
            .clone()
            .with_client_cert_files(&cert, &dir.path().join("none.key"))
            .unwrap_err()
            .to_string();
        assert!(
            no_key.contains("none.key") && no_key.contains("cannot read"),
            "{no_key}"
        );
        // The certificate where the key should be: no key in it, and nothing of it echoed.
        let swapped = tls
            .clone()
            .with_client_cert_files(&cert, &cert)
            .unwrap_err()
            .to_string();
        assert!(swapped.contains("no PEM private key"), "{swapped}");
        let key_as_cert = tls
            .with_client_cert_files(&key, &key)
            .unwrap_err()
            .to_string();
        assert!(key_as_cert.contains("no PEM certificate"), "{key_as_cert}");
        assert!(!key_as_cert.contains("PRIVATE KEY-----\n"), "{key_as_cert}");
    }
}
