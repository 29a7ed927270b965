//! One line of the gateway's JSON access log (`render::envoy::access_log_format`) as an
//! observation. The line is borrowed, not copied: `apiguard discover` reads a million lines a
//! second this way.

use super::Observation;
use super::sensitive::Sensitive;
use super::timestamp::parse_ms;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// The fields of a line the inventory reads; the others are skipped.
#[derive(Debug, Deserialize)]
pub struct AccessLogLine<'a> {
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "status")]
    status: Option<u16>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_cert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_content_type: Option<Cow<'a, str>>,
    /// `time`, parsed once by [`parse_line`].
    #[serde(skip)]
    at_unix_ms: i64,
}

/// Why a line is not an access-log line: the field and what is wrong, in the
/// `<field> <what is wrong>; <fix>` style (the caller adds `file:line`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}; {fix}")]
pub struct LineError {
    /// The field (`path`), or `line` for the whole line.
    pub field: &'static str,
    pub problem: String,
    pub fix: &'static str,
}

const FIX: &str = "give the gateway's JSON access log (audit.accessLog), one object per line";

fn error(field: &'static str, problem: impl Into<String>) -> LineError {
    LineError {
        field,
        problem: problem.into(),
        fix: FIX,
    }
}

/// Parses one line. Blank lines are the caller's to skip.
pub fn parse_line(line: &str) -> Result<AccessLogLine<'_>, LineError> {
    let mut parsed: AccessLogLine<'_> =
        serde_json::from_str(line).map_err(|e| explain(line, &e))?;
    for (field, value) in [
        ("time", &parsed.time),
        ("method", &parsed.method),
        ("path", &parsed.path),
    ] {
        if value.as_deref().is_none_or(str::is_empty) {
            return Err(error(field, "is missing"));
        }
    }
    parsed.at_unix_ms = match parsed.time.as_deref().and_then(parse_ms) {
        Some(ms) => ms,
        None => {
            let time = parsed.time.as_deref().unwrap_or("");
            return Err(error("time", format!("{time:?} is not an RFC 3339 time")));
        }
    };
    if parsed.status.is_none() {
        return Err(error("status", "is missing"));
    }
    Ok(parsed)
}

/// Names the field a line failed on (the slow path: only for a bad line).
fn explain(line: &str, e: &serde_json::Error) -> LineError {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        return error("line", format!("is not a JSON object ({e})"));
    };
    for field in [
        "time",
        "method",
        "path",
        "subject",
        "client_id",
        "client_cert",
        "response_content_type",
    ] {
        if let Some(v) = map.get(field)
            && !(v.is_string() || v.is_null())
        {
            return error(field, format!("is {v}, not a string"));
        }
    }
    match map.get("status") {
        Some(v) => error("status", format!("is {v}, not an HTTP status code")),
        None => error("line", e.to_string()),
    }
}

impl AccessLogLine<'_> {
    /// The observation of this request. The access log has no bodies: no sensitive data.
    pub fn observation(&self) -> Observation<'_> {
        let present =
            |v: &Option<Cow<'_, str>>| v.as_deref().is_some_and(|s| !s.is_empty() && s != "-");
        Observation {
            method: self.method.as_deref().unwrap_or(""),
            path: self.path.as_deref().unwrap_or(""),
            status: self.status.unwrap_or(0),
            authenticated: present(&self.subject)
                || present(&self.client_id)
                || present(&self.client_cert),
            content_type: self.response_content_type.as_deref().filter(|c| *c != "-"),
            at_unix_ms: self.at_unix_ms,
            sensitive: Sensitive::NONE,
        }
    }
}

/// `%RESPONSE_CODE%` is a number in Envoy's JSON format; a string is taken too.
fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    struct StatusVisitor;
    impl Visitor<'_> for StatusVisitor {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an HTTP status code")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u16::try_from(v)
                .ok()
                .filter(|v| *v < 1000)
                .map(Some)
                .ok_or_else(|| E::custom("not an HTTP status code"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let n: u64 = v
                .parse()
                .map_err(|_| E::custom("not an HTTP status code"))?;
            self.visit_u64(n)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(StatusVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const LINE: &str = r#"{"time":"2026-12-03T06:47:53.123Z","client":"10.0.0.1","method":"GET","path":"/users/123?x=1","authority":"api.example","rule":"get-user","status":200,"subject":"alice","client_id":null,"client_cert":null,"decision":"allow","reason":"via_upstream","response_flags":"-","duration_ms":3,"request_id":"r1","response_content_type":"application/json"}"#;

    #[test]
    fn a_gateway_line() {
        let line = parse_line(LINE).unwrap();
        let o = line.observation();
        assert_eq!((o.method, o.path, o.status), ("GET", "/users/123?x=1", 200));
        assert!(o.authenticated);
        assert_eq!(o.content_type, Some("application/json"));
        assert_eq!(o.at_unix_ms, parse_ms("2026-12-03T06:47:53.123Z").unwrap());
    }

    #[rstest]
    #[case(r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":"/","status":"404","subject":"-","client_id":""}"#, false, 404)]
    #[case(r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":"/","status":0,"client_cert":"spiffe://x/y"}"#, true, 0)]
    fn identities_and_statuses(
        #[case] line: &str,
        #[case] authenticated: bool,
        #[case] status: u16,
    ) {
        let line = parse_line(line).unwrap();
        let o = line.observation();
        assert_eq!((o.authenticated, o.status), (authenticated, status));
    }

    #[rstest]
    #[case("not json", "line")]
    #[case("[1]", "line")]
    #[case(
        r#"{"time":"2026-12-03T06:47:53Z","method":"GET","status":200}"#,
        "path"
    )]
    #[case(
        r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":7,"status":200}"#,
        "path"
    )]
    #[case(r#"{"time":"later","method":"GET","path":"/","status":200}"#, "time")]
    #[case(
        r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":"/","status":"ok"}"#,
        "status"
    )]
    #[case(
        r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":"/","status":70000}"#,
        "status"
    )]
    #[case(
        r#"{"time":"2026-12-03T06:47:53Z","method":"GET","path":"/"}"#,
        "status"
    )]
    fn bad_lines_name_the_field(#[case] line: &str, #[case] field: &str) {
        let e = parse_line(line).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
}
