//! What the sensor knows about one HTTP exchange: the request as Envoy forwarded it, who sent
//! it (the principal the gateway established), and what later stages learned (the contract's
//! operation, the response's status).
//!
//! Pure: built from plain values; the gRPC layer extracts them from Envoy's messages.

use crate::render::CLIENT_ID_HEADER;

/// Who sent a request, as the gateway's filters established it (never taken from what the
/// client claims: the gateway strips client-sent copies of the headers it sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The verified JWT's `sub` (from the jwt_authn filter's metadata).
    pub(crate) subject: Option<String>,
    /// The API key's client id (the `x-apiguard-client-id` header the gateway sets).
    pub(crate) client_id: Option<String>,
    /// The client certificate's URI SAN (mTLS), e.g. a SPIFFE ID.
    pub(crate) peer_uri_san: Option<String>,
}

/// The request half of an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestContext {
    /// `GET`, `PATCH`, ... (from `:method`).
    pub(crate) method: String,
    /// The path without the query (from `:path`, percent-encoded as received).
    pub(crate) path: String,
    /// The raw query string without `?`; empty when none.
    pub(crate) query: String,
    /// Regular headers (pseudo-headers removed), names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    /// The client's IP address (attribute `source.address`, port removed).
    pub(crate) client_ip: Option<String>,
    /// The name of the Envoy route that matched (attribute `xds.route_name`).
    pub(crate) route: Option<String>,
    pub(crate) principal: Principal,
    /// The verified JWT's claims (empty without one).
    pub(crate) claims: Vec<(String, String)>,
}

/// What Envoy tells the sensor beside the headers: request attributes and the JWT payload's
/// subject. Plain strings; the gRPC layer reads them out of protobuf `Struct`s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) source_address: Option<String>,
    pub(crate) peer_uri_san: Option<String>,
    pub(crate) route_name: Option<String>,
    /// The verified JWT's claims ([`super::access_log::jwt_claims`]).
    pub(crate) jwt_claims: Vec<(String, String)>,
}

impl RequestContext {
    /// The context of a request with `headers` (pseudo-headers included, any case) and the
    /// attributes Envoy sent with them.
    pub(crate) fn new(headers: Vec<(String, String)>, attributes: Attributes) -> Self {
        let mut context = RequestContext::default();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                ":method" => context.method = value,
                ":path" => {
                    let (path, query) = value.split_once('?').unwrap_or((value.as_str(), ""));
                    context.path = path.to_string();
                    context.query = query.to_string();
                }
                _ if name.starts_with(':') => {}
                _ => context.headers.push((name, value)),
            }
        }
        let subject = attributes
            .jwt_claims
            .iter()
            .find(|(n, _)| n == "sub")
            .map(|(_, v)| v.clone());
        context.principal = Principal {
            subject: subject.filter(|s| !s.is_empty()),
            client_id: context
                .header(CLIENT_ID_HEADER)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            peer_uri_san: attributes.peer_uri_san.filter(|s| !s.is_empty()),
        };
        context.client_ip = attributes.source_address.as_deref().and_then(client_ip);
        context.route = attributes.route_name.filter(|s| !s.is_empty());
        context.claims = attributes.jwt_claims;
        context
    }

    /// Calls `f` with the request's caller as the detectors' keys.
    pub(crate) fn with_keys<R>(&self, f: impl FnOnce(&crate::detect::RequestKeys<'_>) -> R) -> R {
        crate::detect::keys::with_owned_keys(
            self.client_ip.as_deref(),
            self.principal.client_id.as_deref(),
            &self.claims,
            &self.headers,
            f,
        )
    }

    /// The first value of header `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:80` → `::1`; an address without a port is kept.
fn client_ip(address: &str) -> Option<String> {
    if address.is_empty() {
        return None;
    }
    match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => Some(socket.ip().to_string()),
        Err(_) => Some(address.to_string()),
    }
}

/// The response half of an exchange, once its headers arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// From `:status`; 0 when missing or not a number.
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
}

impl ResponseHead {
    pub(crate) fn new(headers: &[(String, String)]) -> Self {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        ResponseHead {
            status: find(":status").and_then(|s| s.parse().ok()).unwrap_or(0),
            content_type: find("content-type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_context_reads_pseudo_headers_and_the_principal() {
        let headers = pairs(&[
            (":method", "PATCH"),
            (":path", "/users/7?x=1&y=2"),
            (":authority", "api"),
            ("Content-Type", "application/json"),
            ("x-apiguard-client-id", "billing"),
        ]);
        let context = RequestContext::new(
            headers,
            Attributes {
                source_address: Some("10.1.2.3:45678".into()),
                peer_uri_san: Some("spiffe://td/ns/a/sa/b".into()),
                route_name: Some("users".into()),
                jwt_claims: vec![("sub".into(), "alice".into())],
            },
        );
        assert_eq!(context.method, "PATCH");
        assert_eq!(context.path, "/users/7");
        assert_eq!(context.query, "x=1&y=2");
        assert_eq!(context.content_type(), Some("application/json"));
        assert_eq!(context.client_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(context.route.as_deref(), Some("users"));
        assert_eq!(context.principal.subject.as_deref(), Some("alice"));
        assert_eq!(context.principal.client_id.as_deref(), Some("billing"));
        assert_eq!(
            context.principal.peer_uri_san.as_deref(),
            Some("spiffe://td/ns/a/sa/b")
        );
        assert!(context.headers.iter().all(|(n, _)| !n.starts_with(':')));
    }

    #[test]
    fn client_ip_handles_v6_and_missing_ports() {
        assert_eq!(client_ip("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(client_ip("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(client_ip(""), None);
    }

    #[test]
    fn response_head_tolerates_a_bad_status() {
        let head = ResponseHead::new(&pairs(&[(":status", "abc")]));
        assert_eq!(head.status, 0);
        let head = ResponseHead::new(&pairs(&[(":status", "201"), ("content-type", "x/y")]));
        assert_eq!(head.status, 201);
        assert_eq!(head.content_type.as_deref(), Some("x/y"));
    }
}
