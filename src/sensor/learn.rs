//! Discovery in the sensor: the policy's inventory ([`crate::discovery::Inventory`]), fed by
//! the gateway's access log stream ([`super::access_log`]) and served at `GET /inventory`.
//!
//! The classes the sensitive-data stage ([`super::scan_stage`]) finds in response bodies are
//! added to the same inventory ([`Learner::add_sensitive`]).
//!
//! The declared endpoints come from `sensor.yaml` (the rules' `match`, the OpenAPI document);
//! when a reload changes them, the inventory starts over with the new declarations (the counts
//! so far are dropped, logged).

use super::access_log::Logged;
use super::config::SensorConfig;
use crate::discovery::{Declared, Inventory, Observation, Report, Sensitive};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The compiled discovery settings of one `sensor.yaml`.
#[derive(Debug)]
pub(crate) struct DiscoveryConfig {
    pub(crate) policy: String,
    pub(crate) declared: Declared,
    /// Identifies the declarations (their source text): an inventory is kept while it stays.
    pub(crate) fingerprint: String,
    /// `sensitiveData`: which JSON response bodies are scanned.
    pub(crate) sensitive_data: crate::api::SensitiveDataMode,
}

/// The declared endpoints of `config`; None when discovery is off. An error names the field.
pub(crate) fn discovery_config(config: &SensorConfig) -> Result<Option<DiscoveryConfig>, String> {
    let Some(discovery) = &config.discovery else {
        return Ok(None);
    };
    let mut declared = Declared::none();
    let mut fingerprint = String::new();
    if let Some(openapi) = &config.openapi {
        declared
            .add_openapi(&openapi.document)
            .map_err(|e| format!("openapi.document: {e}"))?;
        fingerprint.push_str(&openapi.document);
    }
    for (i, route) in discovery.declared.iter().enumerate() {
        declared
            .add_route(&route.methods, &route.paths)
            .map_err(|e| format!("discovery.declared[{i}].paths {e}"))?;
        fingerprint.push_str(&format!(
            "\n{}:{:?}:{:?}",
            route.rule, route.methods, route.paths
        ));
    }
    Ok(Some(DiscoveryConfig {
        policy: format!("{}/{}", config.policy.namespace, config.policy.name),
        declared,
        fingerprint,
        sensitive_data: discovery.sensitive_data,
    }))
}

/// The inventory and the declarations it was built with.
#[derive(Default)]
pub(crate) struct Learner {
    state: Mutex<Option<(String, Inventory)>>,
    /// Bumped whenever requests are counted or the inventory starts over: the push sends the
    /// inventory again only when this moved.
    generation: AtomicU64,
}

/// The inventory at one moment, for the push.
pub(crate) struct Snapshot {
    /// [`Learner`]'s change counter when the report was taken.
    pub(crate) generation: u64,
    /// The declarations' fingerprint the inventory was learned under (None before the first
    /// request).
    pub(crate) fingerprint: Option<String>,
    pub(crate) report: Report,
}

impl Learner {
    /// Counts `requests` under `config` (a new inventory when the declarations changed), and
    /// returns the inventory's declared and undeclared endpoint counts. With discovery off,
    /// nothing is counted (None).
    pub(crate) fn observe(
        &self,
        config: Option<&DiscoveryConfig>,
        requests: &[Logged],
    ) -> Option<(usize, usize)> {
        let config = config?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let inventory = inventory_for(&mut state, config);
        self.generation.fetch_add(1, Ordering::Relaxed);
        for r in requests {
            let at_unix_ms = r
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            inventory.observe(&Observation {
                method: &r.method,
                path: &r.path,
                status: r.status,
                authenticated: r.authenticated,
                content_type: r.content_type.as_deref(),
                at_unix_ms,
                sensitive: Sensitive::NONE,
            });
        }
        let endpoints = inventory.report().endpoints;
        let declared = endpoints.iter().filter(|e| e.declared).count();
        Some((declared, endpoints.len() - declared))
    }

    /// Adds what the sensitive-data stage found (method, path, classes: from its
    /// `Event::Sensitive`) to the endpoints of `config`'s inventory, without counting requests
    /// (the access log does). With discovery off, nothing is added.
    pub(crate) fn add_sensitive<'e>(
        &self,
        config: Option<&DiscoveryConfig>,
        found: impl IntoIterator<Item = (&'e str, &'e str, &'e Sensitive)>,
    ) {
        let Some(config) = config else {
            return;
        };
        let mut found = found.into_iter().filter(|(_, _, f)| !f.is_empty());
        let Some(first) = found.next() else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let inventory = inventory_for(&mut state, config);
        self.generation.fetch_add(1, Ordering::Relaxed);
        for (method, path, found) in std::iter::once(first).chain(found) {
            inventory.add_sensitive(method, path, found, now_ms);
        }
    }

    /// The inventory so far (empty for `policy` before the first request).
    pub(crate) fn report(&self, policy: &str) -> Report {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.as_ref() {
            Some((_, inventory)) => inventory.report(),
            None => Inventory::new(Some(policy.to_owned()), Declared::none()).report(),
        }
    }
}

impl Learner {
    /// The inventory, the declarations it was learned under and the change counter, taken
    /// together.
    pub(crate) fn snapshot(&self, policy: &str) -> Snapshot {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.generation.load(Ordering::Relaxed);
        match state.as_ref() {
            Some((fingerprint, inventory)) => Snapshot {
                generation,
                fingerprint: Some(fingerprint.clone()),
                report: inventory.report(),
            },
            None => Snapshot {
                generation,
                fingerprint: None,
                report: Inventory::new(Some(policy.to_owned()), Declared::none()).report(),
            },
        }
    }
}

/// The inventory of `config`: a new one when there was none or the declarations changed.
fn inventory_for<'s>(
    state: &'s mut Option<(String, Inventory)>,
    config: &DiscoveryConfig,
) -> &'s mut Inventory {
    if state.as_ref().is_none_or(|(f, _)| *f != config.fingerprint) {
        if state.is_some() {
            tracing::info!(
                policy = config.policy,
                "the declared endpoints changed; the inventory starts over"
            );
        }
        *state = Some((
            config.fingerprint.clone(),
            Inventory::new(Some(config.policy.clone()), config.declared.clone()),
        ));
    }
    let (_, inventory) = state.as_mut().expect("set above");
    inventory
}

/// Shared between the access log service, the ext_proc service and the admin route.
pub(crate) type SharedLearner = Arc<Learner>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::config::{DeclaredRoute, SensorDiscovery};
    use std::time::Duration;

    fn config(rules: &[(&str, &[&str], &[&str])]) -> SensorConfig {
        let mut c = SensorConfig::new("shop", "orders", crate::api::PolicyMode::Enforce);
        c.discovery = Some(SensorDiscovery {
            declared: rules
                .iter()
                .map(|(rule, methods, paths)| DeclaredRoute {
                    rule: rule.to_string(),
                    methods: methods.iter().map(|m| m.to_string()).collect(),
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
            sensitive_data: crate::api::SensitiveDataMode::Off,
        });
        c
    }

    fn logged(method: &str, path: &str, status: u16) -> Logged {
        Logged {
            method: method.into(),
            path: path.into(),
            status,
            route: String::new(),
            authenticated: status != 401,
            content_type: Some("application/json".into()),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            caller: Default::default(),
        }
    }

    #[test]
    fn declared_routes_template_and_undeclared_ones_are_shadow() {
        let c = discovery_config(&config(&[("read", &["GET"], &["/users/{id}"])]))
            .unwrap()
            .unwrap();
        let learner = Learner::default();
        learner.observe(
            Some(&c),
            &[
                logged("GET", "/users/42", 200),
                logged("GET", "/users/43", 401),
                logged("GET", "/v1/admin/export", 404),
            ],
        );
        let report = learner.report("shop/orders");
        assert_eq!(report.policy.as_deref(), Some("shop/orders"));
        let users = report
            .endpoints
            .iter()
            .find(|e| e.path == "/users/{id}")
            .unwrap();
        assert!(users.declared);
        assert_eq!(users.requests, 2);
        assert_eq!(users.authenticated, 1);
        assert_eq!(report.shadow, ["GET /v1/admin/export"]);
    }

    #[test]
    fn new_declarations_start_a_new_inventory_and_unchanged_ones_keep_counting() {
        let first = discovery_config(&config(&[("read", &["GET"], &["/a"])]))
            .unwrap()
            .unwrap();
        let learner = Learner::default();
        learner.observe(Some(&first), &[logged("GET", "/a", 200)]);
        let same = discovery_config(&config(&[("read", &["GET"], &["/a"])]))
            .unwrap()
            .unwrap();
        learner.observe(Some(&same), &[logged("GET", "/a", 200)]);
        assert_eq!(learner.report("shop/orders").observed, 2);
        let changed = discovery_config(&config(&[("read", &["GET"], &["/b"])]))
            .unwrap()
            .unwrap();
        learner.observe(Some(&changed), &[logged("GET", "/a", 200)]);
        let report = learner.report("shop/orders");
        assert_eq!(report.observed, 1);
        assert_eq!(report.shadow, ["GET /a"]);
    }

    #[test]
    fn without_discovery_nothing_is_counted() {
        let mut c = config(&[]);
        c.discovery = None;
        assert!(discovery_config(&c).unwrap().is_none());
        let learner = Learner::default();
        learner.observe(None, &[logged("GET", "/a", 200)]);
        assert_eq!(learner.report("shop/orders").observed, 0);
    }

    #[test]
    fn a_bad_declared_path_names_its_field() {
        let e = discovery_config(&config(&[("read", &["GET"], &["no-slash"])])).unwrap_err();
        assert!(e.contains("discovery.declared[0].paths"), "{e}");
    }
}
