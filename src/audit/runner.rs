//! The audit loop the leader runs: reflectors of every checked kind, a full audit on start and
//! every interval, a re-audit of the namespaces whose objects changed (debounced), and the
//! reports written only where they changed.

use super::{AuditMetrics, audit_namespace, by_namespace, counts, report};
use crate::api::names::{AUDIT_REPORT, field_managers, labels};
use crate::reports::{PolicyReport, ReportWriter, Timestamp, Written};
use crate::rules::{EngineConfig, coverage};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::Discovery;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Related kinds the rules consult that are not themselves reviewed: `(group, resource)`.
const CONSULTED_ONLY: &[(&str, &str)] = &[("networking.gke.io", "frontendconfigs")];

/// Audit settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The rule engine's settings (exempt namespaces as the webhook has them).
    pub engine: EngineConfig,
    /// Period of the full audit.
    pub interval: Duration,
    /// How long changes are gathered before their namespaces are re-audited.
    pub debounce: Duration,
}

impl AuditConfig {
    /// The default period of the full audit (`--audit-interval`).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
    /// The default gathering time of changes.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(2);
}

/// Namespaces whose objects changed since the last audit.
#[derive(Default)]
struct Dirty {
    all: bool,
    namespaces: BTreeSet<String>,
}

#[derive(Default)]
struct Changes {
    dirty: Mutex<Dirty>,
    notify: Notify,
}

impl Changes {
    fn mark(&self, namespace: Option<&str>) {
        let mut d = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        match namespace {
            Some(ns) => {
                d.namespaces.insert(ns.to_owned());
            }
            None => d.all = true,
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One watched kind.
struct Source {
    resource: ApiResource,
    store: Store<DynamicObject>,
}

impl Source {
    /// The objects in the cache (of `namespace` only, when given), as the rules read them.
    fn objects(&self, namespace: Option<&str>) -> Vec<Value> {
        let objects = match namespace {
            Some(ns) => self
                .store
                .state_filter(|o| o.metadata.namespace.as_deref() == Some(ns)),
            None => self.store.state(),
        };
        objects
            .iter()
            .filter_map(|o| {
                let mut v = serde_json::to_value(o.as_ref()).ok()?;
                v["apiVersion"] = Value::String(self.resource.api_version.clone());
                v["kind"] = Value::String(self.resource.kind.clone());
                Some(v)
            })
            .collect()
    }
}

/// The `(group, resource)` pairs the audit watches: every kind the webhook reviews, and the
/// related kinds the rules consult.
fn watched_resources() -> BTreeSet<(&'static str, &'static str)> {
    coverage::KINDS
        .iter()
        .flat_map(|c| c.webhook.iter().copied())
        .chain(CONSULTED_ONLY.iter().copied())
        .collect()
}

/// Finds the served resources among [`watched_resources`] (a CRD not installed is skipped)
/// and starts their reflectors, marking changed namespaces in `changes`.
async fn start_sources<S>(
    client: &kube::Client,
    changes: &Arc<Changes>,
    stop: &S,
) -> Result<Vec<Source>, kube::Error>
where
    S: Future<Output = ()> + Clone + Send + 'static,
{
    let wanted = watched_resources();
    let groups: BTreeSet<&str> = wanted.iter().map(|(g, _)| *g).collect();
    let groups: Vec<&str> = groups.into_iter().collect();
    let discovery = Discovery::new(client.clone()).filter(&groups).run().await?;
    let mut sources = Vec::new();
    for group in discovery.groups() {
        for (resource, _) in group.recommended_resources() {
            if !wanted.contains(&(group.name(), resource.plural.as_str())) {
                continue;
            }
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let changes = changes.clone();
            let kind = resource.kind.clone();
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(move |event| {
                    match event {
                        Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                            changes.mark(Some(o.metadata.namespace.as_deref().unwrap_or("default")))
                        }
                        Ok(watcher::Event::InitDone) => changes.mark(None),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(kind, error = %e, "audit watch error; retrying"),
                    }
                    futures::future::ready(())
                });
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stream => {}
                    _ = stop => {}
                }
            });
            sources.push(Source { resource, store });
        }
    }
    Ok(sources)
}

/// The audit's state between runs: what the cluster holds of its reports, and the findings
/// counts per namespace.
struct Auditor {
    config: AuditConfig,
    writer: ReportWriter,
    metrics: Arc<AuditMetrics>,
    sources: Vec<Source>,
    /// The stored `apiguard-audit` reports by namespace (`None`: the CRD is not installed).
    stored: Option<BTreeMap<String, PolicyReport>>,
    counts: BTreeMap<String, BTreeMap<(&'static str, &'static str), i64>>,
}

impl Auditor {
    /// Re-reads the stored reports (one list request).
    async fn refresh_stored(&mut self) {
        let selector = format!("{}={}", labels::REPORT, labels::REPORT_AUDIT);
        match self.writer.list_all(&selector).await {
            Ok(reports) => {
                self.stored = Some(
                    reports
                        .into_iter()
                        .filter(|r| r.metadata.name.as_deref() == Some(AUDIT_REPORT))
                        .filter_map(|r| Some((r.metadata.namespace.clone()?, r)))
                        .collect(),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if self.stored.is_some() || self.counts.is_empty() {
                    tracing::warn!(
                        "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: the audit \
                         only logs and counts its findings (install it, or the chart's \
                         policyReports.installCRDs)"
                    );
                }
                self.stored = None;
            }
            Err(e) => tracing::warn!(error = %e, "listing the audit's PolicyReports failed"),
        }
    }

    /// Audits every namespace.
    async fn full(&mut self) {
        let started = Instant::now();
        self.refresh_stored().await;
        let objects: Vec<Value> = self.sources.iter().flat_map(|s| s.objects(None)).collect();
        self.metrics.objects.set(objects.len() as i64);
        let mut groups = by_namespace(objects);
        let known: Vec<String> = self
            .stored
            .iter()
            .flatten()
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in known
            .into_iter()
            .chain(self.counts.keys().cloned().collect::<Vec<_>>())
        {
            groups.entry(ns).or_default();
        }
        for (namespace, objects) in groups {
            self.settle(&namespace, &objects).await;
        }
        self.metrics.set_findings(self.counts.values());
        self.metrics.ran("full", started.elapsed());
    }

    /// Audits the namespaces that changed.
    async fn namespaces(&mut self, namespaces: BTreeSet<String>) {
        let started = Instant::now();
        for namespace in namespaces {
            let objects: Vec<Value> = self
                .sources
                .iter()
                .flat_map(|s| s.objects(Some(&namespace)))
                .collect();
            self.settle(&namespace, &objects).await;
        }
        self.metrics.set_findings(self.counts.values());
        self.metrics.ran("changes", started.elapsed());
    }

    /// Audits one namespace and brings its report up to date.
    async fn settle(&mut self, namespace: &str, objects: &[Value]) {
        let findings = audit_namespace(objects, &self.config.engine);
        let namespace_counts = counts(&findings);
        if namespace_counts.is_empty() {
            self.counts.remove(namespace);
        } else {
            self.counts.insert(namespace.to_owned(), namespace_counts);
        }
        for f in findings.iter().filter(|f| f.finding.exemption.is_none()) {
            tracing::debug!(namespace, rule = f.finding.rule.id(), message = %f.finding.message, "audit finding");
        }
        let Some(stored) = self.stored.as_mut() else {
            return;
        };
        let previous = stored.get(namespace).cloned();
        let previous = previous.as_ref();
        let result = match report(namespace, &findings, previous, Timestamp::now()) {
            Some(desired) => match self.writer.apply(&desired, previous).await {
                Ok((Written::Applied, applied)) => {
                    stored.insert(namespace.to_owned(), applied.unwrap_or(desired));
                    Ok(Written::Applied)
                }
                other => other.map(|(w, _)| w),
            },
            None if previous.is_some() => {
                stored.remove(namespace);
                self.writer.delete(namespace, AUDIT_REPORT).await
            }
            None => Ok(Written::Unchanged),
        };
        match result {
            Ok(written @ (Written::Applied | Written::Deleted)) => {
                tracing::info!(
                    namespace,
                    report = AUDIT_REPORT,
                    written = written.as_str(),
                    "audit report updated"
                );
                self.metrics.wrote(written.as_str());
            }
            Ok(_) => {}
            Err(e) => {
                // Forget it: the next full audit re-reads what is stored and tries again.
                stored.remove(namespace);
                self.metrics.wrote("error");
                tracing::warn!(namespace, error = %e, "writing the audit report failed");
            }
        }
    }
}

/// What the controller's leader needs to run the audit.
#[derive(Clone)]
pub struct Audit {
    pub config: AuditConfig,
    pub metrics: Arc<AuditMetrics>,
}

/// Runs the audit until `stop` resolves (the leader loses the Lease, or shutdown).
pub async fn run<S>(client: kube::Client, config: AuditConfig, metrics: Arc<AuditMetrics>, stop: S)
where
    S: Future<Output = ()> + Clone + Send + 'static,
{
    let changes = Arc::new(Changes::default());
    let sources = tokio::select! {
        s = start_sources(&client, &changes, &stop) => s,
        _ = stop.clone() => return,
    };
    let sources = match sources {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "API discovery for the audit failed; no background audit");
            return;
        }
    };
    let synced = futures::future::join_all(sources.iter().map(|s| s.store.wait_until_ready()));
    tokio::select! {
        _ = synced => {}
        _ = stop.clone() => return,
    }
    tracing::info!(
        kinds = sources.len(),
        interval = ?config.interval,
        "background audit started"
    );
    changes.take();
    let mut auditor = Auditor {
        writer: ReportWriter::new(client, field_managers::AUDIT),
        config,
        metrics,
        sources,
        stored: None,
        counts: BTreeMap::new(),
    };
    auditor.full().await;
    let mut next_full = tokio::time::Instant::now() + auditor.config.interval;
    loop {
        tokio::select! {
            _ = stop.clone() => break,
            _ = tokio::time::sleep_until(next_full) => {
                changes.take();
                auditor.full().await;
                next_full = tokio::time::Instant::now() + auditor.config.interval;
            }
            _ = changes.notify.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(auditor.config.debounce) => {}
                    _ = stop.clone() => break,
                }
                let dirty = changes.take();
                if dirty.all {
                    auditor.full().await;
                } else if !dirty.namespaces.is_empty() {
                    auditor.namespaces(dirty.namespaces).await;
                }
            }
        }
    }
    tracing::info!("background audit stopped");
}
