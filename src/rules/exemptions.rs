//! Per-object exemptions.
//!
//! - `apiguard.dev/exempt: "APG005=health probe only; APG003=public status page"`: findings of
//!   the listed rules are kept but marked exempted with the reason (admission lets them through
//!   with a warning). An entry without a reason, or naming an unknown rule, is itself an APG014
//!   (deny) finding on the annotation, and exempts nothing; such findings cannot be exempted.
//! - `apiguard.dev/public: "<reason>"` on an Ingress, HTTPRoute or GRPCRoute marks a deliberately public,
//!   unauthenticated route: APG003 does not apply to it. An empty reason is an APG014 finding
//!   and the route is not treated as public.
//!
//! Namespace exemptions are applied by [`super::review`] before any rule runs.

use super::json::{Reader, annotation_field};
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;
use std::collections::BTreeMap;

pub(crate) use crate::api::names::annotations::{
    EXEMPT as EXEMPT_ANNOTATION, PUBLIC as PUBLIC_ANNOTATION,
};

/// A problem in an `apiguard.dev/exempt` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExemptionError {
    pub entry: String,
    pub problem: String,
}

/// Parses an `apiguard.dev/exempt` value into rule -> reason, with the entries that are wrong.
pub(crate) fn parse_exemptions(value: &str) -> (BTreeMap<RuleId, String>, Vec<ExemptionError>) {
    let mut ok = BTreeMap::new();
    let mut errors = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, reason) = match entry.split_once('=') {
            Some((id, reason)) => (id.trim(), reason.trim()),
            None => (entry, ""),
        };
        match id.parse::<RuleId>() {
            Err(_) => errors.push(ExemptionError {
                entry: entry.to_string(),
                problem: format!("{id:?} is not a rule ID (APG001..APG014)"),
            }),
            Ok(_) if reason.is_empty() => errors.push(ExemptionError {
                entry: entry.to_string(),
                problem: format!("the exemption of {id} has no reason"),
            }),
            Ok(rule) => {
                ok.insert(rule, reason.to_string());
            }
        }
    }
    (ok, errors)
}

fn is_route(obj: &ObjectRef) -> bool {
    matches!(obj.kind.as_str(), "Ingress" | "HTTPRoute" | "GRPCRoute")
}

/// Whether the object is a route deliberately marked public (with a reason).
pub(crate) fn public_route(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) -> bool {
    if !is_route(obj) {
        return false;
    }
    let mut r = Reader::new(obj, out);
    let Some((_, reason)) = r
        .annotations(object)
        .into_iter()
        .find(|(k, _)| *k == PUBLIC_ANNOTATION)
    else {
        return false;
    };
    if reason.trim().is_empty() {
        out.push(Finding::new(
            RuleId::Apg014,
            obj,
            annotation_field(PUBLIC_ANNOTATION),
            "is empty; a deliberately public route must say why",
            "write the reason, e.g. apiguard.dev/public: \"marketing site, no user data\"",
        ));
        return false;
    }
    true
}

/// Marks findings covered by the object's `apiguard.dev/exempt` annotation and reports
/// malformed entries.
pub fn apply(object: &Value, obj: &ObjectRef, findings: &mut Vec<Finding>) {
    let mut extra = Vec::new();
    let value = {
        let mut r = Reader::new(obj, &mut extra);
        r.annotations(object)
            .into_iter()
            .find(|(k, _)| *k == EXEMPT_ANNOTATION)
            .map(|(_, v)| v.to_string())
    };
    if let Some(value) = value {
        let field = annotation_field(EXEMPT_ANNOTATION);
        let (ok, errors) = parse_exemptions(&value);
        for f in findings.iter_mut() {
            if f.field != field
                && let Some(reason) = ok.get(&f.rule)
            {
                f.exemption = Some(reason.clone());
            }
        }
        for e in errors {
            extra.push(Finding::new(
                RuleId::Apg014,
                obj,
                &field,
                format!("entry {:?}: {}", e.entry, e.problem),
                "write each exemption as RULE=reason, separated by `;`, e.g. \"APG005=health probe only; APG003=public status page\"",
            ));
        }
    }
    findings.extend(extra);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_with_reasons() {
        let (ok, errors) = parse_exemptions("APG005=health probe only; APG003 = public page ;");
        assert_eq!(
            ok.get(&RuleId::Apg005).map(String::as_str),
            Some("health probe only")
        );
        assert_eq!(
            ok.get(&RuleId::Apg003).map(String::as_str),
            Some("public page")
        );
        assert!(errors.is_empty());
    }

    #[test]
    fn missing_reason_and_unknown_rule_are_errors() {
        let (ok, errors) = parse_exemptions("APG001; APG002=  ; APG999=x; cors-wildcard-origin=ok");
        assert_eq!(ok.len(), 1, "{ok:?}");
        assert!(ok.contains_key(&RuleId::Apg001));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].problem.contains("no reason"));
        assert!(errors[2].problem.contains("not a rule ID"));
    }
}
