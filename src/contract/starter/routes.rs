//! Operations → authorization rules: OpenAPI path templates as the policy's route paths, rule
//! names from `operationId`s, the order of rules (first match wins, so a more specific path
//! goes first) and, past the policy's 64 rules, one rule per path and security requirement,
//! then one rule per methods and requirement for up to 16 paths no other rule overlaps.

use super::Warning;
use super::security::Access;
use crate::api::validate::is_valid_path_template;

/// The most rules a policy holds (`spec.authorization.rules`, `maxItems` in the CRD).
pub(super) const MAX_RULES: usize = 64;
/// The longest rule name (a DNS label).
const MAX_NAME: usize = 63;

/// One operation the policy can express.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// The operation's JSON pointer (`/paths/~1orders/get`).
    pub(super) pointer: String,
    /// `GET`.
    pub(super) method: String,
    /// The policy path (`/users/{userId}/orders`).
    pub(super) path: String,
    /// The rule name it asks for (sanitized; unique-ified later).
    pub(super) name: String,
    pub(super) access: Access,
}

/// A rule before it becomes an `AuthorizationRule`.
#[derive(Debug, Clone)]
pub(super) struct RouteRule {
    pub(super) name: String,
    pub(super) methods: Vec<String>,
    pub(super) paths: Vec<String>,
    pub(super) access: Access,
    /// The pointers of the operations it covers.
    pub(super) operations: Vec<String>,
}

/// The policy path of an OpenAPI path template: literal segments as they are, a `{param}`
/// segment as a template (its name made an identifier: `{order-id}` → `{order_id}`). `Err`
/// says why the template cannot be expressed (a parameter inside a segment, an empty segment,
/// characters outside the policy's path grammar).
pub(super) fn policy_path(template: &str) -> Result<String, String> {
    if template == "/" {
        return Ok("/".into());
    }
    let Some(rest) = template.strip_prefix('/') else {
        return Err("a path template starts with /".into());
    };
    let mut out = String::new();
    for segment in rest.split('/') {
        out.push('/');
        if segment.is_empty() {
            return Err("an empty path segment (a trailing or double /)".into());
        }
        if let Some(name) = segment
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|n| !n.contains(['{', '}']))
        {
            out.push('{');
            out.push_str(&identifier(name));
            out.push('}');
        } else if segment.contains(['{', '}']) {
            return Err(format!(
                "the segment {segment:?} mixes a parameter with text (a policy parameter is a whole segment)"
            ));
        } else {
            out.push_str(segment);
        }
    }
    if out.len() > 256 {
        return Err("longer than 256 characters".into());
    }
    if !is_valid_path_template(&out) {
        return Err(format!(
            "{out:?} has characters outside the policy's path grammar (letters, digits and ._~!$&'()+,;=:@%-)"
        ));
    }
    Ok(out)
}

/// A parameter name as an identifier (`[A-Za-z_][A-Za-z0-9_]*`).
fn identifier(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// `text` as a rule name (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 characters):
/// `getOrderById` → `get-order-by-id`, `GET /users/{id}` → `get-users-id`. Empty when
/// nothing is left.
pub(super) fn rule_name(text: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in text.chars() {
        if c.is_ascii_uppercase()
            && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('-');
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
        prev = Some(c);
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(MAX_NAME);
    out.trim_end_matches('-').to_string()
}

/// The rules for `routes` (document order): one per operation, or past [`MAX_RULES`] one per
/// path and access, then per methods and access; named uniquely and ordered so that a rule comes before the rules whose
/// paths are more general than its own.
pub(super) fn rules(routes: Vec<Route>, warnings: &mut Vec<Warning>) -> Vec<RouteRule> {
    let mut rules: Vec<RouteRule> = routes
        .into_iter()
        .map(|r| RouteRule {
            name: r.name,
            methods: vec![r.method],
            paths: vec![r.path],
            access: r.access,
            operations: vec![r.pointer],
        })
        .collect();
    if rules.len() > MAX_RULES {
        rules = group_by_path(rules);
    }
    if rules.len() > MAX_RULES {
        rules = group_by_access(rules);
    }
    let mut rules = order(rules);
    if rules.len() > MAX_RULES {
        for dropped in rules.split_off(MAX_RULES) {
            for op in dropped.operations {
                warnings.push(Warning::at(
                    &op,
                    format!(
                        "a policy holds at most {MAX_RULES} rules; the operation is skipped (add it by hand, e.g. by grouping paths of the same security into one rule)"
                    ),
                ));
            }
        }
    }
    unique_names(&mut rules);
    rules
}

/// One rule per path and access, its methods merged (in document order).
fn group_by_path(rules: Vec<RouteRule>) -> Vec<RouteRule> {
    let mut out: Vec<RouteRule> = Vec::new();
    for rule in rules {
        match out
            .iter_mut()
            .find(|r| r.paths == rule.paths && r.access == rule.access)
        {
            Some(group) => {
                group.methods.extend(rule.methods);
                group.operations.extend(rule.operations);
                group.name = rule_name(&group.paths[0]);
                if group.name.is_empty() {
                    group.name = "root".into();
                }
            }
            None => out.push(rule),
        }
    }
    out
}

/// The most paths in one rule (`match.paths`, `maxItems` in the CRD).
const MAX_PATHS: usize = 16;

/// Rules of the same methods and access merged, up to [`MAX_PATHS`] paths each; only rules
/// no other rule overlaps, since a merged rule cannot be both before and after others.
fn group_by_access(rules: Vec<RouteRule>) -> Vec<RouteRule> {
    let overlaps: Vec<bool> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rules
                .iter()
                .enumerate()
                .any(|(j, o)| i != j && (shadows(o, r) || shadows(r, o)))
        })
        .collect();
    let mut out: Vec<(RouteRule, bool)> = Vec::new();
    for (rule, overlaps) in rules.into_iter().zip(overlaps) {
        let group = out.iter_mut().find(|(g, mergeable)| {
            *mergeable
                && !overlaps
                && g.methods == rule.methods
                && g.access == rule.access
                && g.paths.len() < MAX_PATHS
        });
        match group {
            Some((group, _)) => {
                group.paths.extend(rule.paths);
                group.operations.extend(rule.operations);
            }
            None => out.push((rule, !overlaps)),
        }
    }
    out.into_iter()
        .map(|(mut rule, _)| {
            if rule.paths.len() > 1 {
                let first = rule_name(&format!("{} {}", rule.methods.join(" "), rule.paths[0]));
                rule.name = rule_name(&format!("{first} and {} more", rule.paths.len() - 1));
            }
            rule
        })
        .collect()
}

/// Rules reordered so that none comes after a rule that is more general than it and overlaps
/// it (`/users/{id}` after `/users/me`): each rule is inserted before the first rule more
/// general than itself, else appended.
fn order(rules: Vec<RouteRule>) -> Vec<RouteRule> {
    let mut out: Vec<RouteRule> = Vec::with_capacity(rules.len());
    for rule in rules {
        match out.iter().position(|r| shadows(r, &rule)) {
            Some(at) => out.insert(at, rule),
            None => out.push(rule),
        }
    }
    out
}

/// Whether `general` would take requests meant for `specific` if it came first.
fn shadows(general: &RouteRule, specific: &RouteRule) -> bool {
    let methods = general.methods.iter().any(|m| specific.methods.contains(m));
    methods
        && general
            .paths
            .iter()
            .any(|g| specific.paths.iter().any(|s| more_general(g, s)))
}

/// `general` matches every path `specific` matches, and more: the same segments, with a
/// template wherever they differ.
fn more_general(general: &str, specific: &str) -> bool {
    let g: Vec<&str> = general.split('/').collect();
    let s: Vec<&str> = specific.split('/').collect();
    g.len() == s.len()
        && g != s
        && g.iter()
            .zip(&s)
            .all(|(g, s)| g == s || (g.starts_with('{') && !s.starts_with('{')))
}

/// Duplicate names get `-2`, `-3`, ... (the base shortened to fit 63 characters).
fn unique_names(rules: &mut [RouteRule]) {
    let mut taken: Vec<String> = Vec::new();
    for rule in rules.iter_mut() {
        if rule.name.is_empty() {
            rule.name = "route".into();
        }
        let base = rule.name.clone();
        let mut n = 1;
        while taken.contains(&rule.name) {
            n += 1;
            let suffix = format!("-{n}");
            let mut short = base.clone();
            short.truncate(MAX_NAME - suffix.len());
            rule.name = format!("{}{suffix}", short.trim_end_matches('-'));
        }
        taken.push(rule.name.clone());
    }
}
