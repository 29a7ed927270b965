//! The admission rule engine (docs/rules.md), shared by the webhook and `apiguard lint`.
//!
//! Pure: [`review`] takes the object under review, a read-only [`ClusterView`] of the other
//! relevant objects and the [`EngineConfig`], and returns [`Finding`]s. No I/O, no clock.
//! [`decide`] turns findings into an admission decision under an [`AdmissionMode`].
//!
//! [`coverage`] lists every kind reviewed, the reviewer it goes to and the fields each rule reads.
//! One file per rule family: [`policy`] (ApiSecurityPolicy), [`cors`], [`authn`] (APG003),
//! [`bypass`] (APG004/APG010), [`tls`] (APG005/APG006), [`ingress_nginx`] (annotations and
//! snippets), [`istio`] (Istio Gateway TLS), [`jwt`] (APG007 outside the policy),
//! [`workloads`] (pod template env vars), [`exemptions`] (namespaces and
//! annotations), [`view`] (the in-memory [`ClusterView`]) and [`json`] (careful reading of
//! kinds without a typed model: wrong types become APG014 findings, never a panic).

pub mod authn;
pub mod bypass;
pub mod cors;
pub mod coverage;
pub mod exemptions;
pub mod ingress_nginx;
pub mod istio;
pub mod json;
pub mod jwt;
pub mod policy;
pub mod tls;
pub mod view;
pub mod workloads;

pub use crate::catalog::{RuleId, Severity};
pub use view::InMemoryView;

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// Which object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// The object's reference, read leniently (missing fields become empty strings).
    pub fn of(object: &Value) -> Self {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
        ObjectRef {
            api_version: s("/apiVersion").to_string(),
            kind: s("/kind").to_string(),
            namespace: object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            name: s("/metadata/name").to_string(),
        }
    }

    /// The namespace used to look up related objects: `default` when the object has none
    /// (as `kubectl apply` would do for a namespaced object).
    pub(crate) fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

impl fmt::Display for ObjectRef {
    /// `Kind namespace/name` (or `Kind name` without a namespace; `(unnamed)` for an object
    /// without `metadata.name`, e.g. one that only has `generateName`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind.is_empty() {
            "(no kind)"
        } else {
            &self.kind
        };
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{name}"),
            None => write!(f, "{kind} {name}"),
        }
    }
}

/// One problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: RuleId,
    /// `rule.severity()`, except where a rule downgrades (APG007 provider without audiences).
    pub severity: Severity,
    pub object: ObjectRef,
    /// The offending field, e.g. `metadata.annotations[nginx.ingress.kubernetes.io/enable-cors]`.
    pub field: String,
    /// Starts with the rule ID, names the object and the field, says what is wrong and the fix
    /// (the webhook's denial text: one line that stands on its own).
    pub message: String,
    /// What is wrong, alone: neither the rule, the object, the field nor the fix
    /// (`is "*"`), for reports that print those separately.
    pub problem: String,
    /// The fix alone.
    pub remediation: String,
    /// `Some(reason)` when an `apiguard.dev/exempt` annotation covers this finding.
    pub exemption: Option<String>,
}

impl Finding {
    /// A finding with the rule's own severity. `problem` says what is wrong, `fix` how to fix it.
    pub fn new(
        rule: RuleId,
        object: &ObjectRef,
        field: impl Into<String>,
        problem: impl AsRef<str>,
        fix: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let fix = fix.into();
        let problem = problem.as_ref().to_string();
        let message = format!("{}: {} {}: {}; {}", rule.id(), object, field, problem, fix);
        Finding {
            rule,
            severity: rule.severity(),
            object: object.clone(),
            field,
            message,
            problem,
            remediation: fix,
            exemption: None,
        }
    }

    /// The same finding with another severity.
    pub(crate) fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Whether the finding counts against admission (deny severity, not exempted).
    pub fn is_blocking(&self) -> bool {
        self.severity == Severity::Deny && self.exemption.is_none()
    }
}

/// Read-only view of the other relevant objects (cluster caches in the webhook, the same lint
/// run offline).
pub trait ClusterView: Send + Sync {
    fn policies_in(&self, namespace: &str) -> Vec<Arc<crate::api::ApiSecurityPolicy>>;
    fn service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<k8s_openapi::api::core::v1::Service>>;
    /// The objects of a [`Related`] kind in `namespace`, as JSON.
    fn related_in(&self, kind: Related, namespace: &str) -> Vec<Arc<Value>>;
}

/// Kinds without a typed model that rules consult while reviewing another object (policies
/// attached to a route or a Gateway). The webhook watches each one whose CRD is installed;
/// `lint` takes them from the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Related {
    /// Envoy Gateway SecurityPolicy: authentication of routes and Gateways (APG003).
    SecurityPolicy,
    /// Envoy Gateway ClientTrafficPolicy: required client certificates on a Gateway (APG003).
    ClientTrafficPolicy,
    /// GKE FrontendConfig: the HTTP-to-HTTPS redirect of a GKE Ingress (APG005).
    FrontendConfig,
}

impl Related {
    pub const ALL: &'static [Related] = &[
        Related::SecurityPolicy,
        Related::ClientTrafficPolicy,
        Related::FrontendConfig,
    ];

    /// API group and kind.
    pub(crate) fn group_kind(self) -> (&'static str, &'static str) {
        match self {
            Related::SecurityPolicy => ("gateway.envoyproxy.io", "SecurityPolicy"),
            Related::ClientTrafficPolicy => ("gateway.envoyproxy.io", "ClientTrafficPolicy"),
            Related::FrontendConfig => ("networking.gke.io", "FrontendConfig"),
        }
    }

    /// The related kind of an object, by its `apiVersion` and `kind` (any version).
    pub fn of(api_version: &str, kind: &str) -> Option<Related> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        Related::ALL
            .iter()
            .copied()
            .find(|r| r.group_kind() == (group, kind))
    }
}

/// How admission treats findings. Global (from the `--mode` flag); a policy's own
/// `spec.mode` governs its gateway, not admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum AdmissionMode {
    /// Deny findings refuse the object; warn findings become warnings.
    #[default]
    #[value(name = "Enforce", alias = "enforce")]
    Enforce,
    /// Everything is admitted; every finding becomes a warning.
    #[value(name = "Warn", alias = "warn")]
    Warn,
    /// Everything is admitted silently; findings are only recorded (metrics, logs, Events).
    #[value(name = "Audit", alias = "audit")]
    Audit,
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Enforce => "Enforce",
            AdmissionMode::Warn => "Warn",
            AdmissionMode::Audit => "Audit",
        }
    }
}

impl fmt::Display for AdmissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AdmissionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Ok(AdmissionMode::Enforce),
            "warn" => Ok(AdmissionMode::Warn),
            "audit" => Ok(AdmissionMode::Audit),
            _ => Err(format!(
                "unknown mode {s:?}: expected Enforce, Warn or Audit"
            )),
        }
    }
}

/// The namespaces exempt by default (the operator's own namespace is added by the caller).
pub(crate) const DEFAULT_EXEMPT_NAMESPACES: &[&str] =
    &["kube-system", "kube-public", "kube-node-lease"];

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub mode: AdmissionMode,
    /// Objects in these namespaces yield no findings.
    pub exempt_namespaces: BTreeSet<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mode: AdmissionMode::Enforce,
            exempt_namespaces: DEFAULT_EXEMPT_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// The namespace of `object` (`default` when absent) when `config` exempts it: its object
/// gets no findings.
pub(crate) fn exempt_namespace<'a>(object: &'a Value, config: &EngineConfig) -> Option<&'a str> {
    let ns = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    config.exempt_namespaces.contains(ns).then_some(ns)
}

/// Evaluates every rule for one object. Exemption annotations are applied (covered findings
/// get `exemption`); objects in exempt namespaces yield no findings. Malformed fields (wrong
/// types) become APG014 findings, never a panic. Kinds not covered yield no findings.
///
/// The object's namespace is `metadata.namespace` (`default` when absent); the webhook fills
/// it from the AdmissionRequest when a CREATE omits it.
pub fn review(object: &Value, view: &dyn ClusterView, config: &EngineConfig) -> Vec<Finding> {
    let obj = ObjectRef::of(object);
    if !object.is_object() || exempt_namespace(object, config).is_some() {
        return Vec::new();
    }
    let group = obj.api_version.split('/').next().unwrap_or("");
    let group = if obj.api_version.contains('/') {
        group
    } else {
        ""
    };
    let mut findings = Vec::new();
    let public_route = exemptions::public_route(object, &obj, &mut findings);
    if let Some(coverage) = coverage::find(group, &obj.kind) {
        (coverage.review)(object, &obj, view, public_route, &mut findings);
    }
    exemptions::apply(object, &obj, &mut findings);
    findings.sort_by(|a, b| (a.rule, &a.field, &a.message).cmp(&(b.rule, &b.field, &b.message)));
    findings.dedup();
    findings
}

/// What admission does with the findings under a mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Full messages of the non-exempted deny findings (Enforce only).
    pub denials: Vec<String>,
    /// AdmissionResponse warnings.
    pub warnings: Vec<String>,
}

/// What admission does with `findings` under `mode`:
///
/// - `Enforce`: non-exempted deny findings are `denials` (and `allowed` is false when there is
///   one); warn findings and exempted findings (`"APG001 exempted: <reason> (<field>)"`) are
///   `warnings`.
/// - `Warn`: allowed; every non-exempted finding's message and every exemption note is a warning.
/// - `Audit`: allowed, no warnings: the caller records the findings (metrics, logs, Events),
///   so users see nothing while a rollout is audited.
pub fn decide(findings: &[Finding], mode: AdmissionMode) -> Decision {
    let exempted = |f: &Finding| {
        f.exemption
            .as_ref()
            .map(|reason| format!("{} exempted: {} ({})", f.rule.id(), reason, f.field))
    };
    match mode {
        AdmissionMode::Enforce => {
            let denials: Vec<String> = findings
                .iter()
                .filter(|f| f.is_blocking())
                .map(|f| f.message.clone())
                .collect();
            let warnings = findings
                .iter()
                .filter_map(|f| {
                    exempted(f)
                        .or_else(|| (f.severity == Severity::Warn).then(|| f.message.clone()))
                })
                .collect();
            Decision {
                allowed: denials.is_empty(),
                denials,
                warnings,
            }
        }
        AdmissionMode::Warn => Decision {
            allowed: true,
            denials: Vec::new(),
            warnings: findings
                .iter()
                .map(|f| exempted(f).unwrap_or_else(|| f.message.clone()))
                .collect(),
        },
        AdmissionMode::Audit => Decision {
            allowed: true,
            denials: Vec::new(),
            warnings: Vec::new(),
        },
    }
}

/// Helpers for the rule families' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Finding, RuleId};

    /// The rule and field of each finding, in order.
    pub(crate) fn rules_and_fields(findings: &[Finding]) -> Vec<(RuleId, &str)> {
        findings
            .iter()
            .map(|f| (f.rule, f.field.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(cors_origins: &[&str]) -> Value {
        json!({
            "apiVersion": "apiguard.dev/v1alpha1",
            "kind": "ApiSecurityPolicy",
            "metadata": {"name": "p", "namespace": "shop",
                "annotations": {"apiguard.dev/exempt": "APG013=internal batch uploads"}},
            "spec": {
                "target": {"service": "p", "port": 8080},
                "exposure": "Public",
                "hosts": ["p.example"],
                "authentication": {"jwt": {"providers": [{"name": "corp",
                    "issuer": "https://idp.example/", "audiences": ["p"],
                    "jwks": {"uri": "https://idp.example/jwks"}}]}},
                "authorization": {"rules": [{"name": "r", "match": {"paths": ["/x"]}}]},
                "cors": {"allowOrigins": cors_origins}
            }
        })
    }

    #[test]
    fn policy_findings_and_decisions() {
        let view = InMemoryView::new();
        let cfg = EngineConfig::default();
        let findings = review(&policy(&["*"]), &view, &cfg);
        let rules: Vec<_> = findings.iter().map(|f| f.rule).collect();
        assert_eq!(rules, vec![RuleId::Apg001, RuleId::Apg013], "{findings:#?}");
        assert!(
            findings[0]
                .message
                .starts_with("APG001: ApiSecurityPolicy shop/p spec.cors.allowOrigins[0]")
        );
        assert_eq!(
            findings[1].exemption.as_deref(),
            Some("internal batch uploads")
        );

        let d = decide(&findings, AdmissionMode::Enforce);
        assert!(!d.allowed);
        assert_eq!(d.denials.len(), 1);
        assert!(d.warnings[0].starts_with("APG013 exempted: internal batch uploads"));
        let d = decide(&findings, AdmissionMode::Warn);
        assert!(d.allowed && d.denials.is_empty() && d.warnings.len() == 2);
        let d = decide(&findings, AdmissionMode::Audit);
        assert!(d.allowed && d.warnings.is_empty());

        let clean = review(&policy(&["https://shop.example"]), &view, &cfg);
        assert!(decide(&clean, AdmissionMode::Enforce).allowed, "{clean:#?}");
    }

    #[test]
    fn exempt_namespaces_and_unknown_kinds_yield_nothing() {
        let view = InMemoryView::new();
        let mut p = policy(&["*"]);
        p["metadata"]["namespace"] = json!("kube-system");
        assert!(review(&p, &view, &EngineConfig::default()).is_empty());
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert!(review(&cm, &view, &EngineConfig::default()).is_empty());
        assert!(review(&json!([1, 2]), &view, &EngineConfig::default()).is_empty());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("warn".parse::<AdmissionMode>(), Ok(AdmissionMode::Warn));
        assert_eq!("Audit".parse::<AdmissionMode>(), Ok(AdmissionMode::Audit));
        assert!("off".parse::<AdmissionMode>().is_err());
    }
}
