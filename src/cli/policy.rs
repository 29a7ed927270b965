//! `apiguard policy from-openapi FILE`: prints the ConfigMap holding an OpenAPI document and a
//! starter `ApiSecurityPolicy` for it (`contract::starter`), ready for `kubectl apply -f -`.
//! Warnings (operations skipped) and notes (placeholders to fill in) go to stderr.

use crate::contract::starter::{StarterOptions, from_openapi};
use anyhow::{Context, bail};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print a starter ApiSecurityPolicy (and the ConfigMap holding the document) from an
    /// OpenAPI 3.0/3.1 document: one rule per operation, scopes from `security`, public where
    /// `security: []`, in mode Audit.
    FromOpenapi(FromOpenApiArgs),
}

#[derive(clap::Args, Debug)]
pub struct FromOpenApiArgs {
    /// The OpenAPI document (YAML or JSON; `-` for stdin).
    pub file: PathBuf,
    /// The policy's name (default: the document's info.title as a DNS label).
    #[arg(long)]
    pub name: Option<String>,
    /// The namespace of the policy and the ConfigMap (default: none; `kubectl apply -n NS`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The target Service (default: the policy's name).
    #[arg(long)]
    pub service: Option<String>,
    /// The target Service port: number or name (default 8080).
    #[arg(long)]
    pub port: Option<String>,
    /// The ConfigMap holding the document (default: `<name>-openapi`).
    #[arg(long = "configmap")]
    pub config_map: Option<String>,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::FromOpenapi(args) => from_openapi_cmd(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn from_openapi_cmd(args: &FromOpenApiArgs) -> anyhow::Result<()> {
    let options = options(args)?;
    let file = args.file.display().to_string();
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("-: cannot read stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("{file}: cannot read"))?
    };
    let starter = from_openapi(&text, &options).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let yaml = starter.to_yaml().context("printing the policy")?;
    for warning in &starter.warnings {
        eprintln!("warning: {file}: {warning}");
    }
    for note in &starter.notes {
        eprintln!("note: {note}");
    }
    print!("{yaml}");
    Ok(())
}

/// The flags, checked: names must be DNS labels (the ConfigMap's a DNS subdomain).
fn options(args: &FromOpenApiArgs) -> anyhow::Result<StarterOptions> {
    for (flag, value, max) in [
        ("--name", &args.name, 63),
        ("--namespace", &args.namespace, 63),
        ("--service", &args.service, 63),
        ("--configmap", &args.config_map, 253),
    ] {
        if let Some(value) = value
            && !is_dns_name(value, max)
        {
            bail!(
                "{flag} {value:?}: lower-case letters, digits and '-' (and '.' in a ConfigMap name), at most {max} characters"
            );
        }
    }
    let port = match args.port.as_deref() {
        None => None,
        Some(p) => match p.parse::<i32>() {
            Ok(n) if (1..=65535).contains(&n) => Some(IntOrString::Int(n)),
            Ok(n) => bail!("--port {n}: a port number is 1-65535"),
            Err(_) if is_dns_name(p, 15) => Some(IntOrString::String(p.to_string())),
            Err(_) => bail!("--port {p:?}: a port number or a Service port name"),
        },
    };
    Ok(StarterOptions {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        service: args.service.clone(),
        port,
        config_map: args.config_map.clone(),
    })
}

fn is_dns_name(value: &str, max: usize) -> bool {
    let dots = max > 63;
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        })
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.'])
}
