//! Programming an accepted policy, phase by phase, each returning values: inputs (target,
//! CA) -> identities -> references -> certificates -> render -> apply -> prune -> conditions.
//! A phase that cannot go on returns a [`Stop`]: one condition fails for a reason, and the
//! aspects after it wait (Unknown) for the same reason.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use time::OffsetDateTime;

use super::children::{ChildSet, Group};
use super::halt::{Halt, Stop};
use super::inputs::{self, References};
use super::{Context, Error, RESYNC};
use crate::api::names::{gateway_identity_secret_name, gateway_name, target_identity_secret_name};
use crate::api::{ApiSecurityPolicy, CertificateStatus, EastWestMtls, GatewayStatus, Isolation};
use crate::controller::certs::{self, Leaf};
use crate::controller::conditions::{Outcome, Reason, State, Verdict};
use crate::controller::gateway::{GatewayInput, GatewayObjects, ServingCertificate};
use crate::controller::ownership;
use crate::identity::secrets::{leaf_secret, trust_bundle_configmap};
use crate::identity::{CertificateAuthority, ExpectedIdentity, IssuedLeaf, SpiffeId};

/// What reconciling a policy produced, for its status, metrics and next look.
pub(super) struct Programmed {
    pub(super) outcome: Outcome,
    pub(super) gateway_status: Option<GatewayStatus>,
    pub(super) cert_status: Vec<CertificateStatus>,
    /// notAfter (Unix seconds) of each certificate, by identity kind.
    pub(super) expiries: Vec<(&'static str, i64)>,
    pub(super) requeue: Duration,
    /// Children that could not be applied.
    pub(super) failures: usize,
}

impl Programmed {
    /// Nothing applied: only the conditions say something.
    pub(super) fn nothing_applied(outcome: Outcome) -> Self {
        Self {
            outcome,
            gateway_status: None,
            cert_status: Vec::new(),
            expiries: Vec::new(),
            requeue: RESYNC,
            failures: 0,
        }
    }

    /// Nothing applied and the gateway left as it is: its status (service, config hash,
    /// certificates) stays what the last programming wrote.
    fn previous_kept(outcome: Outcome, policy: &ApiSecurityPolicy) -> Self {
        let previous = policy.status.as_ref();
        Self {
            gateway_status: previous.and_then(|s| s.gateway.clone()),
            cert_status: previous.map(|s| s.certificates.clone()).unwrap_or_default(),
            ..Self::nothing_applied(outcome)
        }
    }
}

/// Programs an accepted policy (`owner`: its controller reference).
pub(super) async fn program(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    owner: &OwnerReference,
    accepted: Verdict,
    now: OffsetDateTime,
) -> Result<Programmed, Error> {
    let isolation_disabled = policy.spec.network().isolation == Isolation::None;
    // A global limit without Redis would silently count per replica: nothing is programmed,
    // the gateway keeps its last configuration.
    if let Some(stop) = global_rate_limit_refusal(policy, ctx.settings.renderer.has_shared_state())
    {
        let outcome = stop.outcome(accepted, isolation_disabled, None);
        return Ok(Programmed::previous_kept(outcome, policy));
    }
    // The contract first. An invalid one keeps the last document that loaded (read back from
    // the gateway's sensor.yaml), so the rest of the policy and certificate renewals still
    // go out; with none to keep, the gateway is left as it is (nothing rendered, applied or
    // pruned).
    let (document, contract) = match inputs::openapi_document(ctx, policy).await {
        Ok(document) => {
            let contract = document.as_ref().map(|_| {
                Verdict::ok(
                    Reason::Loaded,
                    "the OpenAPI document compiles; the gateway's sensor enforces it",
                )
            });
            (document, contract)
        }
        Err(Halt::Stop(stop)) => match inputs::last_loaded_document(ctx, policy).await? {
            Some(previous) => (Some(previous), Some(stop.contract_kept_previous())),
            None => {
                let outcome = stop.outcome(accepted, isolation_disabled, None);
                return Ok(Programmed::previous_kept(outcome, policy));
            }
        },
        Err(Halt::Failed(e)) => return Err(e),
    };
    match phases(ctx, policy, owner, document.as_deref(), now).await {
        Ok(done) => {
            let mut programmed = conditions(policy, accepted, isolation_disabled, done, now);
            programmed.outcome.contract = contract;
            Ok(programmed)
        }
        Err(Halt::Stop(stop)) => {
            debug_assert!(!stop.is_contract());
            Ok(Programmed::nothing_applied(stop.outcome(
                accepted,
                isolation_disabled,
                contract,
            )))
        }
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// Programmed=False (reason `GlobalRateLimitWithoutRedis`) for a policy with a `scope: Global`
/// rate limit when the operator has no shared state store; the message names the first.
pub(super) fn global_rate_limit_refusal(
    policy: &ApiSecurityPolicy,
    has_shared_state: bool,
) -> Option<Stop> {
    if has_shared_state {
        return None;
    }
    let (i, _) = policy.spec.global_rate_limits().next()?;
    Some(Stop::programmed(
        Reason::GlobalRateLimitWithoutRedis,
        format!(
            "spec.rateLimits[{i}].scope is Global but the operator has no --redis-url \
             (chart value redis.url): a global limit would count per gateway replica; the \
             policy is not programmed and the gateway keeps its last configuration"
        ),
    ))
}

/// What the phases up to pruning leave for the conditions.
struct Done<'a> {
    children: ChildSet<'a>,
    certificates: Certificates,
    config_hash: String,
    gateway_service: String,
}

async fn phases<'a>(
    ctx: &'a Context,
    policy: &'a ApiSecurityPolicy,
    owner: &'a OwnerReference,
    openapi_document: Option<&str>,
    now: OffsetDateTime,
) -> Result<Done<'a>, Halt> {
    let target = inputs::target(ctx, policy)?;
    let ca = ctx.ca(now)?;
    let pods = ctx.settings.inputs.pods.state();
    let target_sa = inputs::target_service_account(&target, pods.iter().map(|p| p.as_ref()));
    let identities = identities(ctx, policy, &target_sa)?;
    let references = inputs::fetch_references(ctx, policy).await?;
    let certificates =
        certificates(ctx, policy, &target, &identities, &references, &ca, now).await?;
    let bundle = ca.roots_pem();
    let rendered = render(
        ctx,
        policy,
        &target,
        &identities,
        Referenced {
            references: &references,
            openapi_document,
        },
        &certificates,
        &bundle,
    )?;
    let config_hash = rendered.config_hash.clone();
    let gateway_service = rendered.gateway_service.clone();
    let children = apply(ctx, policy, owner, rendered, &certificates, &bundle).await;
    children.prune_orphans().await?;
    Ok(Done {
        children,
        certificates,
        config_hash,
        gateway_service,
    })
}

/// The SPIFFE IDs of the gateway and of the target's service account.
struct Identities {
    gateway: SpiffeId,
    target: SpiffeId,
}

fn identities(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    target_sa: &str,
) -> Result<Identities, Stop> {
    let ns = policy.namespace().unwrap_or_default();
    let td = &ctx.settings.config.trust_domain;
    let gateway = SpiffeId::new(td, &ns, &gateway_name(&policy.name_any()));
    let target = SpiffeId::new(td, &ns, target_sa);
    match (gateway, target) {
        (Ok(gateway), Ok(target)) => Ok(Identities { gateway, target }),
        (Err(e), _) | (_, Err(e)) => {
            Err(Stop::certificates(Reason::InvalidIdentity, e.to_string()))
        }
    }
}

/// A leaf of one workload identity and the Secret that stores it.
struct IdentityLeaf {
    /// `gateway` or `workload` (the metric label).
    kind: &'static str,
    secret: String,
    /// The Secret's metadata as this reconcile read it (`None`: it does not exist).
    existing: Option<ObjectMeta>,
    leaf: Leaf,
}

/// The policy's leaves: the gateway's, and the target's unless east-west mTLS is disabled.
struct Certificates {
    gateway: IdentityLeaf,
    workload: Option<IdentityLeaf>,
}

impl Certificates {
    fn all(&self) -> impl Iterator<Item = &IdentityLeaf> {
        std::iter::once(&self.gateway).chain(self.workload.as_ref())
    }
}

/// Keeps each stored leaf that is still good, or issues a new one.
async fn certificates(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    target: &Service,
    ids: &Identities,
    refs: &References,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Result<Certificates, Halt> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    // Without a user-supplied serving certificate the gateway leaf also serves `hosts`.
    let mut gateway_dns = certs::service_dns_names(&gateway_name(&name), &ns);
    if refs.serving.is_none() {
        gateway_dns.extend(policy.spec.hosts.iter().cloned());
    }
    let expected_gateway = ExpectedIdentity {
        spiffe_id: ids.gateway.clone(),
        dns_names: gateway_dns,
    };
    let gateway = leaf(
        ctx,
        &ns,
        "gateway",
        gateway_identity_secret_name(&name),
        &expected_gateway,
        ca,
        now,
    )
    .await?;
    let workload = if policy.spec.east_west().mtls != EastWestMtls::Disabled {
        let expected_target = ExpectedIdentity {
            spiffe_id: ids.target.clone(),
            dns_names: certs::service_dns_names(&target.name_any(), &ns),
        };
        let secret = target_identity_secret_name(&name);
        Some(leaf(ctx, &ns, "workload", secret, &expected_target, ca, now).await?)
    } else {
        None
    };
    Ok(Certificates { gateway, workload })
}

/// Reads the Secret of one identity and keeps or issues its leaf.
async fn leaf(
    ctx: &Context,
    ns: &str,
    kind: &'static str,
    secret: String,
    expected: &ExpectedIdentity,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Result<IdentityLeaf, Halt> {
    let existing = inputs::read_secret(ctx, ns, &secret).await?;
    let lifetime = ctx.settings.config.leaf_lifetime;
    let leaf = certs::plan_leaf(existing.as_ref(), expected, ca, lifetime, now)
        .map_err(|e| Stop::certificates(Reason::IssueFailed, e.to_string()))?;
    Ok(IdentityLeaf {
        kind,
        secret,
        existing: existing.map(|s| s.metadata),
        leaf,
    })
}

/// What the spec references, read for the renderer.
struct Referenced<'a> {
    references: &'a References,
    openapi_document: Option<&'a str>,
}

/// The gateway and network objects, from the pure renderer.
fn render(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    target: &Service,
    ids: &Identities,
    inputs: Referenced<'_>,
    certificates: &Certificates,
    bundle: &str,
) -> Result<GatewayObjects, Stop> {
    let refs = inputs.references;
    let gateway_leaf = &certificates.gateway.leaf;
    let serving = refs.serving.clone().unwrap_or_else(|| ServingCertificate {
        cert_pem: gateway_leaf.cert_pem.clone(),
        key_pem: gateway_leaf.key_pem.clone(),
    });
    ctx.settings
        .renderer
        .render(&GatewayInput {
            policy,
            target,
            gateway_leaf,
            target_identity: &ids.target,
            trust_bundle_pem: bundle,
            serving: &serving,
            // The operator's roots verify client certificates whenever the renderer asks for
            // them (`tls.clientCertificate`, or implied by `authentication.mtls.allowedClients`).
            client_ca_pem: Some(bundle),
            upstream_mtls: certificates.workload.is_some(),
            api_keys: &refs.api_keys,
            jwks_from_secret: &refs.jwks,
            openapi_document: inputs.openapi_document,
        })
        .map_err(|e| Stop::programmed(Reason::RenderFailed, e.to_string()))
}

/// Applies every child: certificates first (the gateway mounts them), then the gateway, then
/// the network.
async fn apply<'a>(
    ctx: &'a Context,
    policy: &'a ApiSecurityPolicy,
    owner: &'a OwnerReference,
    rendered: GatewayObjects,
    certificates: &Certificates,
    bundle: &str,
) -> ChildSet<'a> {
    let ns = policy.namespace().unwrap_or_default();
    let mut children = ChildSet::new(ctx, policy, owner);
    for l in certificates.all() {
        children.already_read::<Secret>(&l.secret, l.existing.clone());
    }
    for s in rendered.secrets {
        children.add(Group::Gateway, s).await;
    }
    for l in certificates.all() {
        let secret = leaf_secret(&l.secret, &ns, &leaf_as_issued(&l.leaf), None);
        children.add(Group::Certificates, secret).await;
    }
    children
        .add_shared(
            Group::Certificates,
            trust_bundle(ctx, policy, owner, bundle),
        )
        .await;
    for cm in rendered.config_maps {
        children.add(Group::Gateway, cm).await;
    }
    for d in rendered.deployments {
        children.add(Group::Gateway, d).await;
    }
    for s in rendered.services {
        children.add(Group::Gateway, s).await;
    }
    for np in rendered.network_policies {
        children.add(Group::Network, np).await;
    }
    children
}

/// The namespace's trust bundle, shared by every policy in it. Its one owner reference is the
/// namespace's oldest policy (`bundle_anchor`): the ConfigMap lives as long as that policy, and
/// when it goes, the next oldest takes the bundle over (the policy watch maps a deletion to the
/// new anchor).
fn trust_bundle(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    owner: &OwnerReference,
    bundle: &str,
) -> k8s_openapi::api::core::v1::ConfigMap {
    let ns = policy.namespace().unwrap_or_default();
    let mut cm = trust_bundle_configmap(&ns, bundle, None);
    let all = ctx.settings.policies.state();
    let anchor = ownership::bundle_anchor(&ns, all.iter().map(|p| p.as_ref()))
        .and_then(|p| p.controller_owner_ref(&()))
        .unwrap_or_else(|| owner.clone());
    cm.metadata.owner_references = Some(vec![OwnerReference {
        controller: Some(false),
        ..anchor
    }]);
    cm
}

/// Verdicts, status details, and the next look at the certificates.
fn conditions(
    policy: &ApiSecurityPolicy,
    accepted: Verdict,
    isolation_disabled: bool,
    done: Done<'_>,
    now: OffsetDateTime,
) -> Programmed {
    let Done {
        children,
        certificates,
        config_hash,
        gateway_service,
    } = done;
    let ns = policy.namespace().unwrap_or_default();
    let programmed = children.verdict(
        Group::Gateway,
        Reason::Programmed,
        format!("gateway Service {ns}/{gateway_service} configured (config {config_hash})"),
    );
    let gateway_status = (programmed.state == State::True).then_some(GatewayStatus {
        service: gateway_service,
        config_hash,
    });
    let leaves: Vec<&IdentityLeaf> = certificates.all().collect();
    let earliest_renewal = leaves.iter().map(|l| l.leaf.renew_at).min();
    let certificates_verdict = children.verdict(
        Group::Certificates,
        Reason::Issued,
        format!(
            "{} certificate(s) valid; next renewal at {}",
            leaves.len(),
            earliest_renewal.map(not_after_rfc3339).unwrap_or_default()
        ),
    );
    let mut cert_status = Vec::new();
    let mut expiries = Vec::new();
    for l in &leaves {
        cert_status.push(CertificateStatus {
            spiffe_id: l.leaf.spiffe_id.uri(),
            secret: l.secret.clone(),
            not_after: not_after_rfc3339(l.leaf.not_after),
        });
        expiries.push((l.kind, l.leaf.not_after.unix_timestamp()));
        if let Some(reason) = l.leaf.reissued {
            tracing::info!(
                policy.namespace = ns,
                policy.name = policy.name_any(),
                spiffe_id = l.leaf.spiffe_id.uri(),
                reason = reason.as_str(),
                "issued certificate"
            );
        }
    }
    let requeue = earliest_renewal.map_or(RESYNC, |at| RESYNC.min(certs::until(at, now)));
    let network = if isolation_disabled {
        Verdict::fail(
            Reason::IsolationDisabled,
            "spec.network.isolation is None: the API's pods accept traffic from anywhere",
        )
    } else {
        children.verdict(
            Group::Network,
            Reason::Applied,
            format!(
                "{} NetworkPolicy object(s) isolate the API's pods",
                children.count(Group::Network)
            ),
        )
    };
    Programmed {
        outcome: Outcome {
            accepted,
            programmed,
            certificates: certificates_verdict,
            network,
            contract: None,
            isolation_disabled,
        },
        gateway_status,
        cert_status,
        expiries,
        requeue,
        failures: children.failures(),
    }
}

fn not_after_rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn leaf_as_issued(leaf: &Leaf) -> IssuedLeaf {
    IssuedLeaf {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
        ca_bundle_pem: leaf.ca_pem.clone(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        spiffe_id: leaf.spiffe_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(scopes: &[&str]) -> ApiSecurityPolicy {
        let limits: Vec<_> = scopes
            .iter()
            .enumerate()
            .map(|(i, scope)| {
                serde_json::json!({
                    "name": format!("l{i}"), "scope": scope,
                    "limit": {"requests": 5, "per": "Minute"},
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "shop", "namespace": "test"},
            "spec": {
                "target": {"service": "shop", "port": 8080}, "exposure": "Internal",
                "rateLimits": limits,
            },
        }))
        .expect("a policy")
    }

    #[test]
    fn a_global_limit_without_redis_is_not_programmed_and_names_the_field() {
        let accepted = Verdict::ok(Reason::Accepted, "ok");
        let stop = global_rate_limit_refusal(&policy(&["Replica", "Global"]), false)
            .expect("refused without Redis");
        let outcome = stop.outcome(accepted, false, None);
        assert_eq!(outcome.programmed.state, State::False);
        assert_eq!(
            outcome.programmed.reason.as_str(),
            "GlobalRateLimitWithoutRedis"
        );
        assert!(
            outcome
                .programmed
                .message
                .starts_with("spec.rateLimits[1].scope is Global"),
            "{}",
            outcome.programmed.message
        );
        assert!(outcome.programmed.message.contains("--redis-url"));
        assert_eq!(outcome.ready().state, State::False);
    }

    #[test]
    fn redis_or_replica_limits_program_as_before() {
        assert!(global_rate_limit_refusal(&policy(&["Global"]), true).is_none());
        assert!(global_rate_limit_refusal(&policy(&["Replica"]), false).is_none());
        assert!(global_rate_limit_refusal(&policy(&[]), false).is_none());
    }
}
