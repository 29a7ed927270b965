//! One admission review: read the `admission.k8s.io/v1` AdmissionReview, run the rule engine
//! over the object, answer with an AdmissionReview, record metrics and a decision log line.

use crate::admin::{AdmissionMetrics, FindingLabels, RequestLabels};
use crate::rules::{self, AdmissionMode, ClusterView, EngineConfig, Finding};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::StatusSummary;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// The only AdmissionReview version apiguard answers (v1beta1 left Kubernetes in 1.22).
pub(crate) const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a request body got no AdmissionReview answer (HTTP 400, or 500 for [`ReviewError::Encode`]).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not a valid admission.k8s.io/v1 AdmissionReview: {0}")]
    Parse(#[source] serde_json::Error),
    #[error(
        "AdmissionReview has apiVersion {0:?}; apiguard answers only {ADMISSION_API_VERSION:?} (set admissionReviewVersions: [v1])"
    )]
    ApiVersion(String),
    #[error("AdmissionReview has no `request` to answer")]
    MissingRequest,
    #[error("AdmissionReview request {uid}: {operation} without `request.object`")]
    MissingObject {
        uid: String,
        operation: &'static str,
    },
    #[error("encoding the AdmissionReview answer failed: {0}")]
    Encode(#[source] serde_json::Error),
}

impl ReviewError {
    /// Whether the request (not the webhook) is at fault.
    pub(crate) fn is_bad_request(&self) -> bool {
        !matches!(self, ReviewError::Encode(_))
    }
}

/// The metric label for a kind: a kind the rules review (`rules::coverage::KINDS`) or
/// `other` (labels stay bounded).
pub(crate) fn kind_label(kind: &str) -> &'static str {
    rules::coverage::KINDS
        .iter()
        .flat_map(|c| c.kinds.iter())
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn mode_label(mode: AdmissionMode) -> &'static str {
    match mode {
        AdmissionMode::Enforce => "enforce",
        AdmissionMode::Warn => "warn",
        AdmissionMode::Audit => "audit",
    }
}

/// The answer to one review, with what metrics and logs need.
#[derive(Debug)]
pub struct Verdict {
    pub response: AdmissionResponse,
    pub kind: &'static str,
    pub operation: &'static str,
    /// Every finding, exempted ones included.
    pub findings: Vec<Finding>,
}

/// Answers admission reviews with the rule engine over a cluster view.
pub struct Admission {
    view: Arc<dyn ClusterView>,
    config: EngineConfig,
    metrics: AdmissionMetrics,
}

impl Admission {
    pub fn new(
        view: Arc<dyn ClusterView>,
        config: EngineConfig,
        metrics: AdmissionMetrics,
    ) -> Self {
        Self {
            view,
            config,
            metrics,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Answer the AdmissionReview in `body` with a JSON AdmissionReview, recording metrics
    /// and logging the decision. Errors mean the body is not an answerable review.
    pub fn handle(&self, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
        let started = Instant::now();
        let result = self
            .parse(body)
            .and_then(|req| self.decide(&req).map(|v| (req, v)));
        let outcome = match result {
            Ok((req, verdict)) => {
                self.record(&req, &verdict);
                serde_json::to_vec(&verdict.response.into_review()).map_err(ReviewError::Encode)
            }
            Err(e) => {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        kind: "other",
                        operation: "unknown",
                        decision: "invalid",
                    })
                    .inc();
                tracing::warn!(error = %e, "admission review refused as malformed");
                Err(e)
            }
        };
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// Read an `admission.k8s.io/v1` AdmissionReview.
    pub fn parse(&self, body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(ReviewError::Parse)?;
        if review.types.api_version != ADMISSION_API_VERSION {
            return Err(ReviewError::ApiVersion(review.types.api_version));
        }
        review.try_into().map_err(|_| ReviewError::MissingRequest)
    }

    /// The decision for one request (pure apart from reading the cluster view).
    pub fn decide(&self, req: &AdmissionRequest<DynamicObject>) -> Result<Verdict, ReviewError> {
        let kind = kind_label(&req.kind.kind);
        let operation = operation_label(&req.operation);
        let response = AdmissionResponse::from(req);
        // DELETE and CONNECT carry no new state to check; subresources (status, scale) do not
        // change what an object exposes.
        let nothing_to_check = matches!(req.operation, Operation::Delete | Operation::Connect)
            || req.sub_resource.as_deref().is_some_and(|s| !s.is_empty());
        if nothing_to_check {
            return Ok(Verdict {
                response,
                kind,
                operation,
                findings: Vec::new(),
            });
        }
        let object = req
            .object
            .as_ref()
            .ok_or_else(|| ReviewError::MissingObject {
                uid: req.uid.clone(),
                operation,
            })?;
        let mut value = serde_json::to_value(object).map_err(ReviewError::Parse)?;
        fill_from_request(&mut value, req);
        let findings = rules::review(&value, self.view.as_ref(), &self.config);
        let decision = rules::decide(&findings, self.config.mode);
        let mut response = response;
        if !decision.allowed {
            let object_ref = rules::ObjectRef::of(&value);
            let mut message = format!(
                "apiguard refused {object_ref}: {} finding{}",
                decision.denials.len(),
                if decision.denials.len() == 1 { "" } else { "s" }
            );
            for denial in &decision.denials {
                message.push_str("\n- ");
                message.push_str(denial);
            }
            response = response.deny(message);
            response.result.code = 403;
            response.result.status = Some(StatusSummary::Failure);
            response.result.reason = "Forbidden".to_owned();
        }
        if !decision.warnings.is_empty() {
            response.warnings = Some(decision.warnings);
        }
        let blocking: Vec<&str> = findings
            .iter()
            .filter(|f| f.exemption.is_none())
            .map(|f| f.rule.id())
            .collect();
        if !blocking.is_empty() {
            // Lands in the apiserver audit log as `<webhook name>/findings` (Audit mode's record).
            response
                .audit_annotations
                .insert("findings".to_owned(), blocking.join(","));
        }
        Ok(Verdict {
            response,
            kind,
            operation,
            findings,
        })
    }

    fn record(&self, req: &AdmissionRequest<DynamicObject>, verdict: &Verdict) {
        let decision = if verdict.response.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                kind: verdict.kind,
                operation: verdict.operation,
                decision,
            })
            .inc();
        let mode = mode_label(self.config.mode);
        for f in verdict.findings.iter().filter(|f| f.exemption.is_none()) {
            self.metrics
                .findings
                .get_or_create(&FindingLabels {
                    rule: f.rule.id(),
                    severity: f.severity.as_str(),
                    mode,
                })
                .inc();
        }
        let rules = verdict
            .findings
            .iter()
            .map(|f| match f.exemption {
                Some(_) => format!("{}(exempted)", f.rule.id()),
                None => f.rule.id().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let name = if req.name.is_empty() {
            req.object
                .as_ref()
                .and_then(|o| o.metadata.generate_name.as_deref())
                .unwrap_or("")
        } else {
            req.name.as_str()
        };
        tracing::info!(
            kind = %req.kind.kind,
            namespace = req.namespace.as_deref().unwrap_or(""),
            name,
            uid = %req.uid,
            operation = verdict.operation,
            dry_run = req.dry_run,
            mode = self.config.mode.as_str(),
            decision,
            rules = %rules,
            "admission decision"
        );
    }
}

/// The apiserver sends a CREATE's object before defaulting: a namespaced object may lack
/// `metadata.namespace` (taken from the request URL) and `metadata.name` (generateName).
fn fill_from_request(value: &mut Value, req: &AdmissionRequest<DynamicObject>) {
    let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(ns) = req.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        let missing = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing {
            metadata.insert("namespace".to_owned(), Value::String(ns.to_owned()));
        }
    }
    if !req.name.is_empty() {
        let missing = metadata
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing {
            metadata.insert("name".to_owned(), Value::String(req.name.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_labels_are_bounded() {
        assert_eq!(kind_label("Ingress"), "Ingress");
        assert_eq!(kind_label("CronJob"), "CronJob");
        assert_eq!(kind_label("ConfigMap"), "ConfigMap");
        assert_eq!(kind_label("Secret"), "other");
        assert_eq!(kind_label("x".repeat(1000).as_str()), "other");
    }
}
