//! A request's identity attributes and the keys detectors count them by. Claim values, API-key
//! client ids and header values are only ever kept and shown as the first 64 bits of their
//! SHA-256 (`sha256:` and 16 hex digits); a client IP is shown as given.

use crate::detect::config::KeyKind;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// What a request says about its caller, borrowed from it. Also the request-time input of
/// [`crate::detect::Engine::blocked`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestKeys<'a> {
    /// The client address Envoy saw (`203.0.113.7`, `2001:db8::1`).
    pub client_ip: Option<&'a str>,
    /// The client id of the request's API key.
    pub api_key_client: Option<&'a str>,
    /// Claims of the verified JWT, as `(name, value)` (values as strings).
    pub claims: &'a [(&'a str, &'a str)],
    /// Request headers, as `(name, value)`; names compared case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Calls `f` with the keys of owned attributes (claims and headers as `(name, value)`
/// strings), for callers that keep them as `String`s (the sensor's request and access log).
pub fn with_owned_keys<R>(
    client_ip: Option<&str>,
    api_key_client: Option<&str>,
    claims: &[(String, String)],
    headers: &[(String, String)],
    f: impl FnOnce(&RequestKeys<'_>) -> R,
) -> R {
    let claims: Vec<(&str, &str)> = claims
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    f(&RequestKeys {
        client_ip,
        api_key_client,
        claims: &claims,
        headers: &headers,
    })
}

impl<'a> RequestKeys<'a> {
    /// A claim's value.
    pub fn claim(&self, name: &str) -> Option<&'a str> {
        self.claims
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// A header's first value.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The raw attribute a key kind reads; `None` when the request has none (or it is empty).
    fn raw(&self, kind: &KeyKind) -> Option<&'a str> {
        match kind {
            KeyKind::ClientIp => self.client_ip,
            KeyKind::Claim(n) => self.claim(n),
            KeyKind::ApiKey => self.api_key_client,
            KeyKind::Header(n) => self.header(n),
        }
        .filter(|v| !v.is_empty())
    }
}

/// The first 64 bits of a value's SHA-256, big-endian: shown as [`shown_hash`].
pub fn hash_value(value: &str) -> u64 {
    let digest = Sha256::digest(value.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// `sha256:` and the first 16 hex digits of the SHA-256: what `printf %s VALUE | sha256sum`
/// starts with.
pub fn shown_hash(hash: u64) -> String {
    format!("sha256:{hash:016x}")
}

/// The key of a client address: an IPv4 address (or IPv4-mapped IPv6) is its 32 bits, with no
/// collision; any other address is hashed (SHA-256 of its canonical 16 bytes, so `2001:db8::1`
/// and `2001:0db8:0::1` are one key), and text that is not an address is hashed as text.
fn ip_key(ip: &str) -> u64 {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => u64::from(u32::from(v4)),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => {
                let digest = Sha256::digest(v6.octets());
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                // Above 2^32: never one of the IPv4 keys.
                u64::from_be_bytes(first) | (1 << 63)
            }
        },
        Err(_) => hash_value(ip) | (1 << 63),
    }
}

/// A request's key for a detector, and how it is shown; `None`: the request has no such
/// attribute and the detector does not count it.
pub(crate) fn key_of(kind: &KeyKind, keys: &RequestKeys<'_>) -> Option<u64> {
    let raw = keys.raw(kind)?;
    Some(match kind {
        KeyKind::ClientIp => ip_key(raw),
        KeyKind::Claim(_) | KeyKind::ApiKey | KeyKind::Header(_) => hash_value(raw),
    })
}

/// The key a shown key stands for (the inverse of [`shown`]): a client IP is keyed again, a
/// `sha256:` and 16 hex digits is the hash itself. None for text that is neither.
pub(crate) fn key_of_shown(kind: &KeyKind, shown: &str) -> Option<u64> {
    match kind {
        KeyKind::ClientIp => (!shown.is_empty()).then(|| ip_key(shown)),
        KeyKind::Claim(_) | KeyKind::ApiKey | KeyKind::Header(_) => {
            let hex = shown.strip_prefix("sha256:")?;
            (hex.len() == 16)
                .then(|| u64::from_str_radix(hex, 16).ok())
                .flatten()
        }
    }
}

/// How a key is shown: the client IP as given, anything else as its hash.
pub(crate) fn shown(kind: &KeyKind, keys: &RequestKeys<'_>, key: u64) -> String {
    match (kind, keys.raw(kind)) {
        (KeyKind::ClientIp, Some(ip)) => ip.chars().take(64).collect(),
        _ => shown_hash(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_the_sha256_prefix() {
        // printf %s alice | sha256sum
        assert_eq!(shown_hash(hash_value("alice")), "sha256:2bd806c97f0e00af");
    }

    #[test]
    fn addresses_are_keyed_canonically() {
        assert_eq!(ip_key("10.0.0.1"), 0x0a00_0001);
        assert_eq!(ip_key("::ffff:10.0.0.1"), 0x0a00_0001);
        assert_eq!(ip_key("2001:db8::1"), ip_key("2001:0db8:0::1"));
        assert_ne!(ip_key("2001:db8::1"), ip_key("2001:db8::2"));
        assert!(ip_key("not an ip") > u64::from(u32::MAX));
    }

    #[test]
    fn attributes_are_looked_up() {
        let claims = [("sub", "alice"), ("tenant", "")];
        let headers = [("X-Tenant", "acme")];
        let keys = RequestKeys {
            client_ip: Some("10.0.0.1"),
            api_key_client: None,
            claims: &claims,
            headers: &headers,
        };
        assert_eq!(
            key_of(&KeyKind::Claim("sub".into()), &keys),
            Some(hash_value("alice"))
        );
        assert_eq!(key_of(&KeyKind::Claim("tenant".into()), &keys), None);
        assert_eq!(key_of(&KeyKind::ApiKey, &keys), None);
        assert_eq!(
            key_of(&KeyKind::Header("x-tenant".into()), &keys),
            Some(hash_value("acme"))
        );
        let k = key_of(&KeyKind::ClientIp, &keys).unwrap();
        assert_eq!(shown(&KeyKind::ClientIp, &keys, k), "10.0.0.1");
        assert_eq!(key_of_shown(&KeyKind::ClientIp, "10.0.0.1"), Some(k));
        let sub = KeyKind::Claim("sub".into());
        let k = key_of(&sub, &keys).unwrap();
        assert_eq!(key_of_shown(&sub, &shown(&sub, &keys, k)), Some(k));
        assert_eq!(key_of_shown(&sub, "alice"), None);
        assert_eq!(key_of_shown(&sub, "sha256:xyz"), None);
        let k = key_of(&KeyKind::Claim("sub".into()), &keys).unwrap();
        assert_eq!(
            shown(&KeyKind::Claim("sub".into()), &keys, k),
            shown_hash(hash_value("alice"))
        );
    }
}
