//! The endpoints a policy declares: its `authorization.rules[].match` (methods and paths) and
//! the operations of its OpenAPI document (with `deprecated`). A request path is matched
//! against them first; only a path no declaration fits is templated by the heuristic.

use super::template::{Specificity, Template};
use crate::api::ApiSecurityPolicySpec;
use serde_json::Value;

/// The HTTP methods an OpenAPI path item may declare.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One declared path and what is declared on it.
#[derive(Debug, Clone)]
struct DeclaredPath {
    template: Template,
    /// The declared methods (upper case) and whether each is deprecated; `*` is any method.
    methods: Vec<(String, bool)>,
}

/// What a request path resolved to among the declarations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved<'d> {
    pub(crate) template: &'d Template,
    /// Whether the method is declared on that path.
    pub(crate) declared: bool,
    pub(crate) deprecated: bool,
}

/// The declared endpoints of one policy.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    paths: Vec<DeclaredPath>,
}

impl Declared {
    /// No declaration: every endpoint is templated by the heuristic and undeclared.
    pub fn none() -> Declared {
        Declared::default()
    }

    /// The number of declared paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Declares `methods` (empty: any) on `path`. `Err`: the path is not a template.
    pub fn add(&mut self, methods: &[String], path: &str, deprecated: bool) -> Result<(), String> {
        let template = Template::parse(path)?;
        let shape = template.shape();
        let at = match self.paths.iter().position(|p| p.template.shape() == shape) {
            Some(at) => at,
            None => {
                self.paths.push(DeclaredPath {
                    template,
                    methods: Vec::new(),
                });
                self.paths.len() - 1
            }
        };
        let entry = &mut self.paths[at];
        let methods: Vec<String> = if methods.is_empty() {
            vec!["*".into()]
        } else {
            methods.iter().map(|m| m.to_ascii_uppercase()).collect()
        };
        for m in methods {
            match entry.methods.iter_mut().find(|(have, _)| *have == m) {
                // Deprecated only if every declaration of it says so.
                Some((_, d)) => *d &= deprecated,
                None => entry.methods.push((m, deprecated)),
            }
        }
        Ok(())
    }

    /// The paths of a policy's authorization rules (an empty `paths` declares every path).
    pub fn add_policy(&mut self, spec: &ApiSecurityPolicySpec) -> Result<(), String> {
        for (i, rule) in spec.rules().iter().enumerate() {
            self.add_route(&rule.route.methods, &rule.route.paths)
                .map_err(|e| format!("spec.authorization.rules[{i}].match.paths {e}"))?;
        }
        Ok(())
    }

    /// One rule's `match`: `methods` (empty: any) on `paths` (empty: every path). `Err` names
    /// the path that is not a template.
    pub fn add_route(&mut self, methods: &[String], paths: &[String]) -> Result<(), String> {
        let every = ["/*".to_string(), "/".to_string()];
        let paths = if paths.is_empty() { &every[..] } else { paths };
        for path in paths {
            self.add(methods, path, false)
                .map_err(|e| format!("{path:?}: {e}"))?;
        }
        Ok(())
    }

    /// The operations of an OpenAPI 3.x document (YAML or JSON), `deprecated` included.
    /// OpenAPI paths go first: they carry more (deprecation, parameter names).
    pub fn add_openapi(&mut self, document: &str) -> Result<(), String> {
        let root: Value = serde_saphyr::from_str(document)
            .map_err(|e| format!("the OpenAPI document does not parse: {e}"))?;
        let Some(paths) = root.get("paths").and_then(Value::as_object) else {
            return Err("paths is missing; an OpenAPI document lists its paths".into());
        };
        for (path, item) in paths {
            for method in OPENAPI_METHODS {
                let Some(op) = item.get(method) else {
                    continue;
                };
                let deprecated = op.get("deprecated").and_then(Value::as_bool) == Some(true);
                self.add(&[method.to_ascii_uppercase()], path, deprecated)
                    .map_err(|e| format!("paths {path:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The declared path that fits best (most literal segments, then not a prefix), and
    /// whether `method` is declared on it.
    pub(crate) fn resolve(&self, method: &str, path: &[&str]) -> Option<Resolved<'_>> {
        let mut best: Option<(Specificity, &DeclaredPath)> = None;
        for p in &self.paths {
            if let Some(fit) = p.template.fit(path)
                && best.is_none_or(|(b, _)| fit > b)
            {
                best = Some((fit, p));
            }
        }
        let (_, p) = best?;
        let declared = p.methods.iter().find(|(m, _)| m == method || m == "*");
        Some(Resolved {
            template: &p.template,
            declared: declared.is_some(),
            deprecated: declared.is_some_and(|(_, d)| *d),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::template::segments;

    fn resolve<'d>(d: &'d Declared, method: &str, path: &str) -> Option<(&'d str, bool, bool)> {
        let segs: Vec<&str> = segments(path).collect();
        d.resolve(method, &segs)
            .map(|r| (r.template.as_str(), r.declared, r.deprecated))
    }

    #[test]
    fn the_most_specific_declaration_wins() {
        let mut d = Declared::none();
        d.add_openapi(
            "openapi: 3.1.0\npaths:\n  /users/{userId}:\n    get: {}\n    delete: {deprecated: true}\n  /users/me:\n    get: {}\n",
        )
        .unwrap();
        d.add(&["GET".into()], "/users/{id}", false).unwrap();
        d.add(&[], "/products/*", false).unwrap();
        assert_eq!(d.len(), 3, "one shape per path");
        assert_eq!(
            resolve(&d, "GET", "/users/me"),
            Some(("/users/me", true, false))
        );
        assert_eq!(
            resolve(&d, "GET", "/users/42"),
            Some(("/users/{userId}", true, false))
        );
        assert_eq!(
            resolve(&d, "DELETE", "/users/42"),
            Some(("/users/{userId}", true, true))
        );
        assert_eq!(
            resolve(&d, "PUT", "/users/42"),
            Some(("/users/{userId}", false, false))
        );
        assert_eq!(
            resolve(&d, "POST", "/products/1/reviews"),
            Some(("/products/*", true, false))
        );
        assert_eq!(resolve(&d, "GET", "/v1/admin/export"), None);
    }

    #[test]
    fn bad_documents_say_why() {
        let mut d = Declared::none();
        assert!(
            d.add_openapi("openapi: 3.1.0\n")
                .unwrap_err()
                .contains("paths")
        );
        assert!(d.add_openapi(": :").is_err());
        let e = d
            .add_openapi("paths:\n  /a{b}:\n    get: {}\n")
            .unwrap_err();
        assert!(e.contains("/a{b}"), "{e}");
    }
}
