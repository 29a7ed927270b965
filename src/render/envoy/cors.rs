//! The virtual host's CORS policy.

use super::Ctx;
use super::paths::regex_escape;
use super::types::*;
use crate::api::Cors;
use crate::api::duration::parse_duration;
use crate::render::RenderError;

pub(super) fn cors_policy(ctx: &Ctx<'_>, cors: &Cors) -> Result<CorsPolicy, RenderError> {
    let mut origins = Vec::new();
    for (i, o) in cors.allow_origins.iter().enumerate() {
        if matches!(o.as_str(), "*" | ".*" | "https://*" | "http://*") {
            return Err(ctx.invalid(
                format!("spec.cors.allowOrigins[{i}]"),
                "a match-all origin is rejected (APG001)",
            ));
        }
        match o.split_once("://*.") {
            Some((scheme, domain)) => origins.push(StringMatcher::regex(format!(
                "^{}://[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.{}$",
                regex_escape(scheme),
                regex_escape(domain)
            ))),
            None => origins.push(StringMatcher::exact(o)),
        }
    }
    let max_age = match &cors.max_age {
        None => String::new(),
        Some(m) => parse_duration(m)
            .map(|d| d.as_secs().to_string())
            .map_err(|e| ctx.invalid("spec.cors.maxAge", e.to_string()))?,
    };
    Ok(CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age,
        allow_credentials: cors.allow_credentials,
    })
}
