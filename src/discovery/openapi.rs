//! An OpenAPI 3.1 skeleton of what was observed: one operation per endpoint, its path
//! parameters typed as inferred, the status classes seen as responses, and what discovery
//! knows in `x-apiguard-discovery`. A starting point for a contract (`apiguard policy
//! from-openapi` reads it), not a contract: no schemas, no security requirements.

use super::inventory::Report;
use serde_json::{Map, Value, json};

/// The skeleton as a JSON value (print it as YAML or JSON).
pub fn skeleton(report: &Report) -> Value {
    let title = report
        .policy
        .as_deref()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .unwrap_or_else(|| "discovered-api".into());
    let mut paths = Map::new();
    for e in &report.endpoints {
        let mut op = Map::new();
        op.insert(
            "summary".into(),
            Value::String(format!("observed {} requests", e.requests)),
        );
        if e.deprecated {
            op.insert("deprecated".into(), Value::Bool(true));
        }
        let parameters: Vec<Value> = path_params(&e.path)
            .map(|name| {
                let (ty, format) = e
                    .parameters
                    .get(name)
                    .map_or(("string", None), |t| t.schema());
                let mut schema = json!({"type": ty});
                if let Some(f) = format {
                    schema["format"] = Value::String(f.into());
                }
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if !parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(parameters));
        }
        let mut responses = Map::new();
        for class in e.statuses.keys() {
            let code = class.to_ascii_uppercase();
            responses.insert(code, json!({"description": format!("observed {class}")}));
        }
        if responses.is_empty() {
            responses.insert("default".into(), json!({"description": "not observed"}));
        }
        op.insert("responses".into(), Value::Object(responses));
        op.insert(
            "x-apiguard-discovery".into(),
            json!({
                "declared": e.declared,
                "requests": e.requests,
                "authenticated": e.authenticated,
                "sensitive": e.sensitive,
                "firstSeen": e.first_seen,
                "lastSeen": e.last_seen,
            }),
        );
        let item = paths
            .entry(e.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        item[e.method.to_ascii_lowercase()] = Value::Object(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "0.0.0-discovered",
            "description": "Endpoints observed by apiguard discover. Add schemas and security requirements before enforcing it.",
        },
        "paths": paths,
    })
}

/// The `{name}` parameters of a template, in order.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Declared, Inventory, Observation, Sensitive};

    #[test]
    fn a_skeleton_of_two_endpoints() {
        let mut inv = Inventory::new(Some("shop/users".into()), Declared::none());
        for (path, status) in [("/users/42", 200), ("/users/7", 404), ("/health", 200)] {
            inv.observe(&Observation {
                method: "GET",
                path,
                status,
                authenticated: false,
                content_type: None,
                at_unix_ms: 0,
                sensitive: Sensitive::NONE,
            });
        }
        let doc = skeleton(&inv.report());
        assert_eq!(doc["info"]["title"], "users");
        let op = &doc["paths"]["/users/{param}"]["get"];
        assert_eq!(op["parameters"][0]["schema"]["type"], "integer");
        assert!(op["responses"].get("2XX").is_some() && op["responses"].get("4XX").is_some());
        assert_eq!(op["x-apiguard-discovery"]["requests"], 2);
        assert!(doc["paths"]["/health"]["get"].is_object());
    }
}
