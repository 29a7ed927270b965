//! `apiguard discover --access-log FILE... [--policy FILE]... [--format table|json|openapi]`:
//! the sensor's endpoint learning (`crate::discovery`), offline, over gateway JSON access logs.
//! `--policy` manifests give the declared endpoints: the policy's rules and its OpenAPI
//! document (from a ConfigMap in the same files, or inline).

use crate::api::ApiSecurityPolicy;
use crate::discovery::access_log::parse_line;
use crate::discovery::openapi::skeleton;
use crate::discovery::{Declared, Inventory, Report};
use crate::manifest::{Manifest, load_paths};
use crate::render::openapi;
use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DiscoverArgs {
    /// Gateway JSON access logs, one object per line (`-` for stdin).
    #[arg(long = "access-log", required = true, num_args = 1..)]
    pub access_logs: Vec<PathBuf>,
    /// Manifests holding the ApiSecurityPolicy whose gateway wrote the logs (and the ConfigMap
    /// of its OpenAPI document): its rules and operations are the declared endpoints.
    #[arg(long = "policy", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    /// `table` (default), `json` (the sensor's `/inventory`), or `openapi` (an OpenAPI 3.1
    /// skeleton of the observed endpoints, YAML).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Openapi,
}

pub fn run(args: &DiscoverArgs) -> anyhow::Result<ExitCode> {
    let (policy, declared) = declared(&args.policies)?;
    let mut inventory = Inventory::new(policy, declared);
    for file in &args.access_logs {
        learn(file, &mut inventory)?;
    }
    let report = inventory.report();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Openapi => print!("{}", serde_saphyr::to_string(&skeleton(&report))?),
        Format::Table => print!("{}", table(&report, !args.policies.is_empty())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one access log into the inventory; the first bad line stops with `file:line`.
fn learn(file: &PathBuf, inventory: &mut Inventory) -> anyhow::Result<()> {
    let name = file.display().to_string();
    let reader: Box<dyn Read> = if name == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .with_context(|| format!("--access-log {name} cannot be read; give a file"))?,
        )
    };
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("{name}:{}: cannot be read (not UTF-8?)", number + 1))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let parsed = parse_line(text).map_err(|e| anyhow!("{name}:{number}: {e}"))?;
        inventory.observe(&parsed.observation());
    }
}

/// The one policy of the `--policy` files (`ns/name`) and what it declares.
fn declared(files: &[PathBuf]) -> anyhow::Result<(Option<String>, Declared)> {
    if files.is_empty() {
        return Ok((None, Declared::none()));
    }
    let manifests = load_paths(files)?;
    let policies: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == "ApiSecurityPolicy")
        .collect();
    let m = match policies.as_slice() {
        [one] => *one,
        [] => bail!(
            "--policy holds no ApiSecurityPolicy; give the policy whose gateway wrote the logs"
        ),
        many => bail!(
            "--policy holds {} ApiSecurityPolicies ({}); give the one whose gateway wrote the logs",
            many.len(),
            many.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
        ),
    };
    let policy: ApiSecurityPolicy = serde_json::from_value(m.object.clone())
        .with_context(|| format!("{}: ApiSecurityPolicy {}", m.source, m.name()))?;
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    let policy_ref = format!("{ns}/{}", m.name());
    let mut declared = Declared::none();
    let config_map = match openapi::config_map_name(&policy) {
        Some(name) => config_map(&manifests, ns, name)?,
        None => None,
    };
    if let Some(document) = openapi::load_document(&policy, config_map.as_ref())
        .map_err(|e| anyhow!("{}: {e}", m.source))?
    {
        declared
            .add_openapi(&document)
            .map_err(|e| anyhow!("{}: spec.openapi {e}", m.source))?;
    }
    declared
        .add_policy(&policy.spec)
        .map_err(|e| anyhow!("{}: {e}", m.source))?;
    Ok((Some(policy_ref), declared))
}

fn config_map(manifests: &[Manifest], ns: &str, name: &str) -> anyhow::Result<Option<ConfigMap>> {
    let found = manifests.iter().find(|m| {
        m.kind() == "ConfigMap" && m.name() == name && m.namespace().unwrap_or("default") == ns
    });
    let Some(m) = found else {
        return Ok(None);
    };
    serde_json::from_value(m.object.clone())
        .map(Some)
        .with_context(|| format!("{}: ConfigMap {ns}/{name}", m.source))
}

/// One row per endpoint; `FINDING` is `shadow` or `zombie` when a policy was given.
fn table(report: &Report, with_policy: bool) -> String {
    let mut rows = vec![
        [
            "METHOD", "PATH", "DECLARED", "REQUESTS", "2XX", "3XX", "4XX", "5XX", "AUTH", "FINDING",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &report.endpoints {
        let status = |c: &str| e.statuses.get(c).copied().unwrap_or(0).to_string();
        let finding = if !with_policy {
            ""
        } else if e.is_shadow() {
            "shadow"
        } else if e.is_zombie() {
            "zombie"
        } else {
            ""
        };
        rows.push(vec![
            e.method.clone(),
            e.path.clone(),
            if e.declared { "yes" } else { "no" }.into(),
            e.requests.to_string(),
            status("2xx"),
            status("3xx"),
            status("4xx"),
            status("5xx"),
            e.authenticated.to_string(),
            finding.into(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{} endpoints, {} requests",
        report.endpoints.len(),
        report.observed
    ));
    if with_policy {
        out.push_str(&format!(
            ", {} shadow, {} zombie",
            report.shadow.len(),
            report.zombie.len()
        ));
    }
    if report.overflow > 0 {
        out.push_str(&format!(
            ", {} requests past the {}-endpoint bound not counted",
            report.overflow,
            crate::discovery::MAX_ENDPOINTS
        ));
    }
    out.push('\n');
    if !with_policy {
        out.push_str(
            "no --policy: nothing is declared, so shadow and zombie endpoints are not told apart\n",
        );
    }
    out
}
