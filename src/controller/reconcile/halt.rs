//! How a reconcile phase stops early: a [`Stop`] (a condition to report) or an error to
//! retry, together a [`Halt`]. Shared by the phases (`program`) and the input reads (`inputs`).

use super::Error;
use crate::controller::conditions::{Outcome, Reason, Verdict};

/// Which condition a [`Stop`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aspect {
    Programmed,
    Certificates,
    Contract,
}

/// Why programming stopped before applying anything.
#[derive(Debug)]
pub(super) struct Stop {
    aspect: Aspect,
    reason: Reason,
    message: String,
}

impl Stop {
    /// `Programmed` fails; certificates and network wait.
    pub(super) fn programmed(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            aspect: Aspect::Programmed,
            reason,
            message: message.into(),
        }
    }

    /// `CertificatesReady` fails; gateway and network wait.
    pub(super) fn certificates(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            aspect: Aspect::Certificates,
            reason,
            message: message.into(),
        }
    }

    /// `ContractLoaded` fails; nothing is applied and the gateway keeps its previous
    /// configuration.
    pub(super) fn contract(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            aspect: Aspect::Contract,
            reason,
            message: message.into(),
        }
    }

    /// Whether the contract failed (the gateway keeps its previous configuration).
    pub(super) fn is_contract(&self) -> bool {
        self.aspect == Aspect::Contract
    }

    /// ContractLoaded=False when the gateway goes on with the last contract that loaded: the
    /// rest of the policy (and certificate renewals) is still programmed.
    pub(super) fn contract_kept_previous(&self) -> Verdict {
        Verdict::fail(
            self.reason,
            format!(
                "{}; the gateway enforces the last OpenAPI document that loaded until this one does",
                self.message
            ),
        )
    }

    /// The conditions: the failed aspect, the later ones waiting; `contract` is ContractLoaded
    /// as decided before the stop (None: the policy has no contract).
    pub(super) fn outcome(
        self,
        accepted: Verdict,
        isolation_disabled: bool,
        contract: Option<Verdict>,
    ) -> Outcome {
        let failed = Verdict::fail(self.reason, self.message.clone());
        let waiting = Verdict::unknown(self.reason, self.message.clone());
        let (programmed, certificates, contract) = match self.aspect {
            Aspect::Programmed => (failed, waiting.clone(), contract),
            Aspect::Certificates => (waiting.clone(), failed, contract),
            Aspect::Contract => {
                let kept = Verdict::unknown(
                    self.reason,
                    format!(
                        "the gateway keeps its previous configuration until the OpenAPI contract loads: {}",
                        self.message
                    ),
                );
                (kept.clone(), kept, Some(failed))
            }
        };
        Outcome {
            accepted,
            programmed,
            certificates,
            network: waiting,
            contract,
            isolation_disabled,
        }
    }
}

/// Why a phase did not return: a condition to report, or an error to retry.
#[derive(Debug)]
pub(super) enum Halt {
    Stop(Stop),
    Failed(Error),
}

impl From<Stop> for Halt {
    fn from(s: Stop) -> Self {
        Halt::Stop(s)
    }
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::State;

    #[test]
    fn a_contract_stop_fails_contract_loaded_and_leaves_the_rest_waiting() {
        let accepted = Verdict::ok(Reason::Accepted, "valid");
        let stop = Stop::contract(Reason::InvalidOpenAPI, "invalid at /paths");
        assert!(stop.is_contract());
        let o = stop.outcome(accepted.clone(), false, None);
        let contract = o.contract.clone().expect("ContractLoaded");
        assert_eq!(
            (contract.state, contract.reason),
            (State::False, Reason::InvalidOpenAPI)
        );
        for waiting in [&o.programmed, &o.certificates, &o.network] {
            assert_eq!(waiting.state, State::Unknown);
            assert_eq!(waiting.reason, Reason::InvalidOpenAPI);
        }
        assert!(
            o.programmed
                .message
                .contains("keeps its previous configuration")
        );
        assert_eq!(o.ready().state, State::False);

        // A later stop keeps the contract's verdict as it was decided.
        let loaded = Some(Verdict::ok(Reason::Loaded, "loaded"));
        let stop = Stop::programmed(Reason::TargetNotFound, "no Service");
        assert!(!stop.is_contract());
        let o = stop.outcome(accepted, false, loaded.clone());
        assert_eq!(o.contract, loaded);
        assert_eq!(o.programmed.state, State::False);
    }
}
