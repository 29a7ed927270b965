//! `apiguard lint PATH...`: the admission rules, offline, over manifest files.
//!
//! Every object of the run is reviewed against a view built from all objects of the same run
//! (so an Ingress is checked against the ApiSecurityPolicies and Services next to it). Output
//! as text, JSON (`{"findings":[...],"skipped":[...],"errors":[...],"summary":{...}}`) or
//! SARIF 2.1.0 ([`report`]). What is read, skipped or refused is decided in [`mod@load`]. Exit
//! codes: 0 no deny-level finding, 1 at least one, 2 usage error or a file that could not be
//! linted (the report still covers every other file).

mod fast;
pub mod load;
pub mod report;

pub use load::{Inputs, LintError, SkipReason, Skipped, document_lines, failing_document, load};
pub use report::{render_json, render_json_report, render_sarif, render_text};

use crate::manifest::{Manifest, Source};
use crate::rules::{self, AdmissionMode, EngineConfig, Finding, InMemoryView};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Readable in a terminal.
    #[default]
    Text,
    /// One JSON object: `findings` (each with `rule`, `severity`, `kind`, `namespace`, `name`,
    /// `field`, `message`, `remediation`, `exempted`, `file`), `skipped` (paths not linted and
    /// why), `errors` (files that failed to parse) and `summary` (counts).
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// Arguments of `apiguard lint`.
#[derive(clap::Args, Debug, Clone)]
pub struct LintArgs {
    /// Manifest files or directories (recursed; .yaml, .yml, .json); `-` reads standard input.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Admission mode to evaluate under: Enforce (deny findings fail the run), Warn or Audit
    /// (findings are reported, the run succeeds).
    #[arg(long, value_enum, ignore_case = true, default_value_t = AdmissionMode::Enforce)]
    pub mode: AdmissionMode,
    /// Namespaces whose objects are not checked (comma-separated). None by default: offline,
    /// the manifests of a cluster add-on (an ingress controller in kube-system) are exactly
    /// what a CI lint should see. The webhook exempts kube-system, kube-public and
    /// kube-node-lease by default; pass them here to lint as admission would.
    #[arg(long, value_delimiter = ',')]
    pub exempt_namespaces: Vec<String>,
    /// List every path a directory walk skipped, with the reason (text format; JSON and SARIF
    /// always list them).
    #[arg(short, long)]
    pub verbose: bool,
}

impl LintArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            mode: self.mode,
            exempt_namespaces: self
                .exempt_namespaces
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// A finding with the manifest it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    pub finding: Finding,
    pub source: Source,
}

/// Reviews every manifest against a view of all of them.
pub fn lint_manifests(manifests: &[Manifest], config: &EngineConfig) -> Vec<LintFinding> {
    lint_run(manifests, config).findings
}

/// The outcome of reviewing one run's objects.
#[derive(Debug, Default)]
pub struct Run {
    pub findings: Vec<LintFinding>,
    /// Objects reviewed (all but those in exempted namespaces).
    pub checked: usize,
    /// Objects not reviewed because their namespace is exempted: namespace -> count.
    pub namespace_exempted: BTreeMap<String, usize>,
}

/// Reviews every manifest against a view of all of them, counting what exemptions left out.
/// The objects are reviewed on every core (the view is read-only); the findings keep the
/// manifests' order.
pub(crate) fn lint_run(manifests: &[Manifest], config: &EngineConfig) -> Run {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(manifests.len() / MIN_OBJECTS_PER_THREAD)
        .max(1);
    if threads == 1 {
        let view = InMemoryView::from_objects(manifests.iter().map(|m| &m.object));
        return review_all(manifests, &view, config);
    }
    let chunk = manifests.len().div_ceil(threads);
    let view = build_view(manifests, chunk);
    let parts: Vec<Run> = std::thread::scope(|s| {
        let workers: Vec<_> = manifests
            .chunks(chunk)
            .map(|part| s.spawn(|| review_all(part, &view, config)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut run = Run::default();
    for part in parts {
        run.findings.extend(part.findings);
        run.checked += part.checked;
        for (ns, n) in part.namespace_exempted {
            *run.namespace_exempted.entry(ns).or_default() += n;
        }
    }
    run
}

/// The view of all manifests, built in `chunk`-sized parts on as many threads and merged in
/// order (the same view as building it on one thread).
fn build_view(manifests: &[Manifest], chunk: usize) -> InMemoryView {
    let parts: Vec<InMemoryView> = std::thread::scope(|s| {
        let workers: Vec<_> = manifests
            .chunks(chunk)
            .map(|part| s.spawn(|| InMemoryView::from_objects(part.iter().map(|m| &m.object))))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut view = InMemoryView::new();
    for part in parts {
        view.merge(part);
    }
    view
}

/// Below this many objects per thread, reviewing on one thread is faster.
const MIN_OBJECTS_PER_THREAD: usize = 512;

fn review_all(manifests: &[Manifest], view: &InMemoryView, config: &EngineConfig) -> Run {
    let mut run = Run::default();
    for m in manifests {
        if let Some(ns) = rules::exempt_namespace(&m.object, config) {
            *run.namespace_exempted.entry(ns.to_string()).or_default() += 1;
            continue;
        }
        run.checked += 1;
        for finding in rules::review(&m.object, view, config) {
            run.findings.push(LintFinding {
                finding,
                source: m.source.clone(),
            });
        }
    }
    run
}

/// Whether the run fails: a non-exempted deny finding under Enforce.
pub fn fails(findings: &[LintFinding], mode: AdmissionMode) -> bool {
    mode == AdmissionMode::Enforce && findings.iter().any(|f| f.finding.is_blocking())
}

/// Runs `apiguard lint`: prints the report to stdout and every file that could not be linted
/// to stderr, and returns the exit code (2 when a file could not be linted, else 1 when a deny
/// finding fails the run, else 0).
pub fn run(args: &LintArgs) -> ExitCode {
    let inputs = load(&args.paths);
    let run = lint_run(&inputs.manifests, &args.config());
    let report = match args.format {
        Format::Text => render_text(&run, &inputs, args.verbose),
        Format::Json => format!("{:#}\n", render_json_report(&run, &inputs)),
        Format::Sarif => format!("{:#}\n", render_sarif(&run, &inputs)),
    };
    print!("{report}");
    for e in &inputs.errors {
        eprintln!("error: {e}");
    }
    let code = if !inputs.errors.is_empty() {
        ExitCode::from(2)
    } else if fails(&run.findings, args.mode) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    // The process ends right after this: freeing every parsed object one by one would only
    // delay the exit (a tenth of the run on a large repository).
    std::mem::forget(inputs);
    std::mem::forget(run);
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(i: usize, object: serde_json::Value) -> Manifest {
        Manifest {
            source: Source {
                file: "f.yaml".into(),
                document: i + 1,
                item: None,
            },
            object,
        }
    }

    /// The parallel view and review see across chunk boundaries: a policy at the start and
    /// an Ingress bypassing it at the end (APG004), in a run large enough to be split.
    #[test]
    fn parallel_review_sees_the_whole_run() {
        let policy = json!({"apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "pay", "namespace": "shop"},
            "spec": {"target": {"service": "pay", "port": 8080}, "exposure": "Internal",
                "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                    "audiences": ["pay"], "jwks": {"uri": "https://idp.example/jwks"}}]}},
                "authorization": {"rules": [{"name": "r", "match": {"paths": ["/x"]}}]}}});
        let filler = |i: usize| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("c{i}"), "namespace": "shop"}})
        };
        let ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "direct", "namespace": "shop",
                "annotations": {"nginx.ingress.kubernetes.io/auth-url": "https://auth.example/"}},
            "spec": {"tls": [{"hosts": ["p.example"]}], "rules": [{"host": "p.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "pay", "port": {"number": 8080}}}}]}}]}});
        let n = 4 * MIN_OBJECTS_PER_THREAD;
        let mut manifests = vec![manifest(0, policy)];
        manifests.extend((1..n - 1).map(|i| manifest(i, filler(i))));
        manifests.push(manifest(n - 1, ingress));
        let run = lint_run(&manifests, &EngineConfig::default());
        assert_eq!(run.checked, n);
        let rules: Vec<_> = run.findings.iter().map(|f| f.finding.rule).collect();
        assert!(rules.contains(&crate::catalog::RuleId::Apg004), "{rules:?}");
        let sequential = review_all(
            &manifests,
            &InMemoryView::from_objects(manifests.iter().map(|m| &m.object)),
            &EngineConfig::default(),
        );
        assert_eq!(run.findings, sequential.findings);
    }
}
