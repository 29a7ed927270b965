//! NetworkPolicies around the target's pods (docs/architecture.md): ingress only from the
//! gateway pods and `eastWest.allowedCallers` on the target port; egress denied to cloud
//! metadata addresses; default-deny egress except DNS and `network.egressAllowCIDRs`.

use super::objects::{gateway_pod_labels, meta};
use super::{RenderError, policy_ref};
use crate::api::{ApiSecurityPolicy, Isolation, Network};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Cloud metadata endpoints (SSRF targets).
pub(crate) const METADATA_V4: &str = "169.254.169.254/32";
pub(crate) const METADATA_V6: &str = "fd00:ec2::254/128";

/// The NetworkPolicy for the target's pods, or None when the policy asks for no isolation
/// and no egress rules.
pub(crate) fn target_network_policy(
    policy: &ApiSecurityPolicy,
    service: &Service,
) -> Result<Option<NetworkPolicy>, RenderError> {
    let selector = target_pod_selector(policy, service)?;
    let target_port = target_pod_port(policy, service)?;
    let network = policy.spec.network();
    let ingress = (network.isolation == Isolation::Strict)
        .then(|| vec![ingress_from_gateway_and_callers(policy, target_port)]);
    let egress = egress_rules(policy, &network)?;
    let mut types = Vec::new();
    if ingress.is_some() {
        types.push("Ingress".to_string());
    }
    if egress.is_some() {
        types.push("Egress".to_string());
    }
    if types.is_empty() {
        return Ok(None);
    }
    Ok(Some(NetworkPolicy {
        metadata: meta(policy, policy.target_network_policy_name(), "network"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    }))
}

fn invalid(policy: &ApiSecurityPolicy, field: &str, message: String) -> RenderError {
    RenderError::Invalid {
        policy: policy_ref(policy),
        field: field.to_string(),
        message,
    }
}

/// The target Service's pod selector (the target's pods); an error when it has none.
fn target_pod_selector(
    policy: &ApiSecurityPolicy,
    service: &Service,
) -> Result<BTreeMap<String, String>, RenderError> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(
                policy,
                "spec.target.service",
                format!(
                    "Service {} has no pod selector; its pods cannot be isolated",
                    policy.spec.target.service
                ),
            )
        })
}

/// The pods' port behind the Service port `spec.target.port` (its `targetPort`, else the port).
fn target_pod_port(
    policy: &ApiSecurityPolicy,
    service: &Service,
) -> Result<IntOrString, RenderError> {
    let spec = &policy.spec;
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| {
            ports.iter().find(|p| match &spec.target.port {
                IntOrString::Int(n) => p.port == *n,
                IntOrString::String(name) => p.name.as_deref() == Some(name),
            })
        })
        .map(|p| p.target_port.clone().unwrap_or(IntOrString::Int(p.port)))
        .ok_or_else(|| {
            invalid(
                policy,
                "spec.target.port",
                format!("Service {} has no such port", spec.target.service),
            )
        })
}

/// Ingress to the target port from the gateway pods and from the namespaces of
/// `eastWest.allowedCallers` (sorted, deduplicated).
fn ingress_from_gateway_and_callers(
    policy: &ApiSecurityPolicy,
    target_port: IntOrString,
) -> NetworkPolicyIngressRule {
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(gateway_pod_labels(policy)),
            ..Default::default()
        }),
        ..Default::default()
    }];
    from.extend(caller_namespaces(policy).into_iter().map(namespace_peer));
    NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(target_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The namespaces of `eastWest.allowedCallers` (the policy's own when a caller names none),
/// sorted and deduplicated. NetworkPolicies cannot select by service account: callers are
/// admitted by namespace here, and the service account is checked by east-west mTLS (SPIFFE ID).
fn caller_namespaces(policy: &ApiSecurityPolicy) -> Vec<String> {
    let ns = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut namespaces: Vec<String> = policy
        .spec
        .east_west()
        .allowed_callers
        .iter()
        .map(|c| c.namespace.clone().unwrap_or_else(|| ns.clone()))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// Every pod of namespace `ns`.
fn namespace_peer(ns: String) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns,
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Egress: only `network.egressAllowCIDRs` and DNS when CIDRs are listed; else everything but
/// the metadata endpoints when `denyMetadataEgress`; else None (egress not restricted).
fn egress_rules(
    policy: &ApiSecurityPolicy,
    network: &Network,
) -> Result<Option<Vec<NetworkPolicyEgressRule>>, RenderError> {
    if !network.egress_allow_cidrs.is_empty() {
        Ok(Some(vec![
            allowed_cidrs_egress(policy, network)?,
            dns_egress(),
        ]))
    } else if network.deny_metadata_egress {
        Ok(Some(vec![all_but_metadata_egress()]))
    } else {
        Ok(None)
    }
}

/// Egress to each of `network.egressAllowCIDRs`, minus the metadata endpoint it contains when
/// `denyMetadataEgress`.
fn allowed_cidrs_egress(
    policy: &ApiSecurityPolicy,
    network: &Network,
) -> Result<NetworkPolicyEgressRule, RenderError> {
    let except = |cidr: &str| -> Option<Vec<String>> {
        if !network.deny_metadata_egress {
            return None;
        }
        let v6 = cidr.contains(':');
        let m = if v6 { METADATA_V6 } else { METADATA_V4 };
        Some(vec![m.to_string()]).filter(|_| cidr_contains(cidr, m))
    };
    let mut to = Vec::new();
    for (i, c) in network.egress_allow_cidrs.iter().enumerate() {
        if !c.contains('/') {
            return Err(invalid(
                policy,
                &format!("spec.network.egressAllowCIDRs[{i}]"),
                format!("{c:?} is not a CIDR"),
            ));
        }
        to.push(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: c.clone(),
                except: except(c),
            }),
            ..Default::default()
        });
    }
    Ok(NetworkPolicyEgressRule {
        to: Some(to),
        ports: None,
    })
}

/// DNS (port 53, UDP and TCP) to any namespace.
fn dns_egress() -> NetworkPolicyEgressRule {
    let dns_ports = ["UDP", "TCP"]
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(53)),
            protocol: Some(p.to_string()),
            ..Default::default()
        })
        .collect();
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        }]),
        ports: Some(dns_ports),
    }
}

/// Egress anywhere (IPv4 and IPv6) except the cloud metadata endpoints.
fn all_but_metadata_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: Some(vec![METADATA_V4.into()]),
                }),
                ..Default::default()
            },
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "::/0".into(),
                    except: Some(vec![METADATA_V6.into()]),
                }),
                ..Default::default()
            },
        ]),
        ports: None,
    }
}

/// Whether `outer` (CIDR) contains `inner` (CIDR); false when either does not parse.
fn cidr_contains(outer: &str, inner: &str) -> bool {
    fn parse(c: &str) -> Option<(u128, u32, bool)> {
        let (a, l) = c.split_once('/')?;
        let ip: std::net::IpAddr = a.parse().ok()?;
        let len: u32 = l.parse().ok()?;
        Some(match ip {
            std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, len, false),
            std::net::IpAddr::V6(v6) => (u128::from(v6), len, true),
        })
    }
    let (Some((o, ol, o6)), Some((i, il, i6))) = (parse(outer), parse(inner)) else {
        return false;
    };
    if o6 != i6 || ol > il || ol > 128 {
        return false;
    }
    let mask = if ol == 0 { 0 } else { u128::MAX << (128 - ol) };
    o & mask == i & mask
}

#[cfg(test)]
mod tests {
    use super::cidr_contains;

    #[test]
    fn cidr_containment() {
        assert!(cidr_contains("169.254.0.0/16", "169.254.169.254/32"));
        assert!(cidr_contains("0.0.0.0/0", "169.254.169.254/32"));
        assert!(!cidr_contains("10.20.0.0/16", "169.254.169.254/32"));
        assert!(cidr_contains("fd00::/8", "fd00:ec2::254/128"));
        assert!(!cidr_contains("10.0.0.0/8", "fd00:ec2::254/128"));
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::render::tests::example;

    #[test]
    fn ingress_from_gateway_and_callers_egress_allowlist_with_dns() {
        let f = example("internal-east-west.yaml");
        let np = target_network_policy(&f.policy, &f.service)
            .expect("render")
            .expect("a policy");
        let spec = np.spec.expect("spec");
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".into(), "Egress".into()])
        );
        let ingress = &spec.ingress.expect("ingress")[0];
        let from = ingress.from.as_ref().expect("from");
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(gateway_pod_labels(&f.policy)),
            "gateway pods admitted"
        );
        assert_eq!(
            from[1]
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .and_then(|l| l.get("kubernetes.io/metadata.name").cloned()),
            Some("shop".to_string()),
            "allowed caller namespace admitted"
        );
        assert_eq!(
            ingress.ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::String("http".into())),
            "only the target port"
        );
        let egress = spec.egress.expect("egress");
        let allow = egress[0].to.as_ref().expect("to")[0]
            .ip_block
            .clone()
            .expect("ip block");
        assert_eq!(allow.cidr, "10.20.0.0/16");
        assert_eq!(
            allow.except, None,
            "metadata address is outside the allowed range"
        );
        assert_eq!(
            egress[1].ports.as_ref().expect("dns ports").len(),
            2,
            "DNS over UDP and TCP"
        );
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(BTreeMap::from([(
                "app".to_string(),
                "inventory".to_string()
            )]))
        );
    }

    #[test]
    fn metadata_egress_denied_by_default() {
        let f = example("public-consumer-api.yaml");
        let np = target_network_policy(&f.policy, &f.service)
            .expect("render")
            .expect("a policy");
        let egress = np.spec.expect("spec").egress.expect("egress");
        let blocks: Vec<_> = egress[0]
            .to
            .as_ref()
            .expect("to")
            .iter()
            .filter_map(|p| p.ip_block.clone())
            .collect();
        assert_eq!(blocks[0].except, Some(vec![METADATA_V4.to_string()]));
        assert_eq!(blocks[1].except, Some(vec![METADATA_V6.to_string()]));
    }
}
