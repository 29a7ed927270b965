//! The reference docs never drift from the code: docs/flags.md lists exactly the flags of
//! `apiguard run` (with their environment variables and defaults, read from clap), and
//! docs/metrics.md lists exactly the metrics the process registers (read from an encoded
//! registry built the way `apiguard run` builds it).

use std::collections::BTreeSet;
use std::path::Path;

use apiguard::admin::{AdmissionMetrics, Metrics};
use apiguard::certs::serving::ServingMetrics;
use apiguard::controller::ControllerMetrics;
use clap::CommandFactory;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of every body row of the Markdown tables in `text` (header and `|---|` rows
/// left out).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            // The header row; the separator row follows.
            in_table = true;
            continue;
        }
        if line.starts_with("|---") || line.starts_with("| ---") {
            continue;
        }
        // `\|` inside a cell is a literal bar, not a cell boundary.
        let cells = line
            .replace("\\|", "\u{0}")
            .trim_matches('|')
            .split('|')
            .map(|c| c.replace('\u{0}', "|").trim().to_string())
            .collect();
        rows.push(cells);
    }
    rows
}

/// The `` `code` `` spans of `cell`.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn flags_md_lists_every_flag_of_apiguard_run() {
    let flags_md = read("docs/flags.md");
    let rows = table_rows(&flags_md);
    // Flag -> (env cell, default cell) of the row that documents it.
    let mut documented = std::collections::BTreeMap::new();
    for row in &rows {
        let [flag, env, default, ..] = row.as_slice() else {
            continue;
        };
        for span in code_spans(flag) {
            if let Some(long) = span.strip_prefix("--") {
                documented.insert(long.to_string(), (env.clone(), default.clone()));
            }
        }
    }
    assert!(
        !documented.is_empty(),
        "docs/flags.md has no table with `--flag` | env | default | meaning rows"
    );

    let mut cli = apiguard::cli::Cli::command();
    cli.build();
    let run = cli
        .find_subcommand("run")
        .expect("apiguard has a `run` subcommand");
    let mut problems = Vec::new();
    let mut real = BTreeSet::new();
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        real.insert(long.to_string());
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let Some((env_cell, default_cell)) = documented.get(long) else {
            problems.push(format!(
                "add a row for `--{long}` (env `{}`, default `{default}`): {help}",
                env.as_deref().unwrap_or("none"),
            ));
            continue;
        };
        if let Some(env) = &env
            && !env_cell.contains(&format!("`{env}`"))
        {
            problems.push(format!(
                "the row of `--{long}` must name its environment variable `{env}` (it says {env_cell:?})"
            ));
        }
        // Switches (`--no-webhook`) have the implicit default `false`, documented as "off".
        if arg.get_action().takes_values()
            && !default.is_empty()
            && !default_cell.contains(&format!("`{default}`"))
        {
            problems.push(format!(
                "the row of `--{long}` must give its default `{default}` (it says {default_cell:?})"
            ));
        }
    }
    for long in documented.keys() {
        if !real.contains(long) {
            problems.push(format!(
                "remove the row of `--{long}`: `apiguard run` has no such flag"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/flags.md does not match `apiguard run --help`:\n- {}",
        problems.join("\n- ")
    );
}

/// Every metric `apiguard run` registers, as `(name as scraped, type, help)`, read from the
/// encoded registry: counters are scraped with the `_total` suffix, which is how the docs name
/// them.
fn registered_metrics() -> Vec<(String, String, String)> {
    // What `apiguard run` registers into its one registry (src/run.rs): the admission
    // metrics, the controller's, the Kubernetes client's and the managed serving
    // certificate's.
    let metrics = Metrics::new();
    let admission = AdmissionMetrics::register(&metrics);
    let controller = ControllerMetrics::register(&metrics);
    let requests = apiguard::kube_client::register(&metrics);
    let serving = ServingMetrics::register(&metrics);
    let audit = apiguard::audit::AuditMetrics::register(&metrics);
    let intake = apiguard::intake::handler::IntakeMetrics::register(&metrics);
    intake.count("accepted");
    intake.announced("ClientBlocked");
    // A label family with no series is not encoded at all: give each one series.
    admission
        .requests
        .get_or_create(&apiguard::admin::RequestLabels {
            kind: "Ingress",
            operation: "CREATE",
            decision: "allowed",
        })
        .inc();
    admission
        .findings
        .get_or_create(&apiguard::admin::FindingLabels {
            rule: "APG001",
            severity: "deny",
            mode: "enforce",
        })
        .inc();
    controller.reconciled("success", std::time::Duration::from_millis(1));
    controller.observe_policy("shop/orders", &[], vec![("gateway", 100)], 0);
    requests
        .get_or_create(&apiguard::kube_client::RequestLabels {
            verb: "GET",
            code: "200".into(),
        })
        .inc();
    serving
        .issued
        .get_or_create(&apiguard::certs::serving::IssuedLabels { reason: "Missing" })
        .inc();
    serving
        .ca_bundle_applies
        .get_or_create(&apiguard::certs::serving::ApplyLabels { result: "applied" })
        .inc();
    audit.ran("full", std::time::Duration::from_millis(1));
    audit.wrote("applied");
    audit.set_findings([&std::collections::BTreeMap::from([(("APG005", "deny"), 1)])]);
    // `apiguard sensor` is another process with its own registry; its metrics share the table.
    let sensor = apiguard::sensor::observe::SensorMetrics::register(&metrics);
    let policy = "shop/orders".to_string();
    sensor
        .requests
        .get_or_create(&apiguard::sensor::observe::RequestLabels {
            policy: policy.clone(),
            decision: "allowed",
        })
        .inc();
    sensor
        .responses
        .get_or_create(&apiguard::sensor::observe::ResponseLabels {
            policy,
            action: "clean",
        })
        .inc();
    sensor
        .reloads
        .get_or_create(&apiguard::sensor::observe::ResultLabels { result: "loaded" })
        .inc();
    sensor
        .processing
        .get_or_create(&apiguard::sensor::observe::PointLabels {
            point: "request_headers",
        })
        .observe(0.001);
    sensor.set_endpoints("shop/orders", 3, 1);
    sensor
        .pushes
        .get_or_create(&apiguard::sensor::observe::ResultLabels { result: "accepted" })
        .inc();
    sensor
        .sensitive
        .get_or_create(&apiguard::sensor::observe::SensitiveLabels {
            policy: "shop/orders".into(),
            class: "email",
        })
        .inc();
    sensor
        .detections
        .get_or_create(&apiguard::sensor::observe::DetectionLabels {
            policy: "shop/orders".into(),
            detector: "login-stuffing".into(),
            action: "block",
        })
        .inc();
    sensor.set_active_blocks("shop/orders", 1);
    sensor
        .blocked
        .get_or_create(&apiguard::sensor::observe::BlockedLabels {
            policy: "shop/orders".into(),
            detector: "login-stuffing".into(),
            decision: "refused",
        })
        .inc();
    sensor
        .anomalies
        .get_or_create(&apiguard::sensor::observe::PolicyLabels {
            policy: "shop/orders".into(),
        })
        .inc();
    sensor.shared_error("count");
    apiguard::sensor::rate_limit::RateLimitMetrics::register(&metrics)
        .decisions
        .get_or_create(&apiguard::sensor::rate_limit::DecisionLabels {
            policy: "shop/orders".into(),
            limit: "checkout".into(),
            result: "ok",
        })
        .inc();
    let text = metrics.encode();

    let mut help = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, h)) = rest.split_once(' ')
        {
            help.insert(name.to_string(), h.to_string());
        }
    }
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
        let scraped = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        out.push((
            scraped,
            kind.to_string(),
            help.get(name).cloned().unwrap_or_default(),
        ));
    }
    out
}

#[test]
fn metrics_md_lists_every_registered_metric() {
    let registered = registered_metrics();
    assert!(
        registered.len() >= 10,
        "the encoded registry has only {registered:?}"
    );
    let metrics_md = read("docs/metrics.md");
    let documented: BTreeSet<String> = table_rows(&metrics_md)
        .iter()
        .filter_map(|row| row.first())
        .flat_map(|cell| code_spans(cell))
        .filter(|span| span.starts_with("apiguard_"))
        .map(str::to_string)
        .collect();

    let mut problems = Vec::new();
    for (name, kind, help) in &registered {
        if !documented.contains(name) {
            problems.push(format!("add a row for `{name}` ({kind}): {help}"));
        }
    }
    let names: BTreeSet<&str> = registered.iter().map(|(n, ..)| n.as_str()).collect();
    for name in &documented {
        if !names.contains(name.as_str()) {
            problems.push(format!(
                "remove the row of `{name}`: apiguard registers no such metric"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/metrics.md does not match the metrics apiguard registers:\n- {}",
        problems.join("\n- ")
    );
}

/// The registry above must be the whole of what the code registers: every metric name
/// registered anywhere under src/ (`register(` / `.add(` followed by a `"apiguard_..."`
/// literal) is in it, so a new metric set cannot escape the check by not being listed here.
#[test]
fn the_test_registry_holds_every_metric_the_source_registers() {
    let names: BTreeSet<String> = registered_metrics()
        .into_iter()
        .map(|(n, kind, _)| {
            if kind == "counter" {
                n.trim_end_matches("_total").to_string()
            } else {
                n
            }
        })
        .collect();
    let mut missing = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let registers = line.trim_end().ends_with(".register(")
                    || line.trim_end().ends_with(".add(")
                    || line.trim_end().ends_with("sink.add(");
                if !registers {
                    continue;
                }
                let Some(next) = lines.get(i + 1) else {
                    continue;
                };
                let next = next.trim();
                if let Some(name) = next
                    .strip_prefix("\"apiguard_")
                    .and_then(|r| r.split_once('"'))
                    .map(|(r, _)| format!("apiguard_{r}"))
                    && !names.contains(&name)
                {
                    missing.push(format!("{name} ({})", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics registered in src/ but not encoded by registered_metrics() in tests/offline/docs.rs \
         (register their set there as src/run.rs does, give each label family one series, and \
         document them in docs/metrics.md): {missing:?}"
    );
}
