//! Policy path patterns -> Envoy route matches, regexes and method matchers.

use super::types::*;

pub(super) fn regex_escape(s: &str) -> String {
    regex::escape(s)
}

/// Envoy route match of one policy path: exact, `/prefix/*` or a `{param}` template.
pub(super) fn path_match(path: &str) -> RouteMatch {
    if let Some(prefix) = path.strip_suffix("/*")
        && !prefix.contains('{')
    {
        return RouteMatch {
            prefix: Some(format!("{prefix}/")),
            ..Default::default()
        };
    }
    if !path.contains('{') && !path.contains('*') {
        return RouteMatch {
            path: Some(path.to_string()),
            ..Default::default()
        };
    }
    RouteMatch {
        safe_regex: Some(RegexMatcher {
            regex: path_regex(path),
        }),
        ..Default::default()
    }
}

/// Whether a request matching route path `path` can also match one of `paths`: exact paths
/// are tested against the other side's pattern; two patterns are assumed to overlap.
pub(super) fn paths_may_overlap(paths: &[String], path: &str) -> bool {
    let is_exact = |p: &str| !p.contains('{') && !p.ends_with("/*");
    paths.iter().any(|p| match (is_exact(p), is_exact(path)) {
        (true, true) => p == path,
        (true, false) => pattern_matches(path, p),
        (false, true) => pattern_matches(p, path),
        (false, false) => true,
    })
}

/// Whether the exact path `exact` matches `pattern` (`{param}` = one segment, trailing `/*` =
/// anything below), without compiling a regex (this runs per route and rate limit).
fn pattern_matches(pattern: &str, exact: &str) -> bool {
    let (body, any_below) = match pattern.strip_suffix("/*") {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let mut want = body.split('/');
    let mut have = exact.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return !any_below,
            (None, Some(rest)) => return any_below && (!rest.is_empty() || have.next().is_some()),
            (Some(_), None) => return false,
            (Some(w), Some(h)) => {
                let param = w.starts_with('{') && w.ends_with('}');
                if (param && h.is_empty()) || (!param && w != h) {
                    return false;
                }
            }
        }
    }
}

/// Anchored regex of a path pattern (used for route matching, without the query string).
pub(super) fn path_regex(path: &str) -> String {
    let (body, tail) = match path.strip_suffix("/*") {
        Some(p) => (p, "/.*"),
        None => (path, ""),
    };
    let mut out = String::from("^");
    let mut rest = body;
    while let Some(start) = rest.find('{') {
        out.push_str(&regex_escape(&rest[..start]));
        out.push_str("[^/]+");
        rest = match rest[start..].find('}') {
            Some(end) => &rest[start + end + 1..],
            None => "",
        };
    }
    out.push_str(&regex_escape(rest));
    out.push_str(tail);
    out.push('$');
    out
}

pub(super) fn method_matcher(methods: &[String]) -> Option<HeaderMatcher> {
    match methods {
        [] => None,
        [m] => Some(HeaderMatcher::string(":method", StringMatcher::exact(m))),
        ms => Some(HeaderMatcher::string(
            ":method",
            StringMatcher::regex(format!(
                "^({})$",
                ms.iter()
                    .map(|m| regex_escape(m))
                    .collect::<Vec<_>>()
                    .join("|")
            )),
        )),
    }
}

/// 1-based path segment index of `{param}` in `path`.
pub(super) fn param_segment(path: &str, param: &str) -> Option<usize> {
    let needle = format!("{{{param}}}");
    path.split('/')
        .filter(|s| !s.is_empty())
        .position(|s| s == needle)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert_eq!(
            path_regex("/users/{userId}/orders"),
            "^/users/[^/]+/orders$"
        );
        assert_eq!(path_regex("/a.b/*"), "^/a\\.b/.*$");
        assert_eq!(path_match("/orders").path.as_deref(), Some("/orders"));
        assert_eq!(path_match("/orders/*").prefix.as_deref(), Some("/orders/"));
        assert!(path_match("/u/{id}").safe_regex.is_some());
        assert_eq!(param_segment("/users/{userId}/orders", "userId"), Some(2));
        assert_eq!(param_segment("/users/{userId}/orders", "other"), None);
    }

    #[test]
    fn rate_limit_paths_overlap() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(paths_may_overlap(&p(&["/login"]), "/login"));
        assert!(!paths_may_overlap(&p(&["/login"]), "/cart"));
        assert!(paths_may_overlap(&p(&["/cart/*"]), "/cart/1"));
        assert!(paths_may_overlap(
            &p(&["/users/1/checkout"]),
            "/users/{id}/checkout"
        ));
        assert!(!paths_may_overlap(
            &p(&["/users/1/checkout"]),
            "/users/{id}/orders"
        ));
    }
}
