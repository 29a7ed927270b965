//! The inventory of one policy's endpoints: every observation counted into its endpoint
//! (method + template), bounded, and the report the sensor serves and `apiguard discover`
//! prints.

use super::Observation;
use super::declared::{Declared, Resolved};
use super::sensitive::{Sensitive, SensitiveClass};
use super::template::{MAX_PARAMS, ParamType, infer, segments};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The most endpoints one policy's inventory holds; requests to more are counted as overflow.
pub const MAX_ENDPOINTS: usize = 1_000;
/// The most content types one endpoint lists; the rest are counted as `other`.
const MAX_CONTENT_TYPES: usize = 8;
/// The longest method kept as it is (longer ones are counted as `OTHER`).
const MAX_METHOD: usize = 16;
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What is known of one endpoint.
#[derive(Debug, Clone)]
struct Endpoint {
    method: String,
    path: String,
    declared: bool,
    deprecated: bool,
    requests: u64,
    statuses: [u64; 5],
    authenticated: u64,
    content_types: Vec<(String, u64)>,
    first_ms: i64,
    last_ms: i64,
    /// Parameter names and the set of types their values had.
    params: Vec<(String, u8)>,
    sensitive: [u64; SensitiveClass::ALL.len()],
}

/// The endpoints of one policy, learned from observations. Memory is bounded: at most
/// `limit` endpoints (default [`MAX_ENDPOINTS`]), each with bounded lists.
#[derive(Debug, Clone)]
pub struct Inventory {
    policy: Option<String>,
    declared: Declared,
    limit: usize,
    /// By `"METHOD /template"`.
    endpoints: HashMap<String, Endpoint>,
    overflow: u64,
    observed: u64,
    key: String,
    types: Vec<ParamType>,
}

impl Inventory {
    /// An empty inventory for the policy `ns/name` (`None`: not known, e.g. a bare access
    /// log) with its declared endpoints.
    pub fn new(policy: Option<String>, declared: Declared) -> Inventory {
        Inventory {
            policy,
            declared,
            limit: MAX_ENDPOINTS,
            endpoints: HashMap::new(),
            overflow: 0,
            observed: 0,
            key: String::new(),
            types: Vec::new(),
        }
    }

    /// The same with another endpoint bound.
    pub fn with_limit(mut self, limit: usize) -> Inventory {
        self.limit = limit;
        self
    }

    /// The number of endpoints known.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoint is known yet.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Counts one request. Requests Envoy refused itself (401, 403, 404, 429) count like any
    /// other: a shadow endpoint is often a refused one.
    pub fn observe(&mut self, o: &Observation<'_>) {
        self.observed += 1;
        match self.endpoint(o.method, o.path, o.at_unix_ms) {
            Some((endpoint, types)) => endpoint.count(o, types),
            None => self.overflow += 1,
        }
    }

    /// Adds the sensitive data classes found in one response body of `method` `path` to its
    /// endpoint, without counting a request (the access log entry of the same exchange counts
    /// it). An endpoint not known yet is added with no request (its entry may arrive later:
    /// Envoy batches its access log); when the inventory is full, nothing is added.
    pub fn add_sensitive(&mut self, method: &str, path: &str, found: &Sensitive, at_unix_ms: i64) {
        if found.is_empty() {
            return;
        }
        if let Some((endpoint, _)) = self.endpoint(method, path, at_unix_ms) {
            endpoint.add_sensitive(found);
        }
    }

    /// The endpoint of `method` `path` and its parameters' value types, the endpoint added
    /// when new (first seen `at`); None when it is new and the inventory is full.
    fn endpoint(
        &mut self,
        method: &str,
        path: &str,
        at: i64,
    ) -> Option<(&mut Endpoint, &[ParamType])> {
        let path: Vec<&str> = segments(path).collect();
        let (method, resolved) = write_key(
            &self.declared,
            method,
            &path,
            &mut self.key,
            &mut self.types,
        );
        if !self.endpoints.contains_key(self.key.as_str()) {
            if self.endpoints.len() >= self.limit {
                return None;
            }
            let (declared, deprecated) = resolved
                .as_ref()
                .map_or((false, false), |r| (r.declared, r.deprecated));
            let params = match resolved {
                Some(r) if !r.template.is_prefix() => {
                    r.template.params().map(String::from).collect()
                }
                _ => (1..=self.types.len()).map(param_name).collect(),
            };
            let template = &self.key[method.len() + 1..];
            let e = Endpoint::new(method, template, (declared, deprecated), params, at);
            self.endpoints.insert(self.key.clone(), e);
        }
        let types = self.types.as_slice();
        self.endpoints
            .get_mut(self.key.as_str())
            .map(|e| (e, types))
    }

    /// The report: endpoints sorted by path then method, shadow and zombie lists.
    pub fn report(&self) -> Report {
        let mut endpoints: Vec<EndpointReport> =
            self.endpoints.values().map(Endpoint::report).collect();
        endpoints.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
        let name = |e: &EndpointReport| format!("{} {}", e.method, e.path);
        Report {
            policy: self.policy.clone(),
            shadow: endpoints
                .iter()
                .filter(|e| e.is_shadow())
                .map(name)
                .collect(),
            zombie: endpoints
                .iter()
                .filter(|e| e.is_zombie())
                .map(name)
                .collect(),
            endpoints,
            observed: self.observed,
            overflow: self.overflow,
        }
    }
}

impl Endpoint {
    fn new(
        method: &str,
        path: &str,
        (declared, deprecated): (bool, bool),
        params: Vec<String>,
        at: i64,
    ) -> Endpoint {
        Endpoint {
            method: method.to_string(),
            path: path.to_string(),
            declared,
            deprecated,
            requests: 0,
            statuses: [0; 5],
            authenticated: 0,
            content_types: Vec::new(),
            first_ms: at,
            last_ms: at,
            params: params.into_iter().map(|p| (p, 0)).collect(),
            sensitive: [0; SensitiveClass::ALL.len()],
        }
    }

    fn count(&mut self, o: &Observation<'_>, types: &[ParamType]) {
        self.requests += 1;
        if let Some(class) = (o.status / 100).checked_sub(1).map(usize::from)
            && class < 5
        {
            self.statuses[class] += 1;
        }
        self.authenticated += u64::from(o.authenticated);
        self.first_ms = self.first_ms.min(o.at_unix_ms);
        self.last_ms = self.last_ms.max(o.at_unix_ms);
        for ((_, seen), t) in self.params.iter_mut().zip(types) {
            t.add_to(seen);
        }
        self.add_sensitive(&o.sensitive);
        if let Some(ct) = o.content_type.map(media_type).filter(|c| !c.is_empty()) {
            self.count_content_type(ct);
        }
    }

    fn add_sensitive(&mut self, found: &Sensitive) {
        for (class, n) in found.classes() {
            self.sensitive[class as usize] += u64::from(n);
        }
    }

    fn count_content_type(&mut self, ct: &str) {
        if let Some((_, n)) = self.content_types.iter_mut().find(|(c, _)| c == ct) {
            *n += 1;
            return;
        }
        if self.content_types.len() < MAX_CONTENT_TYPES {
            self.content_types.push((ct.to_ascii_lowercase(), 1));
        } else if let Some((_, n)) = self.content_types.iter_mut().find(|(c, _)| c == "other") {
            *n += 1;
        } else {
            // The last slot becomes `other`: the list stays bounded.
            let last = self
                .content_types
                .last_mut()
                .expect("MAX_CONTENT_TYPES > 0");
            *last = ("other".into(), last.1 + 1);
        }
    }

    fn report(&self) -> EndpointReport {
        let sensitive_counts: BTreeMap<SensitiveClass, u64> = SensitiveClass::ALL
            .into_iter()
            .map(|c| (c, self.sensitive[c as usize]))
            .filter(|(_, n)| *n > 0)
            .collect();
        EndpointReport {
            method: self.method.clone(),
            path: self.path.clone(),
            declared: self.declared,
            deprecated: self.deprecated,
            requests: self.requests,
            statuses: STATUS_CLASSES
                .iter()
                .zip(self.statuses)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            authenticated: self.authenticated,
            sensitive: sensitive_counts.keys().copied().collect(),
            sensitive_counts,
            content_types: self.content_types.iter().cloned().collect(),
            parameters: self
                .params
                .iter()
                .filter_map(|(name, seen)| Some((name.clone(), ParamType::joined(*seen)?)))
                .collect(),
            first_seen: super::timestamp::format_ms(self.first_ms),
            last_seen: super::timestamp::format_ms(self.last_ms),
        }
    }
}

/// The endpoint a request of `method` `path` counts into (`GET /users/{id}`): the same key the
/// inventory uses, for a caller that keeps per-endpoint state of its own (the sensor's
/// sampling of response bodies).
pub fn endpoint_key(declared: &Declared, method: &str, path: &str) -> String {
    let path: Vec<&str> = segments(path).collect();
    let mut key = String::new();
    write_key(declared, method, &path, &mut key, &mut Vec::new());
    key
}

/// Writes `METHOD /template` into `key` (cleared first) and the parameters' value types into
/// `types`: the declared template that matches, else the heuristic's. Returns the method as
/// kept (`OTHER` when empty or too long) and the declaration that matched.
fn write_key<'d, 'm>(
    declared: &'d Declared,
    method: &'m str,
    path: &[&str],
    key: &mut String,
    types: &mut Vec<ParamType>,
) -> (&'m str, Option<Resolved<'d>>) {
    let method = if method.len() <= MAX_METHOD && !method.is_empty() {
        method
    } else {
        "OTHER"
    };
    key.clear();
    types.clear();
    key.push_str(method);
    key.push(' ');
    let resolved = declared.resolve(method, path);
    match &resolved {
        Some(r) if !r.template.is_prefix() => {
            key.push_str(r.template.as_str());
            let values = r.template.param_values(path);
            types.extend(values.take(MAX_PARAMS).map(ParamType::of));
        }
        // A prefix declares the path but does not say its shape: the heuristic does.
        _ => infer(path, key, types),
    }
    (method, resolved)
}

/// The heuristic's name of the `n`th parameter (`param`, `param2`, ...).
fn param_name(n: usize) -> String {
    if n == 1 {
        "param".into()
    } else {
        format!("param{n}")
    }
}

/// `application/json; charset=utf-8` → `application/json`.
fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// One endpoint in the report (the JSON of the sensor's `GET /inventory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    /// `GET`.
    pub method: String,
    /// The declared template, or the heuristic one (`/users/{param}`).
    pub path: String,
    /// Declared by the policy's rules or its OpenAPI document.
    pub declared: bool,
    /// Declared `deprecated: true` in the OpenAPI document.
    pub deprecated: bool,
    pub requests: u64,
    /// Requests per status class (`2xx`: N); classes with none are left out.
    pub statuses: BTreeMap<String, u64>,
    /// Requests with a caller identity (JWT subject, API-key client or client certificate).
    pub authenticated: u64,
    /// The classes of sensitive data seen in responses.
    pub sensitive: Vec<SensitiveClass>,
    /// How many values of each class were seen.
    pub sensitive_counts: BTreeMap<SensitiveClass, u64>,
    /// Response media types and their counts.
    pub content_types: BTreeMap<String, u64>,
    /// The inferred type of each path parameter.
    pub parameters: BTreeMap<String, ParamType>,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
}

impl EndpointReport {
    /// Called but not declared.
    pub fn is_shadow(&self) -> bool {
        !self.declared
    }

    /// Declared deprecated and still called.
    pub fn is_zombie(&self) -> bool {
        self.declared && self.deprecated && self.requests > 0
    }
}

/// The inventory of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `ns/name`; `null` when no policy was given.
    pub policy: Option<String>,
    pub endpoints: Vec<EndpointReport>,
    /// Shadow endpoints (`GET /v1/admin/export`): called, not declared.
    pub shadow: Vec<String>,
    /// Zombie endpoints: declared deprecated, still called.
    pub zombie: Vec<String>,
    /// Requests observed in all.
    pub observed: u64,
    /// Requests not counted because the inventory was full.
    pub overflow: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::sensitive::{Sensitive, classify};

    fn obs<'a>(method: &'a str, path: &'a str, status: u16, at: i64) -> Observation<'a> {
        Observation {
            method,
            path,
            status,
            authenticated: false,
            content_type: Some("application/json; charset=utf-8"),
            at_unix_ms: at,
            sensitive: Sensitive::NONE,
        }
    }

    fn declared() -> Declared {
        let mut d = Declared::none();
        d.add_openapi(
            "paths:\n  /users/{userId}:\n    get: {}\n  /v0/users:\n    get: {deprecated: true}\n",
        )
        .unwrap();
        d.add(&["GET".into()], "/products/*", false).unwrap();
        d
    }

    #[test]
    fn endpoints_are_counted_and_classified() {
        let mut inv = Inventory::new(Some("shop/users".into()), declared());
        let mut o = obs("GET", "/users/123", 200, 1_000);
        o.authenticated = true;
        inv.observe(&o);
        inv.observe(&obs(
            "GET",
            "/users/6f1c0e3a-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
            404,
            3_000,
        ));
        inv.observe(&obs("GET", "/v1/admin/export?all=1", 401, 2_000));
        inv.observe(&obs("GET", "/v0/users", 200, 2_000));
        inv.observe(&obs("GET", "/products/12/reviews", 200, 2_000));
        let r = inv.report();
        assert_eq!(r.shadow, ["GET /v1/admin/export"]);
        assert_eq!(r.zombie, ["GET /v0/users"]);
        let users = r
            .endpoints
            .iter()
            .find(|e| e.path == "/users/{userId}")
            .unwrap();
        assert_eq!(users.requests, 2);
        assert_eq!(users.authenticated, 1);
        assert_eq!(
            users.statuses,
            BTreeMap::from([("2xx".into(), 1), ("4xx".into(), 1)])
        );
        assert_eq!(
            users.parameters["userId"],
            ParamType::String,
            "an integer and a uuid"
        );
        assert_eq!(users.first_seen, "1970-01-01T00:00:01Z");
        assert_eq!(users.last_seen, "1970-01-01T00:00:03Z");
        assert_eq!(users.content_types["application/json"], 2);
        let products = r
            .endpoints
            .iter()
            .find(|e| e.path.starts_with("/products"))
            .unwrap();
        assert_eq!(products.path, "/products/{param}/reviews");
        assert!(products.declared, "under a declared prefix");
        assert_eq!(r.observed, 5);
    }

    #[test]
    fn the_inventory_is_bounded_and_counts_the_overflow() {
        let mut inv = Inventory::new(None, Declared::none()).with_limit(10);
        for i in 0..100 {
            let path = format!("/p{}/x", char::from(b'a' + (i % 26) as u8));
            inv.observe(&obs("GET", &path, 200, i));
        }
        assert_eq!(inv.len(), 10);
        let r = inv.report();
        assert_eq!(
            r.overflow,
            100 - r.endpoints.iter().map(|e| e.requests).sum::<u64>()
        );
    }

    #[test]
    fn content_types_are_bounded() {
        let mut inv = Inventory::new(None, Declared::none());
        for i in 0..20 {
            let ct = format!("application/x-{i}");
            let mut o = obs("GET", "/a", 200, 0);
            o.content_type = Some(&ct);
            inv.observe(&o);
        }
        let r = inv.report();
        assert_eq!(r.endpoints[0].content_types.len(), MAX_CONTENT_TYPES);
        assert_eq!(r.endpoints[0].content_types.values().sum::<u64>(), 20);
    }

    #[test]
    fn the_report_never_holds_a_value() {
        let body = br#"{"email":"ada.lovelace@example.com","card":"4111 1111 1111 1111","iban":"DE89370400440532013000"}"#;
        let mut inv = Inventory::new(Some("shop/users".into()), Declared::none());
        let mut o = obs("GET", "/users/123", 200, 0);
        o.sensitive = classify(body);
        inv.observe(&o);
        let json = serde_json::to_string(&inv.report()).unwrap();
        assert!(
            json.contains(r#""sensitive":["email","payment_card","iban"]"#),
            "{json}"
        );
        for value in ["ada.lovelace", "example.com", "4111", "DE89", "1111 1111"] {
            assert!(!json.contains(value), "{value} in {json}");
        }
    }

    #[test]
    fn sensitive_counts_are_added_without_counting_a_request() {
        let mut inv = Inventory::new(Some("shop/users".into()), declared()).with_limit(2);
        let found = classify(br#"{"email":"a@x.io","card":"4111111111111111"}"#);
        inv.add_sensitive("GET", "/users/7", &found, 5_000);
        let r = inv.report();
        let users = &r.endpoints[0];
        assert_eq!(
            (users.path.as_str(), users.requests, r.observed),
            ("/users/{userId}", 0, 0),
            "an endpoint first seen by a scan, its request still to come"
        );
        inv.observe(&obs("GET", "/users/8", 200, 4_000));
        inv.add_sensitive("GET", "/users/9", &found, 6_000);
        inv.add_sensitive("GET", "/users/9", &Sensitive::NONE, 7_000);
        let r = inv.report();
        let users = &r.endpoints[0];
        assert_eq!((users.requests, r.observed), (1, 1));
        assert_eq!(users.sensitive_counts[&SensitiveClass::Email], 2);
        assert_eq!(users.sensitive_counts[&SensitiveClass::PaymentCard], 2);
        // Seen from the scan that added it (5 s) and the request (4 s); the later scan (6 s)
        // of a known endpoint changes no time: the access log dates requests.
        assert_eq!(users.first_seen, "1970-01-01T00:00:04Z");
        assert_eq!(users.last_seen, "1970-01-01T00:00:05Z");
        assert_eq!(
            endpoint_key(&declared(), "GET", "/users/9?x=1"),
            "GET /users/{userId}"
        );
        assert_eq!(
            endpoint_key(&Declared::none(), "", "/a/123"),
            "OTHER /a/{param}"
        );
        // Full: a scan of a new endpoint adds nothing (and is no overflow: not a request).
        inv.observe(&obs("GET", "/v0/users", 200, 0));
        inv.add_sensitive("GET", "/new", &found, 0);
        let r = inv.report();
        assert_eq!((r.endpoints.len(), r.overflow), (2, 0));
    }

    proptest::proptest! {
        /// Whatever the body holds, the report holds classes and counts, never the values.
        #[test]
        fn no_value_reaches_the_report(
            local in "[a-z]{6,12}",
            domain in "[a-z]{6,12}",
            digits in "[1-9][0-9]{14}",
        ) {
            let card: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
            let check = (0..10u8)
                .find(|c| crate::discovery::sensitive::luhn(&[card.as_slice(), &[*c]].concat()))
                .unwrap();
            let card = format!("{digits}{check}");
            let email = format!("{local}@{domain}.com");
            let body = format!(r#"{{"user":{{"email":"{email}","card":"{card}"}}}}"#);
            let mut inv = Inventory::new(None, Declared::none());
            let mut o = obs("GET", "/users/1", 200, 0);
            o.sensitive = classify(body.as_bytes());
            inv.observe(&o);
            let json = serde_json::to_string(&inv.report()).unwrap();
            proptest::prop_assert!(json.contains("\"email\""), "{}", json);
            for value in [&email, &card, &local, &domain, &digits] {
                proptest::prop_assert!(!json.contains(value.as_str()), "{} in {}", value, json);
            }
        }
    }

    #[test]
    fn the_report_has_the_design_shape() {
        let mut inv = Inventory::new(Some("shop/users".into()), Declared::none());
        inv.observe(&obs("POST", "/orders", 201, 0));
        let v = serde_json::to_value(inv.report()).unwrap();
        let e = &v["endpoints"][0];
        for field in [
            "method",
            "path",
            "declared",
            "deprecated",
            "requests",
            "statuses",
            "authenticated",
            "sensitive",
            "firstSeen",
            "lastSeen",
        ] {
            assert!(e.get(field).is_some(), "{field} in {e}");
        }
        assert_eq!(v["policy"], "shop/users");
        assert_eq!(e["statuses"]["2xx"], 1);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, inv.report());
    }
}
