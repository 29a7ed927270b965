//! `security` requirements → who may call an operation: the document's security schemes
//! mapped to the policy's authentication methods (OAuth2, OpenID Connect and HTTP bearer to a
//! JWT provider, a header API key to `apiKeys`), and each operation's requirement to public,
//! or an authenticated caller with JWT providers, scopes and/or an API key.

use super::Warning;
use crate::contract::document::{ContractError, push_token, resolve};
use serde_json::{Map, Value};

/// A security scheme of `components/securitySchemes`, as the policy can express it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scheme {
    /// A JWT provider of `authentication.jwt`. `scopes`: the requirement's list is OAuth
    /// scopes (oauth2, openIdConnect), not roles (http bearer).
    Jwt {
        issuer: Option<String>,
        scopes: bool,
    },
    /// `authentication.apiKeys` with this header.
    ApiKey { header: String },
    /// Not expressible, and why.
    Unsupported(String),
}

/// The document's security schemes, by name, in document order.
#[derive(Debug, Default)]
pub(super) struct Schemes(Vec<(String, Scheme)>);

impl Schemes {
    /// Reads `components/securitySchemes` (`$ref`s followed). The first header API key scheme
    /// is the policy's `apiKeys`; other API key headers are unsupported (one header per policy).
    pub(super) fn read(root: &Value) -> Result<Schemes, ContractError> {
        let Some(map) = root.pointer("/components/securitySchemes") else {
            return Ok(Schemes::default());
        };
        let Some(map) = map.as_object() else {
            return Err(ContractError::at(
                "/components/securitySchemes",
                "must be an object",
            ));
        };
        let mut out: Vec<(String, Scheme)> = Vec::new();
        for (name, scheme) in map {
            let mut at = "/components/securitySchemes".to_string();
            push_token(&mut at, name);
            let scheme = resolve(root, scheme);
            let Some(scheme) = scheme.as_object() else {
                return Err(ContractError::at(&at, "a security scheme is an object"));
            };
            let mut mapped = scheme_of(scheme);
            if matches!(mapped, Scheme::Jwt { .. }) && name.len() > 63 {
                // The scheme's name is the JWT provider's name.
                mapped = Scheme::Unsupported(
                    "a JWT scheme whose name is longer than 63 characters".into(),
                );
            }
            if let Scheme::ApiKey { header } = &mapped
                && let Some(first) = out.iter().find_map(|(_, s)| match s {
                    Scheme::ApiKey { header } => Some(header),
                    _ => None,
                })
                && first != header
            {
                mapped = Scheme::Unsupported(format!(
                    "a second API key header ({header}); the policy takes API keys in one header ({first})"
                ));
            }
            out.push((name.clone(), mapped));
        }
        Ok(Schemes(out))
    }

    pub(super) fn get(&self, name: &str) -> Option<&Scheme> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// The schemes, in document order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(String, Scheme)> {
        self.0.iter()
    }
}

fn scheme_of(scheme: &Map<String, Value>) -> Scheme {
    let text = |key: &str| scheme.get(key).and_then(Value::as_str).unwrap_or("");
    match text("type") {
        "oauth2" => Scheme::Jwt {
            issuer: None,
            scopes: true,
        },
        "openIdConnect" => Scheme::Jwt {
            issuer: oidc_issuer(text("openIdConnectUrl")),
            scopes: true,
        },
        "http" if text("scheme").eq_ignore_ascii_case("bearer") => Scheme::Jwt {
            issuer: None,
            scopes: false,
        },
        "http" => Scheme::Unsupported(format!(
            "HTTP {} authentication (the gateway takes JWTs, API keys and client certificates)",
            text("scheme")
        )),
        "apiKey" if text("in") == "header" => {
            let header = text("name").to_ascii_lowercase();
            let valid = !header.is_empty()
                && header.len() <= 128
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if valid {
                Scheme::ApiKey { header }
            } else {
                Scheme::Unsupported(format!("an API key in the header {header:?}"))
            }
        }
        "apiKey" => Scheme::Unsupported(format!(
            "an API key in the {} (the gateway takes API keys in a header)",
            text("in")
        )),
        "mutualTLS" => Scheme::Unsupported(
            "mutualTLS (configure authentication.mtls and tls.clientCertificate by hand)".into(),
        ),
        other => Scheme::Unsupported(format!("a security scheme of type {other:?}")),
    }
}

/// The issuer an OpenID Connect discovery URL names:
/// `https://idp.example/realms/x/.well-known/openid-configuration` → `https://idp.example/realms/x`.
fn oidc_issuer(url: &str) -> Option<String> {
    let issuer = url.strip_suffix("/.well-known/openid-configuration")?;
    let valid = issuer.starts_with("https://")
        && issuer.len() > "https://".len()
        && issuer.len() <= 2048
        && !issuer.contains(['{', '}', ' ']);
    valid.then(|| issuer.to_string())
}

/// Who may call one operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Access {
    /// `security: []`, or an empty alternative `{}`: anyone.
    Public,
    /// An authenticated caller meeting the requirement.
    Caller(Requirement),
}

/// One security requirement object, as the policy expresses it: all of it is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct Requirement {
    /// JWT providers (security scheme names), sorted.
    pub(super) providers: Vec<String>,
    /// OAuth scopes the token must carry, sorted.
    pub(super) scopes: Vec<String>,
    /// An API key is required.
    pub(super) api_key: bool,
}

/// The operation's access from its `security` (at `pointer`), or the document's default when
/// it has none. `None` with a warning when no alternative can be expressed.
pub(super) fn access(
    security: Option<(&Value, String)>,
    schemes: &Schemes,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Access>, ContractError> {
    let Some((security, pointer)) = security else {
        // No security anywhere: an authenticated caller (the safe reading), noted by the caller.
        return Ok(Some(Access::Caller(Requirement::default())));
    };
    let Some(alternatives) = security.as_array() else {
        return Err(ContractError::at(
            &pointer,
            "security is a list of requirements",
        ));
    };
    if alternatives.is_empty()
        || alternatives
            .iter()
            .any(|a| a.as_object().is_some_and(Map::is_empty))
    {
        return Ok(Some(Access::Public));
    }
    let mut chosen = None;
    let mut reasons = Vec::new();
    for (i, alternative) in alternatives.iter().enumerate() {
        let at = format!("{pointer}/{i}");
        match requirement(alternative, &at, schemes, warnings)? {
            Ok(r) => {
                chosen = Some((i, r));
                break;
            }
            Err(reason) => reasons.push(format!("{at}: {reason}")),
        }
    }
    let Some((index, requirement)) = chosen else {
        warnings.push(Warning::at(
            &pointer,
            format!(
                "no security requirement can be expressed ({}); the operation is skipped",
                reasons.join("; ")
            ),
        ));
        return Ok(None);
    };
    if alternatives.len() > 1 {
        warnings.push(Warning::at(
            &pointer,
            format!(
                "{} alternative security requirements: a policy rule takes one, so the rule requires {pointer}/{index} only",
                alternatives.len()
            ),
        ));
    }
    Ok(Some(Access::Caller(requirement)))
}

/// One requirement object: `Ok(Err(reason))` when a scheme it names cannot be expressed.
fn requirement(
    alternative: &Value,
    pointer: &str,
    schemes: &Schemes,
    warnings: &mut Vec<Warning>,
) -> Result<Result<Requirement, String>, ContractError> {
    let Some(map) = alternative.as_object() else {
        return Err(ContractError::at(
            pointer,
            "a security requirement is an object",
        ));
    };
    let mut out = Requirement::default();
    for (name, list) in map {
        let mut at = pointer.to_string();
        push_token(&mut at, name);
        let Some(scheme) = schemes.get(name) else {
            return Err(ContractError::at(
                &at,
                format!("no security scheme {name:?} in /components/securitySchemes"),
            ));
        };
        let Some(list) = list.as_array() else {
            return Err(ContractError::at(&at, "a list of scopes (or roles)"));
        };
        let mut names = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(s) => names.push(s.to_string()),
                None => {
                    return Err(ContractError::at(
                        &format!("{at}/{i}"),
                        "a scope is a string",
                    ));
                }
            }
        }
        match scheme {
            Scheme::Jwt { scopes, .. } => {
                out.providers.push(name.clone());
                if *scopes {
                    out.scopes.extend(names);
                } else if !names.is_empty() {
                    warnings.push(Warning::at(
                        &at,
                        format!(
                            "roles {names:?} of an HTTP bearer scheme are not mapped; add allow.claims to the rule by hand"
                        ),
                    ));
                }
            }
            Scheme::ApiKey { .. } => out.api_key = true,
            Scheme::Unsupported(why) => return Ok(Err(format!("{name:?} is {why}"))),
        }
    }
    out.providers.sort();
    out.providers.dedup();
    out.scopes.sort();
    out.scopes.dedup();
    if out.scopes.len() > 32 || out.scopes.iter().any(|s| s.len() > 256) {
        return Ok(Err(
            "more than 32 scopes, or a scope longer than 256 characters".into(),
        ));
    }
    Ok(Ok(out))
}
