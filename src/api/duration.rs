//! Durations as written in policies: `30s`, `5m`, `1h30m`, `250ms`.

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected <number><unit> pairs with unit ms, s, m or h, e.g. 30s, 5m, 1h30m"
)]
pub(crate) struct DurationError {
    pub input: String,
}

/// Parses `<number><unit>` pairs (units `ms`, `s`, `m`, `h`), matching the CRD pattern
/// [`super::policy::DURATION_PATTERN`].
pub(crate) fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let bytes = input.as_bytes();
    if bytes.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err());
        }
        let value: u64 = input[start..i].parse().map_err(|_| err())?;
        let unit = if input[i..].starts_with("ms") {
            i += 2;
            Duration::from_millis(value)
        } else {
            let d = match bytes.get(i) {
                Some(b's') => Duration::from_secs(value),
                Some(b'm') => Duration::from_secs(value.checked_mul(60).ok_or_else(err)?),
                Some(b'h') => Duration::from_secs(value.checked_mul(3600).ok_or_else(err)?),
                _ => return Err(err()),
            };
            i += 1;
            d
        };
        total = total.checked_add(unit).ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("30s", 30_000)]
    #[case("5m", 300_000)]
    #[case("1h30m", 5_400_000)]
    #[case("250ms", 250)]
    #[case("1m500ms", 60_500)]
    fn parses(#[case] input: &str, #[case] ms: u128) {
        assert_eq!(parse_duration(input).map(|d| d.as_millis()), Ok(ms));
    }

    #[rstest]
    #[case("")]
    #[case("5")]
    #[case("m5")]
    #[case("5d")]
    #[case("-5s")]
    #[case("99999999999999999999h")]
    fn rejects(#[case] input: &str) {
        let e = parse_duration(input).unwrap_err();
        assert!(e.to_string().contains(input));
    }

    #[test]
    fn pattern_agrees_with_parser() {
        let re = regex::Regex::new(crate::api::policy::DURATION_PATTERN).unwrap();
        for s in ["30s", "1h30m", "250ms", "5", "5d", "", "h"] {
            assert_eq!(re.is_match(s), parse_duration(s).is_ok(), "{s}");
        }
    }
}
