//! Path templates: a declared template (`/users/{id}`, `/products/*`) parsed once and matched
//! against request paths, and the heuristic that turns an undeclared path's id-like segments
//! into `{param}`.

use crate::contract::schema::is_uuid;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// The most parameters one endpoint tracks (a path has few; a long one is cut here).
pub(crate) const MAX_PARAMS: usize = 16;

/// What a path parameter's values look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Only ASCII digits.
    Integer,
    /// A UUID (`8-4-4-4-12` hex digits).
    Uuid,
    /// 16 or more hex digits (hashes, object ids).
    Hex,
    /// Anything else.
    String,
}

impl ParamType {
    /// The type of one value of a parameter.
    pub fn of(segment: &str) -> ParamType {
        if is_digits(segment) {
            ParamType::Integer
        } else if is_uuid(segment) {
            ParamType::Uuid
        } else if segment.len() >= 16 && segment.bytes().all(|b| b.is_ascii_hexdigit()) {
            ParamType::Hex
        } else {
            ParamType::String
        }
    }

    /// Whether an undeclared segment is an id and becomes `{param}`: all digits, a UUID, 16+
    /// hex digits, or 8+ characters mixing letters and 2+ digits. Its type when it is.
    pub fn of_id_segment(segment: &str) -> Option<ParamType> {
        match ParamType::of(segment) {
            ParamType::String => {
                let digits = segment.bytes().filter(u8::is_ascii_digit).count();
                let letters = segment.bytes().any(|b| b.is_ascii_alphabetic());
                (segment.len() >= 8 && digits >= 2 && letters).then_some(ParamType::String)
            }
            t => Some(t),
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The type of a parameter whose values had the types in `seen` (a set of bits): the one
    /// type if all agree, else `String`. `None`: no value seen.
    pub(crate) fn joined(seen: u8) -> Option<ParamType> {
        [
            ParamType::Integer,
            ParamType::Uuid,
            ParamType::Hex,
            ParamType::String,
        ]
        .into_iter()
        .find(|t| seen == t.bit())
        .or((seen != 0).then_some(ParamType::String))
    }

    pub(crate) fn add_to(self, seen: &mut u8) {
        *seen |= self.bit();
    }

    /// The JSON-schema type and format of the parameter (OpenAPI).
    pub(crate) fn schema(self) -> (&'static str, Option<&'static str>) {
        match self {
            ParamType::Integer => ("integer", None),
            ParamType::Uuid => ("string", Some("uuid")),
            ParamType::Hex | ParamType::String => ("string", None),
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The segments of a request path: the query string and fragment cut, empty segments (a
/// trailing or double `/`) dropped.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path[..end].split('/').filter(|s| !s.is_empty())
}

/// One segment of a declared template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A declared path: exact (`/orders`), a template with one-segment parameters
/// (`/users/{id}/orders`), or a prefix (`/products/*`: `/products/` and anything below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    prefix: bool,
    /// As declared.
    text: String,
}

/// How well a template fits a path: more literal segments, then not a prefix, win.
pub(crate) type Specificity = (usize, bool, usize);

impl Template {
    /// Parses a policy path or an OpenAPI path template. `Err`: why it is not one.
    pub fn parse(text: &str) -> Result<Template, String> {
        if !text.starts_with('/') {
            return Err("a path starts with /".into());
        }
        let (body, prefix) = match text.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut segments = Vec::new();
        for s in body.split('/').filter(|s| !s.is_empty()) {
            let segment = match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    Segment::Param(name.to_string())
                }
                _ if s.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "the segment {s:?} mixes a parameter or * with text"
                    ));
                }
                _ => Segment::Literal(s.to_string()),
            };
            segments.push(segment);
        }
        Ok(Template {
            segments,
            prefix,
            text: text.to_string(),
        })
    }

    /// The template as declared.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// The template with parameter names erased (`/users/{}`): two declarations of one shape.
    pub(crate) fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(_) => out.push_str("{}"),
            }
        }
        if self.prefix {
            out.push_str("/*");
        } else if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// The parameter names, in order.
    pub(crate) fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the path's segments fit, and how specifically.
    pub(crate) fn fit(&self, path: &[&str]) -> Option<Specificity> {
        let n = self.segments.len();
        let fits_len = if self.prefix {
            path.len() > n
        } else {
            path.len() == n
        };
        if !fits_len {
            return None;
        }
        let mut literals = 0;
        for (s, p) in self.segments.iter().zip(path) {
            match s {
                Segment::Literal(l) if l == p => literals += 1,
                Segment::Literal(_) => return None,
                Segment::Param(_) => {}
            }
        }
        Some((literals, !self.prefix, n))
    }

    /// The values of the parameters in a path that fits.
    pub(crate) fn param_values<'p>(&self, path: &[&'p str]) -> impl Iterator<Item = &'p str> {
        self.segments
            .iter()
            .zip(path.iter())
            .filter(|(s, _)| matches!(s, Segment::Param(_)))
            .map(|(_, p)| *p)
    }
}

/// Writes the heuristic template of `path` into `out` (`/users/{param}/orders/{param2}`) and
/// the type of each `{param}` into `types`.
pub(crate) fn infer(path: &[&str], out: &mut String, types: &mut Vec<ParamType>) {
    for s in path {
        out.push('/');
        match ParamType::of_id_segment(s) {
            Some(t) if types.len() < MAX_PARAMS => {
                types.push(t);
                push_param_name(out, types.len());
            }
            _ => out.push_str(s),
        }
    }
    if path.is_empty() {
        out.push('/');
    }
}

/// `{param}`, `{param2}`, ...: unique names, so the template is a valid OpenAPI path.
fn push_param_name(out: &mut String, n: usize) {
    out.push_str("{param");
    if n > 1 {
        let _ = write!(out, "{n}");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn template_of(path: &str) -> (String, Vec<ParamType>) {
        let segs: Vec<&str> = segments(path).collect();
        let (mut out, mut types) = (String::new(), Vec::new());
        infer(&segs, &mut out, &mut types);
        (out, types)
    }

    #[rstest]
    #[case("/users/123", "/users/{param}", &[ParamType::Integer])]
    #[case("/users/6f1c0e3a-4b5d-4e6f-8a9b-0c1d2e3f4a5b/orders", "/users/{param}/orders", &[ParamType::Uuid])]
    #[case("/blobs/deadbeefdeadbeef00", "/blobs/{param}", &[ParamType::Hex])]
    #[case("/orders/ord9x7k2", "/orders/{param}", &[ParamType::String])]
    #[case("/v1/users/42/orders/7?expand=items", "/v1/users/{param}/orders/{param2}", &[ParamType::Integer, ParamType::Integer])]
    #[case("/v1/admin/export", "/v1/admin/export", &[])]
    #[case("/users/me/", "/users/me", &[])]
    #[case("/", "/", &[])]
    #[case("", "/", &[])]
    #[case("/health?x=1#f", "/health", &[])]
    #[case("/deadbeef", "/deadbeef", &[])]
    #[case("/abcdefgh1", "/abcdefgh1", &[])]
    #[case("/abcdefg12", "/{param}", &[ParamType::String])]
    #[case("/v2", "/v2", &[])]
    fn undeclared_paths_are_templated_per_segment(
        #[case] path: &str,
        #[case] template: &str,
        #[case] types: &[ParamType],
    ) {
        assert_eq!(template_of(path), (template.to_string(), types.to_vec()));
    }

    #[rstest]
    #[case("/users/{id}", "/users/42", Some((1, true, 2)))]
    #[case("/users/{id}", "/users/42/orders", None)]
    #[case("/users/me", "/users/me", Some((2, true, 2)))]
    #[case("/products/*", "/products/1/reviews", Some((1, false, 1)))]
    #[case("/products/*", "/products", None)]
    #[case("/", "/", Some((0, true, 0)))]
    #[case("/*", "/anything", Some((0, false, 0)))]
    fn declared_templates_fit_paths(
        #[case] template: &str,
        #[case] path: &str,
        #[case] fit: Option<Specificity>,
    ) {
        let t = Template::parse(template).unwrap();
        let segs: Vec<&str> = segments(path).collect();
        assert_eq!(t.fit(&segs), fit);
    }

    #[test]
    fn shapes_erase_parameter_names() {
        let a = Template::parse("/users/{id}").unwrap();
        let b = Template::parse("/users/{userId}").unwrap();
        assert_eq!(a.shape(), b.shape());
        assert_eq!(Template::parse("/").unwrap().shape(), "/");
        assert!(Template::parse("/a{b}").is_err());
        assert!(Template::parse("a").is_err());
    }

    #[test]
    fn joined_types() {
        let mut seen = 0;
        assert_eq!(ParamType::joined(seen), None);
        ParamType::Integer.add_to(&mut seen);
        assert_eq!(ParamType::joined(seen), Some(ParamType::Integer));
        ParamType::Uuid.add_to(&mut seen);
        assert_eq!(ParamType::joined(seen), Some(ParamType::String));
    }

    proptest! {
        /// Every template starts with `/`, has as many params as types, and a path with no
        /// digits is kept as it is (segment by segment).
        #[test]
        fn templating_never_panics(path in "[/a-zA-Z0-9?#._-]{0,80}") {
            let (t, types) = template_of(&path);
            prop_assert!(t.starts_with('/'));
            prop_assert_eq!(t.matches("{param").count(), types.len());
            prop_assert!(!t.contains('?'));
        }

        #[test]
        fn letters_only_paths_are_literal(path in "(/[a-z]{1,12}){1,6}") {
            prop_assert_eq!(template_of(&path).0, path);
        }
    }
}
