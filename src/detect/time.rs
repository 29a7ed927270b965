//! Times in detections: Unix milliseconds inside, RFC 3339 (UTC) in JSON.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serializer};

/// `2026-12-03T06:47:53.123Z` (milliseconds only when there are some); `-` when out of range.
pub(crate) fn format_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "-".into())
}

fn parse_ms<'de, D: Deserializer<'de>>(text: &str) -> Result<i64, D::Error> {
    text.parse::<Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(serde::de::Error::custom)
}

/// `#[serde(with = "...")]` for an `i64` of Unix milliseconds.
pub(crate) mod rfc3339 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ms(*ms))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        parse_ms::<D>(&text)
    }
}

/// `#[serde(with = "...")]` for an `Option<i64>` of Unix milliseconds.
pub(crate) mod rfc3339_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_some(&format_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_ms::<D>(&text).map(Some),
            None => Ok(None),
        }
    }
}
