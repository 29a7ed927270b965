//! `apiguard identity init-ca|issue`: the controller's CA and issuance code, offline, so a
//! person can bootstrap or inspect certificates.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use time::{Duration, OffsetDateTime};

use crate::identity::ca::PemSource;
use crate::identity::{CertificateAuthority, LeafRequest, SpiffeId, issue_leaf, rfc3339};

/// Offline CA and certificate tools.
// The argument docs are `--help` text, where `<trustDomain>` reads as meant; not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Generate a self-signed ECDSA P-256 root CA: writes DIR/ca.crt and DIR/ca.key (0600).
    InitCa {
        /// Directory to write ca.crt and ca.key into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity of the root, e.g. 87600h (10 years), 90m, 30s.
        #[arg(long, default_value = "87600h", value_parser = parse_duration)]
        lifetime: Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf for a SPIFFE ID: writes DIR/tls.crt, DIR/tls.key (0600) and DIR/ca.crt.
    Issue {
        /// Directory holding the issuer's ca.crt (certificate, then any chain) and ca.key.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>
        #[arg(long, value_name = "URI", value_parser = parse_spiffe_id)]
        spiffe_id: SpiffeId,
        /// A DNS SAN; repeat for several.
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Validity of the leaf, e.g. 24h; capped at the CA's expiry.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        lifetime: Duration,
        /// Directory to write tls.crt, tls.key and ca.crt into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn parse_spiffe_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| e.to_string())
}

/// A certificate lifetime: the policy duration syntax (`24h`, `90m`, `30s`, `1h30m`), at
/// least one second.
fn parse_duration(input: &str) -> Result<Duration, String> {
    let parsed = crate::api::duration::parse_duration(input).map_err(|e| e.to_string())?;
    let lifetime =
        Duration::try_from(parsed).map_err(|_| format!("duration '{input}' is too large"))?;
    if lifetime < Duration::SECOND {
        return Err(format!("lifetime '{input}' must be at least 1s"));
    }
    Ok(lifetime)
}

/// Runs an identity subcommand.
pub fn run(cmd: IdentityCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        IdentityCommand::InitCa {
            out,
            lifetime,
            force,
        } => {
            let ca = CertificateAuthority::generate(now, lifetime)?;
            write_files(
                &out,
                &[
                    ("ca.crt", ca.cert_pem(), 0o644),
                    ("ca.key", ca.key_pem(), 0o600),
                ],
                force,
            )?;
            println!(
                "wrote {0}/ca.crt and {0}/ca.key: {1}, valid until {2}, sha256 {3}",
                out.display(),
                ca.subject(),
                rfc3339(ca.not_after()),
                ca.fingerprint()
            );
        }
        IdentityCommand::Issue {
            ca_dir,
            spiffe_id,
            dns,
            lifetime,
            out,
            force,
        } => {
            let crt_path = ca_dir.join("ca.crt");
            let key_path = ca_dir.join("ca.key");
            let cert =
                fs::read(&crt_path).with_context(|| format!("reading {}", crt_path.display()))?;
            let key =
                fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            let source = PemSource::files(&crt_path, &key_path);
            let ca = CertificateAuthority::from_pem(&cert, &key, None, source, now)?;
            let request = LeafRequest {
                spiffe_id,
                dns_names: dns,
                lifetime,
            };
            let leaf = issue_leaf(&ca, &request, now)?;
            write_files(
                &out,
                &[
                    ("tls.crt", leaf.cert_pem.clone(), 0o644),
                    ("tls.key", leaf.key_pem.clone(), 0o600),
                    ("ca.crt", leaf.ca_bundle_pem.clone(), 0o644),
                ],
                force,
            )?;
            println!(
                "wrote {0}/tls.crt, {0}/tls.key and {0}/ca.crt: {1}, valid {2} .. {3}",
                out.display(),
                leaf.spiffe_id,
                rfc3339(leaf.not_before),
                rfc3339(leaf.not_after)
            );
        }
    }
    Ok(())
}

/// Writes every file or none: existing files are refused up front unless `force`.
fn write_files(dir: &Path, files: &[(&str, String, u32)], force: bool) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !force {
        let existing: Vec<String> = files
            .iter()
            .map(|(name, _, _)| dir.join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {} (pass --force to replace)",
                existing.join(", ")
            );
        }
    }
    for (name, content, mode) in files {
        let path = dir.join(name);
        let mut options = OpenOptions::new();
        options.write(true).mode(*mode);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        // `mode` only applies on creation; tighten an overwritten key file too.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
        file.write_all(content.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("24h", Duration::hours(24))]
    #[case("90m", Duration::minutes(90))]
    #[case("30s", Duration::seconds(30))]
    #[case("1h30m", Duration::minutes(90))]
    #[case("87600h", Duration::days(3650))]
    fn parses_durations(#[case] input: &str, #[case] expected: Duration) {
        assert_eq!(parse_duration(input).unwrap(), expected);
    }

    #[rstest]
    #[case("", "invalid duration")]
    #[case("24", "invalid duration")]
    #[case("3d", "invalid duration")]
    #[case("0s", "must be at least 1s")]
    #[case("500ms", "must be at least 1s")]
    #[case("99999999999999999999h", "invalid duration")]
    fn rejects_bad_durations(#[case] input: &str, #[case] expected: &str) {
        let err = parse_duration(input).unwrap_err();
        assert!(err.contains(expected), "{input}: {err}");
    }

    #[test]
    fn write_files_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &[("a", "1".into(), 0o600)], false).unwrap();
        let err = write_files(
            dir.path(),
            &[("b", "2".into(), 0o600), ("a", "3".into(), 0o600)],
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert!(!dir.path().join("b").exists(), "nothing written on refusal");
        write_files(dir.path(), &[("a", "3".into(), 0o644)], true).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "3");
    }
}
