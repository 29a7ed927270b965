//! The one home of the names apiguard gives to what it writes: the names of a policy's children,
//! the label and annotation keys on them, and the server-side apply field managers.
//!
//! Everything that creates, finds, lists, prunes or lints these objects uses the definitions
//! here, so they cannot drift apart (APG004, for one, looks for the gateway Service by
//! [`gateway_name`]). The string values are part of the contract with objects already in
//! clusters: changing one orphans what an older version wrote.

use super::ApiSecurityPolicy;

/// `<policy>-apiguard`: the gateway's ConfigMap, Deployment, Service and service account.
pub fn gateway_name(policy_name: &str) -> String {
    format!("{policy_name}-apiguard")
}

/// `<policy>-apiguard-secrets`: the gateway's Secret (private keys, API keys).
pub(crate) fn gateway_secrets_name(policy_name: &str) -> String {
    format!("{policy_name}-apiguard-secrets")
}

/// `<policy>-apiguard-target`: the NetworkPolicy isolating the target's pods.
pub(crate) fn target_network_policy_name(policy_name: &str) -> String {
    format!("{policy_name}-apiguard-target")
}

/// `<policy>-apiguard-gateway-identity`: Secret with the gateway's workload certificate.
pub(crate) fn gateway_identity_secret_name(policy_name: &str) -> String {
    format!("{policy_name}-apiguard-gateway-identity")
}

/// `<policy>-apiguard-target-identity`: Secret with the target service account's workload
/// certificate.
pub(crate) fn target_identity_secret_name(policy_name: &str) -> String {
    format!("{policy_name}-apiguard-target-identity")
}

/// Name of the trust bundle ConfigMap in every namespace that has a policy.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "apiguard-trust-bundle";

/// Name of the background audit's PolicyReport in each namespace with findings.
pub const AUDIT_REPORT: &str = "apiguard-audit";

/// `apiguard-<policy>`: the PolicyReport of a policy's discovery findings (shadow, zombie and
/// sensitive-data endpoints), in the policy's namespace.
pub fn discovery_report_name(policy_name: &str) -> String {
    format!("apiguard-{policy_name}")
}

/// `<policy>.<id>`: the Event announcing one runtime detection or anomaly of a policy (`id`, 16
/// hex digits, names what is announced, so announcing it twice finds the first Event).
pub fn runtime_event_name(policy_name: &str, id: &str) -> String {
    format!("{policy_name}.{id}")
}

impl ApiSecurityPolicy {
    /// `<name>-apiguard` ([`gateway_name`]); a policy without a name gives `-apiguard`.
    pub fn gateway_name(&self) -> String {
        gateway_name(self.metadata.name.as_deref().unwrap_or(""))
    }

    /// `<name>-apiguard-secrets` ([`gateway_secrets_name`]).
    pub(crate) fn gateway_secrets_name(&self) -> String {
        gateway_secrets_name(self.metadata.name.as_deref().unwrap_or(""))
    }

    /// `<name>-apiguard-target` ([`target_network_policy_name`]).
    pub(crate) fn target_network_policy_name(&self) -> String {
        target_network_policy_name(self.metadata.name.as_deref().unwrap_or(""))
    }
}

pub mod labels {
    //! Label keys (and the one fixed label value) on the objects apiguard writes.
    //!
    //! # The two component labels
    //!
    //! Two keys say which part of apiguard an object belongs to, and both stay, each for the
    //! objects it has always been on:
    //!
    //! - `COMPONENT` (`apiguard.dev/component`) is on a policy's rendered objects (the gateway
    //!   ConfigMap, Secret, Deployment and Service, the target NetworkPolicy) and **in the gateway Deployment's `spec.selector`** and the
    //!   pod template. A Deployment's selector is immutable: moving the gateway to another key
    //!   would make every apply to a Deployment an older version created fail. So this key is
    //!   *the* component label of everything per policy.
    //! - `APP_COMPONENT` (`app.kubernetes.io/component`) is on the workload-identity objects
    //!   (the CA Secret, leaf certificate Secrets, the trust bundle ConfigMap, the webhook
    //!   serving certificate Secret), as docs/certificates.md documents and the cluster tests
    //!   select them (`app.kubernetes.io/component=workload-identity`). apiguard itself finds
    //!   these by name, not by this label, so nothing requires it to match `COMPONENT`, while
    //!   moving them would silently break a user's selections.
    //!
    //! The controller recognises its children by `MANAGED_BY` = `MANAGED_BY_VALUE` and
    //! [`POLICY`] only (watch selectors, adoption, pruning), so neither component key decides
    //! what it adopts or prunes, and what an older version labelled is still recognised.

    /// Standard label on everything apiguard writes; its value is [`MANAGED_BY_VALUE`].
    pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub(crate) const MANAGED_BY_VALUE: &str = "apiguard";
    /// The owning policy's name, on every per-policy child.
    pub const POLICY: &str = "apiguard.dev/policy";
    /// Component of a policy's rendered objects; part of the gateway Deployment's (immutable)
    /// selector. See the module docs for why there are two component keys.
    pub(crate) const COMPONENT: &str = "apiguard.dev/component";
    /// Component of the workload-identity objects (CA, leaf and serving certificate Secrets,
    /// trust bundle ConfigMap). See the module docs for why there are two component keys.
    pub(crate) const APP_COMPONENT: &str = "app.kubernetes.io/component";
    /// On a PolicyReport apiguard writes: which report it is (the audit's is [`REPORT_AUDIT`]).
    pub const REPORT: &str = "apiguard.dev/report";
    /// The value of [`REPORT`] on the background audit's reports.
    pub const REPORT_AUDIT: &str = "audit";
    /// The value of [`REPORT`] on a policy's discovery report (`apiguard-<policy>`).
    pub const REPORT_DISCOVERY: &str = "discovery";
    /// On an Event announcing a runtime detection or anomaly: the value
    /// [`ANNOUNCEMENT_RUNTIME`] (with [`POLICY`], how a restarted operator finds them).
    pub const ANNOUNCEMENT: &str = "apiguard.dev/announcement";
    /// The value of [`ANNOUNCEMENT`].
    pub const ANNOUNCEMENT_RUNTIME: &str = "runtime";
}

/// Annotation keys apiguard writes on its children.
pub mod annotations {
    /// On the gateway ConfigMap: the hash of all the gateway's configuration files.
    pub(crate) const CONFIG_HASH: &str = "apiguard.dev/config-hash";
    /// On the gateway pod template: the hash of the bootstrap (the only file whose change
    /// needs a restart).
    pub(crate) const BOOTSTRAP_HASH: &str = "apiguard.dev/bootstrap-hash";
    /// On a leaf certificate Secret: its SPIFFE ID (label values cannot hold `/` and `:`).
    pub(crate) const SPIFFE_ID: &str = "apiguard.dev/spiffe-id";
    /// On a discovery PolicyReport: SHA-256 (hex) of the declarations its findings were
    /// learned under (a change of the policy's rules or OpenAPI document starts it over).
    pub const DECLARATIONS: &str = "apiguard.dev/declarations";
    /// On an Event announcing a runtime detection or anomaly: what it announced (JSON: reason,
    /// detector and key or endpoint, when it fired and until when it lasts, Unix ms).
    pub const ANNOUNCED: &str = "apiguard.dev/announced";
    /// On a certificate Secret: the certificate's `notAfter` (RFC 3339).
    pub(crate) const NOT_AFTER: &str = "apiguard.dev/not-after";
    /// Set by the user to `requested` on the CA Secret to start a CA rotation.
    pub const ROTATE_CA: &str = "apiguard.dev/rotate";
    /// On the CA Secret: the state of a CA rotation in progress (JSON).
    pub const CA_ROTATION_STATE: &str = "apiguard.dev/ca-rotation";
    /// On any reviewed object: `APGxxx=reason`, exempting it from a rule (recorded as a
    /// warning).
    pub(crate) const EXEMPT: &str = "apiguard.dev/exempt";
    /// On an Ingress, HTTPRoute or GRPCRoute: `"<reason>"` marks it deliberately public.
    pub(crate) const PUBLIC: &str = "apiguard.dev/public";
}

/// Server-side apply field managers.
pub mod field_managers {
    /// The field manager of every controller write to a policy's children and status.
    pub(crate) const CONTROLLER: &str = "apiguard";
    /// The field manager of the webhook's `caBundle` apply to its
    /// ValidatingWebhookConfiguration.
    pub const WEBHOOK_CA_BUNDLE: &str = "apiguard-webhook-ca";

    /// The field manager of the background audit's PolicyReport writes.
    pub const AUDIT: &str = "apiguard-audit";

    /// The field manager of the discovery intake's writes (`status.discovery`, the
    /// PolicyReport `apiguard-<policy>`).
    pub const DISCOVERY: &str = "apiguard-discovery";

    /// The field manager of the intake's `status.runtime` writes (detections and anomalies).
    pub const RUNTIME: &str = "apiguard-runtime";

    /// The field manager of one replica's leader-election Lease writes.
    pub fn lease(identity: &str) -> String {
        format!("apiguard-lease-{identity}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_values() {
        assert_eq!(gateway_name("payments"), "payments-apiguard");
        assert_eq!(
            gateway_secrets_name("payments"),
            "payments-apiguard-secrets"
        );
        assert_eq!(
            target_network_policy_name("payments"),
            "payments-apiguard-target"
        );
        assert_eq!(
            gateway_identity_secret_name("payments"),
            "payments-apiguard-gateway-identity"
        );
        assert_eq!(
            target_identity_secret_name("payments"),
            "payments-apiguard-target-identity"
        );
        assert_eq!(field_managers::lease("pod-1"), "apiguard-lease-pod-1");
    }
}
