//! The one list of the kinds the engine reviews: for each, the reviewer [`super::review`]
//! dispatches to, the resources the webhook registers for it, and the fields each rule reads
//! (the source of the coverage table in `docs/rules.md`, which a test keeps verbatim).
//!
//! Adding a kind is one entry here (and its webhook resource in the chart, which a chart test
//! checks against [`KINDS`]).

use super::{
    ClusterView, Finding, ObjectRef, RuleId, authn, bypass, cors, ingress_nginx, istio, jwt,
    policy, tls, workloads,
};
use serde_json::Value;

/// A reviewer: the object, its reference, the cluster view, whether the route is marked
/// `apiguard.dev/public`, and where findings go.
pub(crate) type Reviewer = fn(&Value, &ObjectRef, &dyn ClusterView, bool, &mut Vec<Finding>);

/// What a rule reads of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub rules: &'static [RuleId],
    pub fields: &'static str,
}

/// One reviewed kind.
#[derive(Clone, Copy)]
pub struct Coverage {
    /// API groups (`""` for the core group); any version.
    pub groups: &'static [&'static str],
    pub kinds: &'static [&'static str],
    /// `(group, resource)` pairs the webhook registers (empty: the apiserver no longer serves
    /// the kind, only old manifests in a repository have it).
    pub webhook: &'static [(&'static str, &'static str)],
    pub reads: &'static [Reads],
    pub review: Reviewer,
    /// Text without which a document of this kind cannot yield a finding (a key the reviewer
    /// needs), so `lint` may load such documents without building their whole tree.
    pub needs_text: Option<&'static str>,
}

impl Coverage {
    fn covers(&self, group: &str, kind: &str) -> bool {
        self.groups.contains(&group) && self.kinds.contains(&kind)
    }
}

use RuleId::*;

/// Every kind the engine reviews, in the order the docs list them.
pub const KINDS: &[Coverage] = &[
    Coverage {
        groups: &["apiguard.dev"],
        kinds: &["ApiSecurityPolicy"],
        webhook: &[("apiguard.dev", "apisecuritypolicies")],
        reads: &[
            Reads {
                rules: &[
                    Apg001, Apg002, Apg003, Apg005, Apg006, Apg007, Apg009, Apg010, Apg014,
                ],
                fields: "`spec` (the invariants the CRD also enforces with CEL: `cors`, `authentication`, `authorization`, `tls`, `hosts`, `exposure`, `rateLimits`, `claimsToHeaders`, `openapi.source`, path templates)",
            },
            Reads {
                rules: &[Apg007],
                fields: "`spec.authentication.jwt.providers[].audiences` (missing: warn)",
            },
            Reads {
                rules: &[Apg008, Apg012, Apg013],
                fields: "`spec.authorization.rules[].match`, `spec.rateLimits[]`, `spec.network.isolation`, `spec.requestValidation.maxBodyBytes`",
            },
            Reads {
                rules: &[Apg004, Apg010],
                fields: "`spec.target.service` and the gateway Service `<name>-apiguard`: their `spec.type` in the same namespace",
            },
        ],
        review: |o, r, v, _, out| policy::review(o, r, v, out),
        needs_text: None,
    },
    Coverage {
        groups: &["networking.k8s.io", "extensions"],
        kinds: &["Ingress"],
        webhook: &[("networking.k8s.io", "ingresses")],
        reads: &[
            Reads {
                rules: &[Apg001, Apg002],
                fields: "annotations `nginx.ingress.kubernetes.io/enable-cors`, `cors-allow-origin`, `cors-allow-credentials`",
            },
            Reads {
                rules: &[Apg003, Apg004, Apg010],
                fields: "`spec.rules[].http.paths[].backend` (`service.name`, v1beta1 `serviceName`, `resource`), `spec.defaultBackend`, v1beta1 `spec.backend`; annotations `nginx.ingress.kubernetes.io/auth-url`, `auth-type`, `auth-tls-verify-client`, `apiguard.dev/public`",
            },
            Reads {
                rules: &[Apg005],
                fields: "`spec.tls[].hosts`, `spec.rules[].host`, `spec.defaultBackend` (v1beta1 `spec.backend`); annotations `nginx.ingress.kubernetes.io/ssl-redirect`, `networking.gke.io/managed-certificates`, `ingress.gcp.kubernetes.io/pre-shared-cert`, `kubernetes.io/ingress.allow-http`, `networking.gke.io/v1beta1.FrontendConfig` (and that FrontendConfig's `spec.redirectToHttps.enabled`)",
            },
            Reads {
                rules: &[Apg006],
                fields: "annotation `nginx.ingress.kubernetes.io/proxy-ssl-protocols`",
            },
            Reads {
                rules: &[Apg011],
                fields: "annotations `nginx.ingress.kubernetes.io/configuration-snippet`, `server-snippet`, `auth-snippet`, `stream-snippet`, `modsecurity-snippet`",
            },
        ],
        review: ingress_nginx::review,
        needs_text: None,
    },
    Coverage {
        groups: &[""],
        kinds: &["Service"],
        webhook: &[("", "services")],
        reads: &[Reads {
            rules: &[Apg004, Apg010],
            fields: "`spec.type` (LoadBalancer, NodePort), `spec.selector` against the policies' target Services",
        }],
        review: |o, r, v, _, out| bypass::review_service(o, r, v, out),
        needs_text: None,
    },
    Coverage {
        groups: &[""],
        kinds: &["ConfigMap"],
        webhook: &[("", "configmaps")],
        reads: &[Reads {
            rules: &[Apg006],
            fields: "`data[ssl-protocols]` of the ingress-nginx controller's ConfigMap (labels `app.kubernetes.io/name`/`part-of` or name containing `ingress-nginx`/`nginx-ingress`)",
        }],
        review: |o, r, _, _, out| ingress_nginx::review_controller_config(o, r, out),
        needs_text: Some("ssl-protocols"),
    },
    Coverage {
        groups: &["gateway.networking.k8s.io"],
        kinds: &["Gateway"],
        webhook: &[("gateway.networking.k8s.io", "gateways")],
        reads: &[Reads {
            rules: &[Apg005],
            fields: "`spec.listeners[].protocol`",
        }],
        review: |o, r, _, _, out| tls::review_gateway(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["gateway.networking.k8s.io"],
        kinds: &["HTTPRoute", "GRPCRoute"],
        webhook: &[
            ("gateway.networking.k8s.io", "httproutes"),
            ("gateway.networking.k8s.io", "grpcroutes"),
        ],
        reads: &[
            Reads {
                rules: &[Apg003, Apg004, Apg010],
                fields: "`spec.parentRefs[]` (`kind`, `name`, `namespace`, `sectionName`), `spec.rules[].name`, `spec.rules[].backendRefs[]` (`group`, `kind`, `name`, `namespace`), `metadata.labels`, annotation `apiguard.dev/public`; the Envoy Gateway SecurityPolicies (`targetRef`, `targetRefs`, `targetSelectors`, `jwt`, `jwt.optional`, `apiKeyAuth`, `basicAuth`, `oidc`, `extAuth`) and ClientTrafficPolicies (`tls.clientValidation`, `optional`) attached to the route or its parent Gateways",
            },
            Reads {
                rules: &[Apg001, Apg002],
                fields: "HTTPRoute `spec.rules[].filters[]` and `spec.rules[].backendRefs[].filters[]` of `type: CORS`: `cors.allowOrigins`, `cors.allowCredentials`",
            },
        ],
        review: |o, r, v, public, out| {
            authn::review_route(o, r, v, public, out);
            cors::review_route_cors_filters(o, r, out);
        },
        needs_text: None,
    },
    Coverage {
        groups: &["gateway.envoyproxy.io"],
        kinds: &["SecurityPolicy"],
        webhook: &[("gateway.envoyproxy.io", "securitypolicies")],
        reads: &[
            Reads {
                rules: &[Apg001, Apg002],
                fields: "`spec.cors.allowOrigins`, `spec.cors.allowCredentials`",
            },
            Reads {
                rules: &[Apg007],
                fields: "`spec.jwt.providers[].issuer` (`http://`), `spec.jwt.providers[].remoteJWKS.uri`, `spec.oidc.provider.issuer`, `.authorizationEndpoint`, `.tokenEndpoint`",
            },
        ],
        review: |o, r, _, _, out| {
            cors::review_envoy_security_policy(o, r, out);
            jwt::review_envoy_security_policy(o, r, out);
        },
        needs_text: None,
    },
    Coverage {
        groups: &["gateway.envoyproxy.io"],
        kinds: &["ClientTrafficPolicy"],
        webhook: &[("gateway.envoyproxy.io", "clienttrafficpolicies")],
        reads: &[Reads {
            rules: &[Apg006],
            fields: "`spec.tls.minVersion`",
        }],
        review: |o, r, _, _, out| tls::review_client_traffic_policy(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["networking.istio.io"],
        kinds: &["VirtualService"],
        webhook: &[("networking.istio.io", "virtualservices")],
        reads: &[Reads {
            rules: &[Apg001, Apg002],
            fields: "`spec.http[].corsPolicy.allowOrigins[]` (`exact`, `prefix`, `regex`), `allowOrigin[]`, `allowCredentials`",
        }],
        review: |o, r, _, _, out| cors::review_istio_virtual_service(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["networking.istio.io"],
        kinds: &["Gateway"],
        webhook: &[("networking.istio.io", "gateways")],
        reads: &[
            Reads {
                rules: &[Apg005],
                fields: "`spec.servers[].port.protocol` (HTTP, HTTP2, GRPC, GRPC-WEB), `spec.servers[].tls.httpsRedirect`",
            },
            Reads {
                rules: &[Apg006],
                fields: "`spec.servers[].tls.minProtocolVersion`",
            },
        ],
        review: |o, r, _, _, out| istio::review_gateway(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["security.istio.io"],
        kinds: &["RequestAuthentication"],
        webhook: &[("security.istio.io", "requestauthentications")],
        reads: &[Reads {
            rules: &[Apg007],
            fields: "`spec.jwtRules[].issuer` (`http://`), `spec.jwtRules[].jwksUri`",
        }],
        review: |o, r, _, _, out| jwt::review_request_authentication(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &[""],
        kinds: &["Pod"],
        webhook: &[("", "pods")],
        reads: &[WORKLOAD_ENV],
        review: |o, r, _, _, out| workloads::review(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["apps"],
        kinds: &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"],
        webhook: &[
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
        ],
        reads: &[WORKLOAD_ENV],
        review: |o, r, _, _, out| workloads::review(o, r, out),
        needs_text: None,
    },
    Coverage {
        groups: &["batch"],
        kinds: &["Job", "CronJob"],
        webhook: &[("batch", "jobs"), ("batch", "cronjobs")],
        reads: &[WORKLOAD_ENV],
        review: |o, r, _, _, out| workloads::review(o, r, out),
        needs_text: None,
    },
];

const WORKLOAD_ENV: Reads = Reads {
    rules: &[Apg001],
    fields: "the pod template's `containers[].env[]`, `initContainers[].env[]` and `ephemeralContainers[].env[]` (`name` like `CORS_ALLOWED_ORIGINS`, `value`)",
};

/// The entry for an object's group and kind, if the engine reviews it.
pub fn find(group: &str, kind: &str) -> Option<&'static Coverage> {
    KINDS.iter().find(|c| c.covers(group, kind))
}

/// Whether any rule reads a document of this group and kind with this text, either to review
/// it or while reviewing another object (a [`super::Related`] kind, a Service or a policy in
/// the view).
pub(crate) fn is_read(group: &str, kind: &str, text: &str) -> bool {
    find(group, kind).is_some_and(|c| c.needs_text.is_none_or(|t| text.contains(t)))
        || super::Related::ALL
            .iter()
            .any(|r| r.group_kind() == (group, kind))
}

/// The coverage as a Markdown table (one row per kind and rule group).
pub fn markdown_table() -> String {
    let mut out = String::from("| kind (API group) | rules | fields read |\n|---|---|---|\n");
    for c in KINDS {
        let groups: Vec<&str> = c
            .groups
            .iter()
            .map(|g| if g.is_empty() { "core" } else { g })
            .collect();
        let kind = format!("{} ({})", c.kinds.join(", "), groups.join(", "));
        for r in c.reads {
            let rules: Vec<&str> = r.rules.iter().map(|r| r.id()).collect();
            out.push_str(&format!(
                "| {kind} | {} | {} |\n",
                rules.join(", "),
                r.fields
            ));
        }
    }
    out
}
