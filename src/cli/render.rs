//! `apiguard render`: the renderer offline. Without `--envoy-dir` it prints every object the
//! controller would apply; with it, it writes a directory `envoy -c DIR/bootstrap.yaml` serves.

use crate::api::validate::validate_spec;
use crate::api::{ApiSecurityPolicy, EastWestMtls};
use crate::identity::ca::PemSource;
use crate::identity::{
    CertificateAuthority, DEFAULT_CA_LIFETIME, DEFAULT_TRUST_DOMAIN, LeafRequest, SpiffeId,
    issue_leaf,
};
use crate::manifest::{Manifest, load_paths};
use crate::render::envoy::{self as envoy_render, BOOTSTRAP_FILE};
use crate::render::{
    DiscoveryReportOptions, GatewayIdentity, RenderInput, RenderOptions, RenderedGateway,
    UpstreamIdentity, WorkloadIdentity, network, objects, openapi, render_gateway,
};
use crate::sensor::config::{DEFAULT_SENSOR_ADDR, SENSOR_CONFIG_FILE, check_report_url};
use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// Policy files (and the Services, Secrets, ConfigMaps and Deployments they reference):
    /// files, directories or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Write a directory `envoy -c DIR/bootstrap.yaml` serves as-is (one policy only).
    /// Re-rendering into the same directory updates files atomically; Envoy reloads them.
    #[arg(long)]
    pub envoy_dir: Option<PathBuf>,
    /// Gateway listener address (`host:port`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: String,
    /// Envoy admin address (`host:port`; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Send traffic to this `host:port` instead of the target Service's cluster DNS name.
    #[arg(long)]
    pub upstream: Option<String>,
    /// CA directory (`ca.crt`, `ca.key`) to issue certificates from; created with a new CA if
    /// empty. Absent: an ephemeral CA.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Access log destination.
    #[arg(long, default_value = "/dev/stdout")]
    pub access_log: String,
    /// Envoy image of the gateway Deployment.
    #[arg(long, default_value = "envoyproxy/envoy:v1.40.0")]
    pub envoy_image: String,
    /// Trust domain of SPIFFE IDs.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Where Envoy finds the sensor (`host:port`), for a policy with `spec.openapi`: run
    /// `apiguard sensor --config DIR/sensor.yaml --listen ADDR` there.
    #[arg(long, default_value = DEFAULT_SENSOR_ADDR)]
    pub sensor_addr: String,
    /// The operator's discovery endpoint (`https://…/v1/discovery`): a gateway with discovery
    /// has its sensor push the inventory there, over mTLS with the gateway's certificate
    /// (`sensor.yaml`'s `report` section, and `identity.crt`, `identity.key`,
    /// `identity-ca.crt`). Absent: no push.
    #[arg(long, value_name = "URL")]
    pub discovery_url: Option<String>,
    /// Seconds between two looks at the inventory, with `--discovery-url` (a push when it
    /// changed, and every 10 intervals regardless).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::sensor::config::DEFAULT_REPORT_INTERVAL_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub discovery_interval: u64,
}

fn split_addr(s: &str, flag: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{flag} {s:?}: expected host:port"))?;
    let port = p
        .parse()
        .map_err(|_| anyhow!("{flag} {s:?}: {p:?} is not a port"))?;
    Ok((
        h.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
    ))
}

/// Objects loaded next to the policies.
struct Inputs {
    manifests: Vec<Manifest>,
}

impl Inputs {
    fn find(&self, kind: &str, ns: &str, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| {
            m.kind() == kind && m.name() == name && m.namespace().unwrap_or("default") == ns
        })
    }

    fn secret_data(&self, ns: &str, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let m = self
            .find("Secret", ns, name)
            .ok_or_else(|| anyhow!("Secret {ns}/{name} is referenced but was not given (-f)"))?;
        let secret: Secret = serde_json::from_value(m.object.clone())
            .with_context(|| format!("{}: Secret {ns}/{name}", m.source))?;
        let mut out = BTreeMap::new();
        for (k, v) in secret.data.unwrap_or_default() {
            let s = String::from_utf8(v.0)
                .map_err(|_| anyhow!("{}: Secret {ns}/{name} key {k:?} is not UTF-8", m.source))?;
            out.insert(k, s);
        }
        out.extend(secret.string_data.unwrap_or_default());
        Ok(out)
    }

    /// The ConfigMap `ns/name`, if it was given.
    fn config_map(&self, ns: &str, name: &str) -> anyhow::Result<Option<ConfigMap>> {
        let Some(m) = self.find("ConfigMap", ns, name) else {
            return Ok(None);
        };
        serde_json::from_value(m.object.clone())
            .map(Some)
            .with_context(|| format!("{}: ConfigMap {ns}/{name}", m.source))
    }

    /// The service account of the pods behind `service` (from a given Deployment whose pod
    /// labels match the Service selector), else `default`.
    fn service_account(&self, ns: &str, service: &Service) -> String {
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        for m in &self.manifests {
            if m.kind() != "Deployment" || m.namespace().unwrap_or("default") != ns {
                continue;
            }
            let Ok(d) = serde_json::from_value::<Deployment>(m.object.clone()) else {
                continue;
            };
            let Some(template) = d.spec.map(|s| s.template) else {
                continue;
            };
            let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
            if !selector.is_empty()
                && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                && let Some(sa) = template.spec.and_then(|s| s.service_account_name)
            {
                return sa;
            }
        }
        "default".to_string()
    }
}

/// Loads or creates the CA of `--ca-dir`, or makes an ephemeral one.
fn certificate_authority(
    ca_dir: Option<&Path>,
    now: OffsetDateTime,
) -> anyhow::Result<CertificateAuthority> {
    let Some(dir) = ca_dir else {
        return Ok(CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME)?);
    };
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    if crt.exists() || key.exists() {
        let c = std::fs::read(&crt).with_context(|| format!("reading {}", crt.display()))?;
        let k = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
        return Ok(CertificateAuthority::from_pem(
            &c,
            &k,
            None,
            PemSource::files(&crt, &key),
            now,
        )?);
    }
    let ca = CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&crt, ca.cert_pem().as_bytes(), 0o644)?;
    write_atomic(&key, ca.key_pem().as_bytes(), 0o600)?;
    Ok(ca)
}

/// Writes `path` via a temporary file and a rename, so a watcher never sees a partial file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// One policy with everything it needs, rendered.
pub(crate) struct RenderedPolicy {
    pub policy: ApiSecurityPolicy,
    pub service: Service,
    pub options: RenderOptions,
    pub gateway: RenderedGateway,
}

/// Renders the policy of `manifest` with what it references from `inputs`, certificates from
/// `ca`.
fn render_one(
    args: &RenderArgs,
    inputs: &Inputs,
    manifest: &Manifest,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> anyhow::Result<RenderedPolicy> {
    let policy = valid_policy(manifest)?;
    let ns = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let service = target_service(inputs, manifest, &policy, &ns)?;
    let api_keys = api_keys(inputs, &policy, &ns)?;
    let jwks = jwks_from_secrets(inputs, &policy, &ns)?;
    let options = render_options(args)?;
    let identity = gateway_identity(args, inputs, ca, &policy, &service, &ns, now)?;
    let openapi_document = openapi_document(inputs, manifest, &policy, &ns)?;
    let input = RenderInput {
        policy: &policy,
        target_service: &service,
        identity: &identity,
        api_keys: &api_keys,
        jwks_from_secret: &jwks,
        openapi_document: openapi_document.as_deref(),
        options: &options,
    };
    let rendered = render_gateway(&input).with_context(|| format!("{}", manifest.source))?;
    Ok(RenderedPolicy {
        policy,
        service,
        options,
        gateway: rendered,
    })
}

/// The policy of `manifest`, if it parses and passes the spec checks (every violation listed).
fn valid_policy(manifest: &Manifest) -> anyhow::Result<ApiSecurityPolicy> {
    let policy: ApiSecurityPolicy = serde_json::from_value(manifest.object.clone())
        .with_context(|| format!("{}: not a valid ApiSecurityPolicy", manifest.source))?;
    let violations = validate_spec(&policy.spec);
    if !violations.is_empty() {
        let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let list = violations
            .iter()
            .map(|v| format!("  {}: {}", v.field, v.message()))
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "{}: policy {ns}/{name} is invalid:\n{list}",
            manifest.source
        );
    }
    Ok(policy)
}

/// The policy's target Service, from the given files.
fn target_service(
    inputs: &Inputs,
    manifest: &Manifest,
    policy: &ApiSecurityPolicy,
    ns: &str,
) -> anyhow::Result<Service> {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let target = &policy.spec.target.service;
    let svc_manifest = inputs.find("Service", ns, target).ok_or_else(|| {
        anyhow!(
            "{}: policy {ns}/{name} targets Service {ns}/{target} which was not given (-f)",
            manifest.source,
        )
    })?;
    serde_json::from_value(svc_manifest.object.clone())
        .with_context(|| format!("{}: Service {ns}/{target}", svc_manifest.source))
}

/// The document of `spec.openapi`, from its inline source or a given ConfigMap, compiled (an
/// error names the policy, the field and the JSON pointer).
fn openapi_document(
    inputs: &Inputs,
    manifest: &Manifest,
    policy: &ApiSecurityPolicy,
    ns: &str,
) -> anyhow::Result<Option<String>> {
    let config_map = match openapi::config_map_name(policy) {
        Some(name) => inputs.config_map(ns, name)?,
        None => None,
    };
    let document = openapi::load_document(policy, config_map.as_ref())
        .map_err(|e| anyhow!("{}: {e}", manifest.source))?;
    Ok(document)
}

/// API-key client id -> key, from the Secret `authentication.apiKeys.secretRef` (empty without
/// API keys).
fn api_keys(
    inputs: &Inputs,
    policy: &ApiSecurityPolicy,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    match policy
        .spec
        .authentication
        .as_ref()
        .and_then(|a| a.api_keys.as_ref())
    {
        Some(k) => inputs.secret_data(ns, &k.secret_ref.name),
        None => Ok(BTreeMap::new()),
    }
}

/// JWT provider name -> JWKS document, for the providers whose JWKS is in a Secret.
fn jwks_from_secrets(
    inputs: &Inputs,
    policy: &ApiSecurityPolicy,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut jwks = BTreeMap::new();
    let Some(jwt) = policy
        .spec
        .authentication
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
    else {
        return Ok(jwks);
    };
    for p in &jwt.providers {
        if let Some(r) = &p.jwks.secret_ref {
            let data = inputs.secret_data(ns, &r.name)?;
            let doc = data.get(&r.key).ok_or_else(|| {
                anyhow!(
                    "Secret {ns}/{} has no key {:?} (provider {})",
                    r.name,
                    r.key,
                    p.name
                )
            })?;
            jwks.insert(p.name.clone(), doc.clone());
        }
    }
    Ok(jwks)
}

/// The render options of the flags; with `--envoy-dir`, config and secret files go there
/// (absolute).
fn render_options(args: &RenderArgs) -> anyhow::Result<RenderOptions> {
    let (listen_address, listen_port) = split_addr(&args.listen, "--listen")?;
    let (admin_address, admin_port) = split_addr(&args.admin, "--admin")?;
    split_addr(&args.sensor_addr, "--sensor-addr")?;
    let discovery_report = match &args.discovery_url {
        Some(url) => {
            check_report_url(url).map_err(|e| anyhow!("--discovery-url: {e}"))?;
            Some(DiscoveryReportOptions {
                url: url.clone(),
                interval_seconds: args.discovery_interval,
            })
        }
        None => None,
    };
    let mut options = RenderOptions {
        listen_address,
        listen_port,
        admin_address,
        admin_port,
        upstream_override: args.upstream.clone(),
        access_log_path: args.access_log.clone(),
        envoy_image: args.envoy_image.clone(),
        sensor_address: args.sensor_addr.clone(),
        discovery_report,
        ..RenderOptions::default()
    };
    if let Some(dir) = &args.envoy_dir {
        let abs = std::path::absolute(dir)
            .with_context(|| format!("resolving {}", dir.display()))?
            .display()
            .to_string();
        options.config_dir = abs.clone();
        options.secret_dir = abs;
    }
    Ok(options)
}

/// The gateway's certificates, issued by `ca` now: a server leaf for the policy's hosts, the
/// gateway Service's names and `localhost`, reused as the client certificate towards the target
/// unless east-west mTLS is disabled, and as the sensor's towards the operator (used with
/// `--discovery-url`).
fn gateway_identity(
    args: &RenderArgs,
    inputs: &Inputs,
    ca: &CertificateAuthority,
    policy: &ApiSecurityPolicy,
    service: &Service,
    ns: &str,
    now: OffsetDateTime,
) -> anyhow::Result<GatewayIdentity> {
    let spec = &policy.spec;
    let gateway = policy.gateway_name();
    let gateway_id = SpiffeId::new(&args.trust_domain, ns, &gateway)
        .map_err(|e| anyhow!("gateway SPIFFE ID: {e}"))?;
    let mut server = LeafRequest::new(gateway_id);
    server.dns_names = spec.hosts.clone();
    server.dns_names.push(format!("{gateway}.{ns}.svc"));
    server
        .dns_names
        .push(format!("{gateway}.{ns}.svc.cluster.local"));
    server.dns_names.push("localhost".into());
    let leaf = issue_leaf(ca, &server, now)?;
    let upstream = if spec.east_west().mtls == EastWestMtls::Disabled {
        None
    } else {
        let sa = inputs.service_account(ns, service);
        let target = SpiffeId::new(&args.trust_domain, ns, &sa)
            .map_err(|e| anyhow!("target SPIFFE ID: {e}"))?;
        Some(UpstreamIdentity {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
            trust_bundle_pem: ca.roots_pem(),
            target_spiffe_id: target.uri(),
        })
    };
    Ok(GatewayIdentity {
        server_cert_pem: leaf.cert_pem.clone(),
        server_key_pem: leaf.key_pem.clone(),
        client_ca_pem: Some(ca.roots_pem()),
        upstream,
        workload: Some(WorkloadIdentity {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
            trust_bundle_pem: ca.roots_pem(),
        }),
    })
}

/// Writes a rendered gateway into `dir`: certificates and keys first, then clusters, then the
/// listener, then the bootstrap, each atomically.
pub(crate) fn write_envoy_dir(
    dir: &Path,
    gateway: &RenderedGateway,
    ca_pem: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rank = |name: &str| match name {
        envoy_render::LDS_FILE => 3,
        envoy_render::CDS_FILE | envoy_render::API_KEYS_FILE => 2,
        BOOTSTRAP_FILE => 4,
        _ => 1,
    };
    let mut files: Vec<_> = gateway.files.iter().collect();
    files.sort_by_key(|(n, _)| (rank(n), n.to_string()));
    write_atomic(&dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
    for (name, f) in files {
        let mode = if f.secret { 0o600 } else { 0o644 };
        write_atomic(&dir.join(name), f.contents.as_bytes(), mode)?;
    }
    Ok(())
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let manifests = load_paths(&args.files)?;
    let inputs = Inputs { manifests };
    let policies: Vec<&Manifest> = inputs
        .manifests
        .iter()
        .filter(|m| m.kind() == "ApiSecurityPolicy")
        .collect();
    if policies.is_empty() {
        bail!("no ApiSecurityPolicy in the given files");
    }
    let now = OffsetDateTime::now_utc();
    let ca = certificate_authority(args.ca_dir.as_deref(), now)?;
    if let Some(dir) = &args.envoy_dir {
        if policies.len() != 1 {
            bail!(
                "--envoy-dir serves one policy; the files hold {} ({})",
                policies.len(),
                policies
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let r = render_one(&args, &inputs, policies[0], &ca, now)?;
        write_envoy_dir(dir, &r.gateway, &ca.roots_pem())?;
        eprintln!(
            "wrote {}: envoy -c {}/{BOOTSTRAP_FILE} (config {})",
            dir.display(),
            dir.display(),
            r.gateway.config_hash
        );
        if r.gateway.files.contains_key(SENSOR_CONFIG_FILE) {
            eprintln!(
                "with the sensor: apiguard sensor --config {}/{SENSOR_CONFIG_FILE} --listen {}",
                dir.display(),
                args.sensor_addr
            );
        }
        return Ok(());
    }
    let mut out = String::new();
    for m in policies {
        let r = render_one(&args, &inputs, m, &ca, now)?;
        let objs = objects::gateway_objects(&r.policy, &r.gateway, &r.options)?;
        let mut docs: Vec<serde_json::Value> = vec![
            serde_json::to_value(&objs.config_map)?,
            serde_json::to_value(&objs.secret)?,
            serde_json::to_value(&objs.deployment)?,
            serde_json::to_value(&objs.service)?,
        ];
        if let Some(np) = network::target_network_policy(&r.policy, &r.service)? {
            docs.push(serde_json::to_value(&np)?);
        }
        for d in docs {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&d)?);
        }
    }
    print!("{out}");
    Ok(())
}
