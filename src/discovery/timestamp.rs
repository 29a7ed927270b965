//! Times in the inventory: Unix milliseconds inside, RFC 3339 (UTC) in reports and logs.

use jiff::Timestamp;

/// Parses an RFC 3339 time (Envoy's `%START_TIME%`: `2026-12-03T06:47:53.123Z`).
pub(crate) fn parse_ms(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// `1970-01-01T00:00:01Z`, with milliseconds when there are some.
pub(crate) fn format_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ms = parse_ms("2026-12-03T06:47:53.123Z").unwrap();
        assert_eq!(format_ms(ms), "2026-12-03T06:47:53.123Z");
        assert_eq!(
            parse_ms("2026-12-03T07:47:53+01:00"),
            parse_ms("2026-12-03T06:47:53Z")
        );
        assert_eq!(parse_ms("yesterday"), None);
    }
}
