//! The `apiguard` command line: a thin edge over the library.
//!
//! One module per subcommand whose code is CLI-only: [`render`] (`apiguard render`),
//! [`identity`] (`apiguard identity init-ca|issue`), [`policy`] (`apiguard policy
//! from-openapi`) and [`discover`] (`apiguard discover`). The other subcommands are one call into their module (`lint`, `run`, `api`,
//! `sensor`).

pub mod discover;
pub mod identity;
pub mod policy;
pub mod render;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Declarative API security for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "apiguard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every CRD apiguard owns as multi-document YAML.
    Crd,
    /// The API inventory from gateway JSON access logs, offline: endpoints, statuses,
    /// authentication, shadow (undeclared) and zombie (deprecated) endpoints.
    Discover(discover::DiscoverArgs),
    /// Offline CA and workload certificate tools (the controller's code paths).
    Identity {
        #[command(subcommand)]
        cmd: identity::IdentityCommand,
    },
    /// Check manifests against the admission rules, offline (exit 0 clean, 1 deny finding, 2 error).
    Lint(crate::lint::LintArgs),
    /// Generate policies: `from-openapi` prints a starter policy for an OpenAPI document.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCommand,
    },
    /// Compile policies into the Envoy gateway: print the objects the controller would apply,
    /// or write a directory `envoy -c DIR/bootstrap.yaml` serves (`--envoy-dir`).
    Render(render::RenderArgs),
    /// Run the operator: controller, admission webhook and admin server (flags turn parts off).
    Run(Box<crate::run::RunArgs>),
    /// The gateway's runtime sidecar: Envoy's ext_proc server checking requests and responses
    /// against the API's OpenAPI contract (sensor.yaml, reloaded on change).
    Sensor(crate::sensor::SensorArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", crate::api::crds_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Discover(args) => discover::run(&args),
        Command::Identity { cmd } => {
            identity::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lint(args) => Ok(crate::lint::run(&args)),
        Command::Policy { cmd } => policy::run(cmd),
        Command::Render(args) => {
            render::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => crate::run::run(*args),
        Command::Sensor(args) => crate::sensor::run(args),
    }
}
