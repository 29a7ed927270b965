//! The gateway's access log stream: Envoy's gRPC access log service
//! (`envoy.service.accesslog.v3.AccessLogService`), off the request path. Every request's entry
//! arrives, including those Envoy's own filters refuse (401, 403, 404, 429), and becomes a
//! [`Logged`] request for discovery and runtime detection (with who sent it: the client
//! address, the API key's client id, the JWT's claims, the headers detectors key by).
//!
//! [`logged`] is pure (one entry in, one request out); the server is in `server.rs`.

use crate::detect::RequestKeys;
use crate::render::CLIENT_ID_HEADER;
use crate::sensor::config::{JWT_METADATA_NAMESPACE, JWT_PAYLOAD_KEY};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, RequestMethod};
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::google::protobuf::value::Kind;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One request as the gateway logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Upper case (`GET`).
    pub method: String,
    /// The path without its query string (the path before any rewrite).
    pub path: String,
    /// The response code (0 when the downstream went away before one was sent).
    pub status: u16,
    /// The matched route's name (the authorization rule, or the gateway's own catch-all).
    pub route: String,
    /// A verified JWT, an API key or a client certificate identified the caller.
    pub authenticated: bool,
    /// The response's content type, without parameters (`application/json`).
    pub content_type: Option<String>,
    /// When the request started.
    pub time: SystemTime,
    /// Who sent it (the keys detectors count by).
    pub caller: Caller,
}

/// What an entry says about its caller. Owned; [`Caller::with_keys`] borrows it for the detectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The downstream address's IP (the peer Envoy saw).
    pub client_ip: Option<String>,
    /// The client id the API-key filter set.
    pub api_key_client: Option<String>,
    /// The verified JWT's top-level claims (strings, numbers and booleans, as text).
    pub claims: Vec<(String, String)>,
    /// The request headers the gateway logs (names lower case).
    pub headers: Vec<(String, String)>,
}

impl Caller {
    /// Calls `f` with the caller as the detectors' [`RequestKeys`].
    pub fn with_keys<R>(&self, f: impl FnOnce(&RequestKeys<'_>) -> R) -> R {
        crate::detect::keys::with_owned_keys(
            self.client_ip.as_deref(),
            self.api_key_client.as_deref(),
            &self.claims,
            &self.headers,
            f,
        )
    }
}

/// The verified JWT's top-level claims from the JWT filter's dynamic metadata: strings as
/// they are, numbers and booleans as text (`42`, `true`); objects, lists and nulls are left
/// out. Empty without a verified JWT. The same at the request headers (ext_proc) and in the
/// access log, so a claim's key is the same in both.
pub fn jwt_claims(metadata: Option<&Metadata>) -> Vec<(String, String)> {
    let payload = metadata
        .and_then(|m| m.filter_metadata.get(JWT_METADATA_NAMESPACE))
        .and_then(|s| s.fields.get(JWT_PAYLOAD_KEY))
        .and_then(|v| match &v.kind {
            Some(Kind::StructValue(payload)) => Some(payload),
            _ => None,
        });
    let Some(payload) = payload else {
        return Vec::new();
    };
    let mut claims: Vec<(String, String)> = payload
        .fields
        .iter()
        .filter_map(|(name, value)| Some((name.clone(), claim_text(value.kind.as_ref()?)?)))
        .collect();
    claims.sort();
    claims
}

fn claim_text(kind: &Kind) -> Option<String> {
    match kind {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::BoolValue(b) => Some(b.to_string()),
        // JSON numbers arrive as f64: integers are written without a fraction.
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Some(format!("{}", *n as i64))
        }
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn socket_ip(address: Option<&Address>) -> Option<String> {
    match address?.address.as_ref()? {
        AddressKind::SocketAddress(s) if !s.address.is_empty() => Some(s.address.clone()),
        _ => None,
    }
}

/// The request of one HTTP access log entry; None for an entry without a request (a
/// connection that never sent one).
pub fn logged(entry: &HttpAccessLogEntry) -> Option<Logged> {
    let request = entry.request.as_ref()?;
    let common = entry.common_properties.as_ref();
    let method = RequestMethod::try_from(request.request_method)
        .ok()
        .filter(|m| *m != RequestMethod::MethodUnspecified)
        .map(|m| m.as_str_name().to_owned())?;
    let raw_path = if request.original_path.is_empty() {
        &request.path
    } else {
        &request.original_path
    };
    let path = raw_path.split(['?', '#']).next().unwrap_or("/").to_owned();
    let response = entry.response.as_ref();
    let status = response
        .and_then(|r| r.response_code)
        .and_then(|c| u16::try_from(c.value).ok())
        .unwrap_or(0);
    let content_type = response
        .and_then(|r| r.response_headers.get("content-type"))
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let time = common
        .and_then(|c| c.start_time.as_ref())
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            let nanos = u32::try_from(t.nanos).ok()?;
            Some(UNIX_EPOCH + Duration::new(secs, nanos))
        })
        .unwrap_or_else(SystemTime::now);
    Some(Logged {
        method,
        path,
        status,
        route: common.map(|c| c.route_name.clone()).unwrap_or_default(),
        authenticated: authenticated(entry),
        content_type,
        time,
        caller: caller(entry),
    })
}

/// Who sent the entry's request.
fn caller(entry: &HttpAccessLogEntry) -> Caller {
    let common = entry.common_properties.as_ref();
    let headers = entry.request.as_ref().map(|r| &r.request_headers);
    let mut logged_headers: Vec<(String, String)> = headers
        .into_iter()
        .flatten()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    logged_headers.sort();
    Caller {
        client_ip: socket_ip(common.and_then(|c| c.downstream_remote_address.as_ref())),
        api_key_client: headers
            .and_then(|h| h.get(CLIENT_ID_HEADER))
            .filter(|v| !v.is_empty())
            .cloned(),
        claims: jwt_claims(common.and_then(|c| c.metadata.as_ref())),
        headers: logged_headers,
    }
}

/// A verified JWT (the JWT filter's payload in the dynamic metadata), an API key (the client
/// id header the API-key filter sets) or a client certificate's URI SAN.
fn authenticated(entry: &HttpAccessLogEntry) -> bool {
    let common = entry.common_properties.as_ref();
    let jwt = common
        .and_then(|c| c.metadata.as_ref())
        .and_then(|m| m.filter_metadata.get(JWT_METADATA_NAMESPACE))
        .is_some_and(|s| !s.fields.is_empty());
    let api_key = entry
        .request
        .as_ref()
        .and_then(|r| r.request_headers.get(CLIENT_ID_HEADER))
        .is_some_and(|v| !v.is_empty());
    let certificate = common
        .and_then(|c| c.tls_properties.as_ref())
        .and_then(|t| t.peer_certificate_properties.as_ref())
        .is_some_and(|p| !p.subject_alt_name.is_empty());
    jwt || api_key || certificate
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::data::accesslog::v3::{
        AccessLogCommon, HttpRequestProperties, HttpResponseProperties,
    };
    use envoy_types::pb::google::protobuf::{Struct, Timestamp, UInt32Value};

    fn entry(method: RequestMethod, path: &str, status: u32) -> HttpAccessLogEntry {
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                route_name: "read".into(),
                start_time: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 5,
                }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_method: method as i32,
                path: path.into(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: status }),
                response_headers: [(
                    "content-type".into(),
                    "Application/JSON; charset=utf-8".into(),
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_becomes_the_logged_request_without_its_query() {
        let got = logged(&entry(RequestMethod::Get, "/users/42?expand=orders", 200)).unwrap();
        assert_eq!(got.method, "GET");
        assert_eq!(got.path, "/users/42");
        assert_eq!(got.status, 200);
        assert_eq!(got.route, "read");
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(got.time, UNIX_EPOCH + Duration::new(1_800_000_000, 5));
        assert!(!got.authenticated);
    }

    #[test]
    fn the_original_path_wins_over_a_rewritten_one() {
        let mut e = entry(RequestMethod::Post, "/internal/v2/login", 401);
        e.request.as_mut().unwrap().original_path = "/login?next=/".into();
        let got = logged(&e).unwrap();
        assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/login"));
        assert_eq!(got.status, 401);
    }

    #[test]
    fn a_jwt_payload_an_api_key_or_a_certificate_authenticate() {
        let mut jwt = entry(RequestMethod::Get, "/a", 200);
        let payload = Struct {
            fields: [("payload".to_string(), Default::default())].into(),
        };
        jwt.common_properties.as_mut().unwrap().metadata = Some(Metadata {
            filter_metadata: [(JWT_METADATA_NAMESPACE.to_string(), payload)].into(),
            ..Default::default()
        });
        assert!(logged(&jwt).unwrap().authenticated);
        let mut key = entry(RequestMethod::Get, "/a", 200);
        key.request
            .as_mut()
            .unwrap()
            .request_headers
            .insert(CLIENT_ID_HEADER.into(), "partner-a".into());
        assert!(logged(&key).unwrap().authenticated);
        let mut empty_key = entry(RequestMethod::Get, "/a", 200);
        empty_key
            .request
            .as_mut()
            .unwrap()
            .request_headers
            .insert(CLIENT_ID_HEADER.into(), String::new());
        assert!(!logged(&empty_key).unwrap().authenticated);
    }

    #[test]
    fn entries_without_a_request_or_method_are_skipped() {
        let mut no_request = entry(RequestMethod::Get, "/a", 200);
        no_request.request = None;
        assert_eq!(logged(&no_request), None);
        assert_eq!(
            logged(&entry(RequestMethod::MethodUnspecified, "/a", 200)),
            None
        );
    }

    #[test]
    fn a_missing_response_code_is_zero() {
        let mut e = entry(RequestMethod::Get, "/a", 200);
        e.response = None;
        let got = logged(&e).unwrap();
        assert_eq!((got.status, got.content_type), (0, None));
    }
}
