//! A starter `ApiSecurityPolicy` from an OpenAPI document (`apiguard policy from-openapi`):
//! one authorization rule per operation, scopes and authentication methods from the
//! `security` requirements, `public: true` where `security: []`, and `spec.openapi` pointing
//! at a ConfigMap that holds the document, in `mode: Audit` for a safe rollout.
//!
//! Pure: the document's text in, the ConfigMap, the policy, notes (placeholders to fill in)
//! and warnings (operations skipped, requirements not fully expressed) out. The document is
//! compiled as a [`Contract`] first, so a policy is only made for a document the sensor loads.
//! See `docs/openapi.md`.

mod routes;
mod security;

use super::document::{self, ContractError, push_token, resolve};
use super::{Contract, ContractOptions};
use crate::api::policy::default_max_response_bytes;
use crate::api::*;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use routes::{Route, RouteRule};
use security::{Access, Requirement, Scheme, Schemes};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// What placeholders say: a value the user must fill in.
pub const PLACEHOLDER: &str = "REPLACE-ME";
/// The placeholder JWT issuer (`.invalid` never resolves).
const PLACEHOLDER_ISSUER: &str = "https://REPLACE-ME.invalid/";
/// The placeholder JWKS URI.
const PLACEHOLDER_JWKS: &str = "https://REPLACE-ME.invalid/.well-known/jwks.json";
/// The largest request body the starter allows (`requestValidation.maxBodyBytes`).
const MAX_BODY_BYTES: u64 = 1_048_576;
/// What a ConfigMap holds at most (the apiserver's 1 MiB object limit, less room for metadata).
const MAX_CONFIG_MAP_BYTES: usize = 1_000_000;
/// The longest policy name taken from the document's title.
const MAX_TITLE_NAME: usize = 40;
/// The HTTP methods an OpenAPI path item may declare, in the order rules list them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The names and target of the starter policy; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct StarterOptions {
    /// The policy's name (default: the document's `info.title` as a DNS label, else `api`).
    pub name: Option<String>,
    /// The namespace of the policy and the ConfigMap (default: none, so `kubectl apply -n`).
    pub namespace: Option<String>,
    /// The target Service (default: the policy's name).
    pub service: Option<String>,
    /// The target Service port, number or name (default 8080).
    pub port: Option<IntOrString>,
    /// The ConfigMap holding the document (default `<name>-openapi`).
    pub config_map: Option<String>,
}

/// Something the starter could not express as the document says, at a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The JSON pointer of the operation or requirement (`/paths/~1orders/get`).
    pub pointer: String,
    pub message: String,
}

impl Warning {
    pub(crate) fn at(pointer: &str, message: impl Into<String>) -> Self {
        Warning {
            pointer: pointer.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// The generated objects.
#[derive(Debug, Clone)]
pub struct Starter {
    /// The ConfigMap holding the document as given (key `openapi.yaml` or `openapi.json`).
    pub config_map: ConfigMap,
    /// The policy.
    pub policy: ApiSecurityPolicy,
    /// What to fill in or check before `mode: Enforce` (placeholders marked `REPLACE-ME`).
    pub notes: Vec<String>,
    /// Operations skipped and requirements not fully expressed.
    pub warnings: Vec<Warning>,
}

/// The starter objects for the OpenAPI document `text` (YAML or JSON). `Err` names the JSON
/// pointer of what makes the document unusable: it does not compile as a contract, has no
/// operation, or no operation the policy can express.
pub fn from_openapi(text: &str, options: &StarterOptions) -> Result<Starter, ContractError> {
    let doc = document::parse(text)?;
    Contract::compile(text, &ContractOptions::default())?;
    let root = &doc.root;
    let schemes = Schemes::read(root)?;
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let routes = operations(root, &schemes, &mut warnings, &mut notes)?;
    if routes.is_empty() {
        return Err(ContractError::at(
            "/paths",
            "no operation the policy can express (see the warnings)",
        ));
    }
    let rules = routes::rules(routes, &mut warnings);
    let name = options.name.clone().unwrap_or_else(|| title_name(root));
    let config_map_name = options
        .config_map
        .clone()
        .unwrap_or_else(|| format!("{name}-openapi"));
    let key = if text.trim_start().starts_with('{') {
        "openapi.json"
    } else {
        "openapi.yaml"
    };
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: options.namespace.clone(),
        ..ObjectMeta::default()
    };
    let config_map = ConfigMap {
        metadata: meta(&config_map_name),
        data: Some(BTreeMap::from([(key.to_string(), text.to_string())])),
        ..ConfigMap::default()
    };
    if text.len() > MAX_CONFIG_MAP_BYTES {
        notes.push(format!(
            "the document ({} bytes) is larger than a ConfigMap holds (1 MiB): trim it (descriptions, examples) before applying",
            text.len()
        ));
    }
    let (exposure, hosts) = exposure(root, &mut notes);
    let authentication = authentication(&name, &rules, &schemes, &mut notes);
    let spec = ApiSecurityPolicySpec {
        target: Target {
            service: options.service.clone().unwrap_or_else(|| name.clone()),
            port: options.port.clone().unwrap_or(IntOrString::Int(8080)),
        },
        exposure,
        hosts,
        mode: PolicyMode::Audit,
        tls: None,
        authorization: Some(Authorization {
            default_action: DefaultAction::Deny,
            rules: policy_rules(&rules, authentication.as_ref(), &mut notes),
        }),
        authentication,
        cors: None,
        rate_limits: Vec::new(),
        request_validation: Some(RequestValidation {
            max_body_bytes: Some(MAX_BODY_BYTES),
            ..RequestValidation::default()
        }),
        east_west: None,
        network: None,
        audit: None,
        discovery: None,
        runtime: None,
        openapi: Some(OpenApi {
            source: OpenApiSource {
                config_map_ref: Some(ConfigMapKeyReference {
                    name: config_map_name,
                    key: key.into(),
                }),
                inline: None,
            },
            requests: RequestContractMode::Enforce,
            responses: ResponseContractMode::Audit,
            unknown_properties: UnknownPropertiesMode::Reject,
            max_response_bytes: default_max_response_bytes(),
        }),
    };
    let mut policy = ApiSecurityPolicy::new(&name, spec);
    policy.metadata = meta(&name);
    Ok(Starter {
        config_map,
        policy,
        notes,
        warnings,
    })
}

/// The policy's default name: `info.title` as a DNS label (`Orders API` → `orders-api`).
fn title_name(root: &Value) -> String {
    let title = root
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut name = routes::rule_name(title);
    name.truncate(MAX_TITLE_NAME);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "api".into()
    } else {
        name.into()
    }
}

/// Every operation the policy can express, in document order, with its access; the others
/// are warnings.
fn operations(
    root: &Value,
    schemes: &Schemes,
    warnings: &mut Vec<Warning>,
    notes: &mut Vec<String>,
) -> Result<Vec<Route>, ContractError> {
    let paths = root.get("paths").and_then(Value::as_object);
    let Some(paths) = paths.filter(|p| !p.is_empty()) else {
        return Err(ContractError::at(
            "/paths",
            "no paths: the document declares no operation",
        ));
    };
    let default_security = root.get("security").map(|s| (s, "/security".to_string()));
    let mut out = Vec::new();
    let mut unsecured = 0;
    let mut found = 0;
    for (template, item) in paths {
        let mut pointer = "/paths".to_string();
        push_token(&mut pointer, template);
        let item = resolve(root, item);
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            found += 1;
            let at = format!("{pointer}/{method}");
            let path = match routes::policy_path(template) {
                Ok(path) => path,
                Err(why) => {
                    warnings.push(Warning::at(
                        &at,
                        format!(
                            "the path cannot be a policy route: {why}; the operation is skipped"
                        ),
                    ));
                    continue;
                }
            };
            let security = match op.get("security") {
                Some(s) => Some((s, format!("{at}/security"))),
                None => default_security.clone(),
            };
            unsecured += usize::from(security.is_none());
            let Some(access) = security::access(security, schemes, warnings)? else {
                continue;
            };
            let method = method.to_ascii_uppercase();
            let operation_id = op.get("operationId").and_then(Value::as_str);
            let name = match operation_id.map(routes::rule_name) {
                Some(name) if !name.is_empty() => name,
                _ => routes::rule_name(&format!("{method} {path}")),
            };
            out.push(Route {
                pointer: at,
                method,
                path,
                name,
                access,
            });
        }
    }
    if found == 0 {
        return Err(ContractError::at(
            "/paths",
            "no operations: no path declares get, put, post, delete, options, head, patch or trace",
        ));
    }
    if unsecured > 0 {
        notes.push(format!(
            "{unsecured} operation(s) declare no security (nor does the document): their rules require an authenticated caller; mark the ones that are really open `public: true`"
        ));
    }
    Ok(out)
}

/// Public with the `https://` hosts of `servers`, else Internal.
fn exposure(root: &Value, notes: &mut Vec<String>) -> (Exposure, Vec<String>) {
    let mut hosts: Vec<String> = Vec::new();
    let servers = root.get("servers").and_then(Value::as_array);
    for url in servers
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("url")?.as_str())
    {
        let Some(rest) = url.strip_prefix("https://") else {
            continue;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
        let dns = host.contains('.')
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !dns || hosts.contains(&host) || hosts.len() == 32 {
            continue;
        }
        if !path.trim_matches('/').is_empty() {
            notes.push(format!(
                "server {url} has the base path /{}: routes and the contract use the document's paths as written, so requests must reach the gateway without it",
                path.trim_matches('/')
            ));
        }
        hosts.push(host);
    }
    if hosts.is_empty() {
        notes.push(
            "exposure: Internal (the document names no https:// server); for Public or Partner, add spec.hosts".into(),
        );
        (Exposure::Internal, hosts)
    } else {
        (Exposure::Public, hosts)
    }
}

/// The JWT providers and API keys the rules use; a placeholder provider when a rule needs an
/// authenticated caller but no scheme says how.
fn authentication(
    name: &str,
    rules: &[RouteRule],
    schemes: &Schemes,
    notes: &mut Vec<String>,
) -> Option<Authentication> {
    let requirements: Vec<&Requirement> = rules
        .iter()
        .filter_map(|r| match &r.access {
            Access::Caller(req) => Some(req),
            Access::Public => None,
        })
        .collect();
    if requirements.is_empty() {
        return None;
    }
    let mut providers = Vec::new();
    let mut api_keys = None;
    for (scheme_name, scheme) in schemes.iter() {
        match scheme {
            Scheme::Jwt { issuer, .. }
                if requirements
                    .iter()
                    .any(|r| r.providers.contains(scheme_name)) =>
            {
                providers.push(jwt_provider(scheme_name, issuer.as_deref(), notes));
            }
            Scheme::ApiKey { header } if requirements.iter().any(|r| r.api_key) => {
                let secret = format!("{name}-api-keys");
                notes.push(format!(
                    "API keys (security scheme {scheme_name:?}): create the Secret {secret} (data: client id -> key)"
                ));
                api_keys = Some(ApiKeyAuthentication {
                    secret_ref: LocalObjectReference { name: secret },
                    header: header.clone(),
                });
            }
            _ => {}
        }
    }
    if providers.is_empty() && api_keys.is_none() {
        notes.push(format!(
            "JWT provider {PLACEHOLDER:?} is a placeholder: no security scheme says how callers authenticate"
        ));
        providers.push(placeholder_provider(PLACEHOLDER.to_string(), None));
    }
    Some(Authentication {
        required: true,
        jwt: (!providers.is_empty()).then_some(JwtAuthentication { providers }),
        api_keys,
        mtls: None,
    })
}

/// The JWT provider of a security scheme: the issuer from OpenID Connect discovery when the
/// document gives it, placeholders otherwise.
fn jwt_provider(scheme: &str, issuer: Option<&str>, notes: &mut Vec<String>) -> JwtProvider {
    let what = if issuer.is_some() {
        "jwks.uri (the jwks_uri of its OpenID configuration) and audiences are placeholders"
    } else {
        "issuer, jwks.uri and audiences are placeholders"
    };
    notes.push(format!(
        "JWT provider {scheme:?} (from the security scheme of that name): {what}"
    ));
    placeholder_provider(scheme.to_string(), issuer)
}

fn placeholder_provider(name: String, issuer: Option<&str>) -> JwtProvider {
    JwtProvider {
        name,
        issuer: issuer.unwrap_or(PLACEHOLDER_ISSUER).to_string(),
        audiences: vec![PLACEHOLDER.into()],
        jwks: Jwks {
            uri: Some(PLACEHOLDER_JWKS.into()),
            ..Jwks::default()
        },
        clock_skew: None,
        max_lifetime: None,
        forward_claims: Vec::new(),
    }
}

/// The policy's rules: public, or an authenticated caller with the requirement's providers
/// and scopes (and, when the policy also takes JWTs, a placeholder API-key client, without
/// which the gateway would ask an API-key route for a token).
fn policy_rules(
    rules: &[RouteRule],
    authentication: Option<&Authentication>,
    notes: &mut Vec<String>,
) -> Vec<AuthorizationRule> {
    let has_jwt = authentication.is_some_and(|a| a.jwt.is_some());
    let mut key_clients_placeholder = false;
    let out = rules
        .iter()
        .map(|rule| {
            let route = RouteMatch {
                methods: rule.methods.clone(),
                paths: rule.paths.clone(),
            };
            let Access::Caller(req) = &rule.access else {
                return AuthorizationRule {
                    name: rule.name.clone(),
                    route,
                    allow: None,
                    ownership: None,
                    providers: Vec::new(),
                    public: true,
                };
            };
            let api_key_clients = if req.api_key && has_jwt {
                key_clients_placeholder = true;
                vec![PLACEHOLDER.to_string()]
            } else {
                Vec::new()
            };
            let allow = Allow {
                scopes: req.scopes.clone(),
                api_key_clients,
                ..Allow::default()
            };
            AuthorizationRule {
                name: rule.name.clone(),
                route,
                allow: (allow != Allow::default()).then_some(allow),
                ownership: None,
                // At most 4 per rule: more is any configured provider.
                providers: if req.providers.len() <= 4 {
                    req.providers.clone()
                } else {
                    Vec::new()
                },
                public: false,
            }
        })
        .collect();
    if key_clients_placeholder {
        notes.push(format!(
            "allow.apiKeyClients {PLACEHOLDER:?}: list the API-key client ids (keys of the Secret) each API-key route admits"
        ));
    }
    out
}

impl Starter {
    /// The ConfigMap and the policy as two YAML documents (`kubectl apply -f -`), with the notes
    /// as comments above the policy.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::ser::Error> {
        let mut out = String::new();
        out.push_str("# The OpenAPI document; spec.openapi.source.configMapRef of the policy below names it.\n");
        // In the order people read a manifest (k8s-openapi writes `data` before `metadata`).
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Ordered<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a ObjectMeta,
            data: &'a Option<BTreeMap<String, String>>,
        }
        out.push_str(&serde_saphyr::to_string(&Ordered {
            api_version: "v1",
            kind: "ConfigMap",
            metadata: &self.config_map.metadata,
            data: &self.config_map.data,
        })?);
        out.push_str("---\n");
        out.push_str(
            "# A starter ApiSecurityPolicy made by `apiguard policy from-openapi`: review it.\n\
             # mode: Audit lets every request through and logs what would be refused (authorization\n\
             # and the OpenAPI contract); switch to Enforce once the logs show only what you expect.\n",
        );
        if !self.notes.is_empty() {
            out.push_str("# Before mode: Enforce:\n");
            for note in &self.notes {
                out.push_str(&format!("# - {note}\n"));
            }
        }
        out.push_str(&serde_saphyr::to_string(&self.policy)?);
        Ok(out)
    }
}
