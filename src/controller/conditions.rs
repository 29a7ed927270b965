//! Status of a policy as pure functions: the five conditions from what reconcile found, and
//! the comparison that keeps an unchanged status from being rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ApiSecurityPolicyStatus, CertificateStatus, GatewayStatus};

pub(crate) const ACCEPTED: &str = "Accepted";
pub(crate) const PROGRAMMED: &str = "Programmed";
pub(crate) const CERTIFICATES_READY: &str = "CertificatesReady";
pub(crate) const NETWORK_ISOLATED: &str = "NetworkIsolated";
pub(crate) const READY: &str = "Ready";
/// Only for a policy with `spec.openapi`: its document was found and compiles.
pub(crate) const CONTRACT_LOADED: &str = "ContractLoaded";

/// The condition types every policy has, in the order they are written (a policy with
/// `spec.openapi` also has `ContractLoaded`, before Ready).
pub const ALL: [&str; 5] = [
    ACCEPTED,
    PROGRAMMED,
    CERTIFICATES_READY,
    NETWORK_ISOLATED,
    READY,
];

/// Why a condition has its status: the bounded set of CamelCase reasons reconcile writes
/// (docs/controller.md lists them; also the Event reason). Compare these, never their strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted=True.
    Accepted,
    /// Accepted=False: the spec breaks an invariant.
    Invalid,
    /// Accepted=False: an older policy targets the same Service.
    Conflict,
    /// Programmed=False while the policy is not accepted.
    NotAccepted,
    /// Programmed, CertificatesReady and NetworkIsolated wait for acceptance.
    Pending,
    /// The target Service does not exist.
    TargetNotFound,
    /// A SPIFFE ID could not be formed from the namespace and service account.
    InvalidIdentity,
    /// A Secret the spec names is missing or incomplete.
    ReferenceNotFound,
    /// A leaf certificate could not be issued.
    IssueFailed,
    /// The renderer refused the policy.
    RenderFailed,
    /// A child exists and is not the policy's.
    NotOwned,
    /// A child could not be applied.
    ApplyFailed,
    /// Programmed=True.
    Programmed,
    /// CertificatesReady=True.
    Issued,
    /// NetworkIsolated=True.
    Applied,
    /// NetworkIsolated=False on purpose (`network.isolation: None`).
    IsolationDisabled,
    /// Ready=True.
    Ready,
    /// ContractLoaded=True.
    Loaded,
    /// ContractLoaded=False: the ConfigMap `spec.openapi.source.configMapRef` names, or its
    /// key, does not exist.
    ConfigMapNotFound,
    /// ContractLoaded=False: the OpenAPI document does not parse or compile.
    InvalidOpenAPI,
    /// Programmed=False: a `scope: Global` rate limit, and the operator has no `--redis-url`.
    GlobalRateLimitWithoutRedis,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 21] = [
        Reason::Accepted,
        Reason::Invalid,
        Reason::Conflict,
        Reason::NotAccepted,
        Reason::Pending,
        Reason::TargetNotFound,
        Reason::InvalidIdentity,
        Reason::ReferenceNotFound,
        Reason::IssueFailed,
        Reason::RenderFailed,
        Reason::NotOwned,
        Reason::ApplyFailed,
        Reason::Programmed,
        Reason::Issued,
        Reason::Applied,
        Reason::IsolationDisabled,
        Reason::Ready,
        Reason::Loaded,
        Reason::ConfigMapNotFound,
        Reason::InvalidOpenAPI,
        Reason::GlobalRateLimitWithoutRedis,
    ];

    /// The reason as written in a condition.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Invalid => "Invalid",
            Reason::Conflict => "Conflict",
            Reason::NotAccepted => "NotAccepted",
            Reason::Pending => "Pending",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::InvalidIdentity => "InvalidIdentity",
            Reason::ReferenceNotFound => "ReferenceNotFound",
            Reason::IssueFailed => "IssueFailed",
            Reason::RenderFailed => "RenderFailed",
            Reason::NotOwned => "NotOwned",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::Programmed => "Programmed",
            Reason::Issued => "Issued",
            Reason::Applied => "Applied",
            Reason::IsolationDisabled => "IsolationDisabled",
            Reason::Ready => "Ready",
            Reason::Loaded => "Loaded",
            Reason::ConfigMapNotFound => "ConfigMapNotFound",
            Reason::InvalidOpenAPI => "InvalidOpenAPI",
            Reason::GlobalRateLimitWithoutRedis => "GlobalRateLimitWithoutRedis",
        }
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

/// One condition as reconcile decided it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: State,
    /// Why (bounded set; also the Event reason).
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn ok(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::True,
            reason,
            message: message.into(),
        }
    }
    pub fn fail(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::False,
            reason,
            message: message.into(),
        }
    }
    pub fn unknown(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::Unknown,
            reason,
            message: message.into(),
        }
    }
}

/// What reconcile found for each aspect of the policy. `Ready` is derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: Verdict,
    pub programmed: Verdict,
    pub certificates: Verdict,
    pub network: Verdict,
    /// ContractLoaded, for a policy with `spec.openapi` (None: no such condition).
    pub contract: Option<Verdict>,
    /// `network.isolation: None`: NetworkIsolated=False is expected and does not block Ready.
    pub isolation_disabled: bool,
}

impl Outcome {
    /// Ready is True when the policy is accepted, its contract (if any) loaded, its gateway
    /// programmed, its certificates in place and (unless isolation is turned off) its
    /// NetworkPolicies applied.
    pub fn ready(&self) -> Verdict {
        // The contract before the gateway: while it does not load, the gateway waits for it.
        let blocking = std::iter::once((ACCEPTED, &self.accepted))
            .chain(self.contract.as_ref().map(|c| (CONTRACT_LOADED, c)))
            .chain([
                (PROGRAMMED, &self.programmed),
                (CERTIFICATES_READY, &self.certificates),
            ])
            .chain((!self.isolation_disabled).then_some((NETWORK_ISOLATED, &self.network)))
            .find(|(_, v)| v.state != State::True);
        match blocking {
            None => Verdict::ok(
                Reason::Ready,
                "gateway, certificates and network rules are in place",
            ),
            Some((kind, v)) => Verdict {
                state: if v.state == State::Unknown {
                    State::Unknown
                } else {
                    State::False
                },
                reason: v.reason,
                message: format!("{kind}: {}", v.message),
            },
        }
    }

    /// The verdicts in [`ALL`] order, ContractLoaded (when there is one) before Ready.
    pub(crate) fn verdicts(&self) -> Vec<(&'static str, Verdict)> {
        let mut verdicts = vec![
            (ACCEPTED, self.accepted.clone()),
            (PROGRAMMED, self.programmed.clone()),
            (CERTIFICATES_READY, self.certificates.clone()),
            (NETWORK_ISOLATED, self.network.clone()),
        ];
        verdicts.extend(self.contract.clone().map(|c| (CONTRACT_LOADED, c)));
        verdicts.push((READY, self.ready()));
        verdicts
    }
}

/// Builds the conditions for `generation`, keeping `lastTransitionTime` of every condition
/// whose status did not change (a new reason or message is not a transition).
pub fn conditions(
    outcome: &Outcome,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    outcome
        .verdicts()
        .into_iter()
        .map(|(type_, v)| {
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == v.state.as_str())
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: type_.to_string(),
                status: v.state.as_str().to_string(),
                reason: v.reason.as_str().to_string(),
                message: v.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The full status to write.
pub fn status(
    outcome: &Outcome,
    previous: Option<&ApiSecurityPolicyStatus>,
    generation: Option<i64>,
    gateway: Option<GatewayStatus>,
    certificates: Vec<CertificateStatus>,
    now: &Time,
) -> ApiSecurityPolicyStatus {
    let prev_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    ApiSecurityPolicyStatus {
        observed_generation: generation,
        conditions: conditions(outcome, prev_conditions, generation, now),
        gateway,
        certificates,
        // Written by the discovery intake under its own field manager; the reconcile's apply
        // leaves it out, so it is kept.
        discovery: None,
        // Written by the intake under its own field manager (apiguard-runtime), kept the same way.
        runtime: None,
    }
}

fn same_condition(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

/// Whether two statuses say the same thing, ignoring `lastTransitionTime`.
pub fn equivalent(a: &ApiSecurityPolicyStatus, b: &ApiSecurityPolicyStatus) -> bool {
    a.observed_generation == b.observed_generation
        && a.gateway == b.gateway
        && a.certificates == b.certificates
        && a.conditions.len() == b.conditions.len()
        && a.conditions.iter().all(|c| {
            b.conditions
                .iter()
                .any(|d| d.type_ == c.type_ && same_condition(c, d))
        })
}

/// A condition whose status changed (or appeared) between two condition lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub type_: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub message: String,
}

/// The status transitions from `before` to `after`, for Events.
pub fn transitions(before: &[Condition], after: &[Condition]) -> Vec<Transition> {
    after
        .iter()
        .filter_map(|c| {
            let old = before.iter().find(|b| b.type_ == c.type_);
            (old.map(|o| &o.status) != Some(&c.status)).then(|| Transition {
                type_: c.type_.clone(),
                from: old.map(|o| o.status.clone()),
                to: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
        })
        .collect()
}

/// The one Event that reports the transitions of one reconcile (a new policy turns five
/// conditions True at once: one Event, not five).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventSummary {
    pub warning: bool,
    /// The first unexpected failure's reason; else the Ready condition's; else the first's.
    pub reason: String,
    /// Every transition, `Type is Status (Reason): message`, at most 1,000 characters.
    pub note: String,
}

/// Summarizes `transitions` for an Event; `None` when nothing changed. NetworkIsolated turning
/// False is expected (not a warning) when isolation is disabled on purpose.
pub(crate) fn event_summary(
    transitions: &[Transition],
    isolation_disabled: bool,
) -> Option<EventSummary> {
    let unexpected = |t: &&Transition| {
        t.to == State::False.as_str() && !(t.type_ == NETWORK_ISOLATED && isolation_disabled)
    };
    let first = transitions.first()?;
    let failing = transitions.iter().find(unexpected);
    let reason = failing
        .or_else(|| transitions.iter().find(|t| t.type_ == READY))
        .unwrap_or(first)
        .reason
        .clone();
    let note = transitions
        .iter()
        .map(|t| format!("{} is {} ({}): {}", t.type_, t.to, t.reason, t.message))
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .take(1000)
        .collect();
    Some(EventSummary {
        warning: failing.is_some(),
        reason,
        note,
    })
}

/// Whether condition `type_` is True.
pub(crate) fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == State::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn tr(type_: &str, to: &str, reason: &str) -> Transition {
        Transition {
            type_: type_.into(),
            from: None,
            to: to.into(),
            reason: reason.into(),
            message: format!("{type_} message"),
        }
    }

    #[test]
    fn one_event_sums_up_a_reconcile() {
        assert_eq!(event_summary(&[], false), None);
        let all_true = [
            tr(ACCEPTED, "True", "Accepted"),
            tr(PROGRAMMED, "True", "Programmed"),
            tr(READY, "True", "Ready"),
        ];
        let e = event_summary(&all_true, false).unwrap();
        assert!(!e.warning);
        assert_eq!(e.reason, "Ready");
        assert_eq!(
            e.note,
            "Accepted is True (Accepted): Accepted message; Programmed is True (Programmed): \
             Programmed message; Ready is True (Ready): Ready message"
        );
        let conflict = [
            tr(ACCEPTED, "False", "Conflict"),
            tr(READY, "False", "NotAccepted"),
        ];
        let e = event_summary(&conflict, false).unwrap();
        assert!(e.warning);
        assert_eq!(e.reason, "Conflict");
        // Isolation disabled on purpose: its False is no warning.
        let open = [
            tr(NETWORK_ISOLATED, "False", "IsolationDisabled"),
            tr(READY, "True", "Ready"),
        ];
        assert!(!event_summary(&open, true).unwrap().warning);
        assert!(event_summary(&open, false).unwrap().warning);
        let e = event_summary(&[tr(PROGRAMMED, "True", "Programmed")], false).unwrap();
        assert_eq!(e.reason, "Programmed");
        let long = [Transition {
            message: "x".repeat(5000),
            ..tr(READY, "True", "Ready")
        }];
        assert_eq!(
            event_summary(&long, false).unwrap().note.chars().count(),
            1000
        );
    }

    fn all_ok() -> Outcome {
        Outcome {
            accepted: Verdict::ok(Reason::Accepted, "valid"),
            programmed: Verdict::ok(Reason::Programmed, "applied"),
            certificates: Verdict::ok(Reason::Issued, "2 certificates"),
            network: Verdict::ok(Reason::Applied, "1 NetworkPolicy"),
            contract: None,
            isolation_disabled: false,
        }
    }

    #[test]
    fn contract_loaded_appears_only_with_a_contract_and_blocks_ready() {
        let types = |o: &Outcome| -> Vec<&str> { o.verdicts().iter().map(|(t, _)| *t).collect() };
        assert_eq!(types(&all_ok()), ALL);
        let mut o = all_ok();
        o.contract = Some(Verdict::ok(Reason::Loaded, "loaded"));
        assert_eq!(
            types(&o),
            [
                ACCEPTED,
                PROGRAMMED,
                CERTIFICATES_READY,
                NETWORK_ISOLATED,
                CONTRACT_LOADED,
                READY
            ]
        );
        assert_eq!(o.ready().state, State::True);
        o.contract = Some(Verdict::fail(
            Reason::InvalidOpenAPI,
            "ConfigMap shop/o key k: invalid at /paths",
        ));
        o.programmed = Verdict::unknown(Reason::InvalidOpenAPI, "waiting");
        let r = o.ready();
        assert_eq!((r.state, r.reason), (State::False, Reason::InvalidOpenAPI));
        assert_eq!(
            r.message,
            "ContractLoaded: ConfigMap shop/o key k: invalid at /paths"
        );
    }

    #[test]
    fn ready_needs_every_aspect_and_names_the_first_blocker() {
        assert_eq!(all_ok().ready().state, State::True);
        let mut o = all_ok();
        o.programmed = Verdict::fail(Reason::TargetNotFound, "Service shop/payments not found");
        o.network = Verdict::unknown(Reason::TargetNotFound, "waiting");
        let r = o.ready();
        assert_eq!(r.state, State::False);
        assert_eq!(r.reason, Reason::TargetNotFound);
        assert_eq!(r.message, "Programmed: Service shop/payments not found");
    }

    #[test]
    fn disabled_isolation_does_not_block_ready() {
        let mut o = all_ok();
        o.network = Verdict::fail(Reason::IsolationDisabled, "network.isolation is None");
        assert_eq!(o.ready().state, State::False);
        o.isolation_disabled = true;
        assert_eq!(o.ready().state, State::True);
    }

    #[test]
    fn last_transition_time_is_kept_while_the_status_holds() {
        let first = conditions(&all_ok(), &[], Some(1), &t(100));
        assert!(first.iter().all(|c| c.last_transition_time == t(100)));
        // Same statuses, new message and generation: times stay.
        let mut o = all_ok();
        o.programmed = Verdict::ok(Reason::Programmed, "applied again");
        let second = conditions(&o, &first, Some(2), &t(200));
        assert!(second.iter().all(|c| c.last_transition_time == t(100)));
        assert!(second.iter().all(|c| c.observed_generation == Some(2)));
        // A status change moves only that condition's time (and Ready's).
        o.certificates = Verdict::fail(Reason::IssueFailed, "CA expired");
        let third = conditions(&o, &second, Some(2), &t(300));
        let time_of = |ty: &str| {
            third
                .iter()
                .find(|c| c.type_ == ty)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time_of(CERTIFICATES_READY), t(300));
        assert_eq!(time_of(READY), t(300));
        assert_eq!(time_of(ACCEPTED), t(100));
    }

    #[test]
    fn equivalence_ignores_only_transition_times() {
        let a = status(&all_ok(), None, Some(1), None, vec![], &t(100));
        let mut b = a.clone();
        for c in &mut b.conditions {
            c.last_transition_time = t(999);
        }
        assert!(equivalent(&a, &b));
        b.conditions[0].message = "changed".into();
        assert!(!equivalent(&a, &b));
        let mut c = a.clone();
        c.observed_generation = Some(2);
        assert!(!equivalent(&a, &c));
        let mut d = a.clone();
        d.gateway = Some(GatewayStatus {
            service: "x".into(),
            config_hash: "h".into(),
        });
        assert!(!equivalent(&a, &d));
    }

    #[test]
    fn the_reconciles_status_leaves_out_what_the_intake_writes() {
        // Server-side apply: fields left out of the reconcile's apply stay with their own
        // field managers (apiguard-discovery, apiguard-runtime), even when a previous status had
        // them.
        let previous = crate::api::ApiSecurityPolicyStatus {
            runtime: Some(crate::api::RuntimeStatus {
                active_blocks: 1,
                detections: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = status(&all_ok(), Some(&previous), Some(1), None, vec![], &t(100));
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("runtime").is_none(), "{json}");
        assert!(json.get("discovery").is_none(), "{json}");
    }

    #[test]
    fn reasons_are_written_as_their_names() {
        for r in Reason::ALL {
            assert_eq!(r.as_str(), format!("{r:?}"));
        }
    }

    #[test]
    fn transitions_list_status_changes_only() {
        let before = conditions(&all_ok(), &[], Some(1), &t(1));
        assert_eq!(transitions(&[], &before).len(), 5);
        assert!(transitions(&before, &before).is_empty());
        let mut o = all_ok();
        o.accepted = Verdict::fail(
            Reason::Conflict,
            "older policy shop/a targets Service shop/api",
        );
        let after = conditions(&o, &before, Some(1), &t(2));
        let tr = transitions(&before, &after);
        let types: Vec<_> = tr.iter().map(|t| t.type_.as_str()).collect();
        assert_eq!(types, [ACCEPTED, READY]);
        assert_eq!(tr[0].from.as_deref(), Some("True"));
        assert_eq!(tr[0].reason, "Conflict");
    }
}
