//! The classes of sensitive data in a response body (JSON or text): counts per class, never
//! the values. One `RegexSet` pass says which classes may be present; only those are scanned
//! again to count and check the candidates (Luhn for cards, ISO 13616 mod-97 for IBANs, the
//! reserved ranges of a US SSN).

use regex::bytes::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// A class of sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveClass {
    /// An e-mail address.
    Email,
    /// A payment card number: 13–19 digits (spaces or dashes allowed) with a valid Luhn digit.
    PaymentCard,
    /// An IBAN with a valid ISO 13616 mod-97 check.
    Iban,
    /// A national identifier pattern (a US SSN `123-45-6789` outside the never-issued ranges).
    NationalId,
    /// An E.164-like phone number (`+` and 8–15 digits).
    Phone,
    /// A JSON Web Token (`eyJ...`.`eyJ...`.`...`).
    Jwt,
    /// A PEM private key (`-----BEGIN ... PRIVATE KEY-----`).
    PrivateKey,
    /// A cloud access key: AWS (`AKIA`/`ASIA`... ids), a GCP service-account key file, a
    /// Google API key, GitHub and Slack tokens.
    CloudKey,
}

impl SensitiveClass {
    /// Every class, in report order.
    pub const ALL: [SensitiveClass; 8] = [
        SensitiveClass::Email,
        SensitiveClass::PaymentCard,
        SensitiveClass::Iban,
        SensitiveClass::NationalId,
        SensitiveClass::Phone,
        SensitiveClass::Jwt,
        SensitiveClass::PrivateKey,
        SensitiveClass::CloudKey,
    ];

    /// The name in reports (`payment_card`).
    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveClass::Email => "email",
            SensitiveClass::PaymentCard => "payment_card",
            SensitiveClass::Iban => "iban",
            SensitiveClass::NationalId => "national_id",
            SensitiveClass::Phone => "phone",
            SensitiveClass::Jwt => "jwt",
            SensitiveClass::PrivateKey => "private_key",
            SensitiveClass::CloudKey => "cloud_key",
        }
    }
}

/// How many values of each class one body held. No value is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sensitive([u32; SensitiveClass::ALL.len()]);

impl Sensitive {
    /// Nothing sensitive (what an access-log observation carries: it has no body).
    pub const NONE: Sensitive = Sensitive([0; SensitiveClass::ALL.len()]);

    /// The count of one class.
    pub fn count(&self, class: SensitiveClass) -> u32 {
        self.0[class as usize]
    }

    /// The classes present, with their counts.
    pub fn classes(&self) -> impl Iterator<Item = (SensitiveClass, u32)> + '_ {
        SensitiveClass::ALL
            .into_iter()
            .map(|c| (c, self.0[c as usize]))
            .filter(|(_, n)| *n > 0)
    }

    /// Whether no class was seen.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    /// Counts one value of `class` (for a caller with its own detector).
    pub fn add(&mut self, class: SensitiveClass, n: u32) {
        let slot = &mut self.0[class as usize];
        *slot = slot.saturating_add(n);
    }
}

/// One pattern per class, in [`SensitiveClass::ALL`] order; a candidate is then checked.
const PATTERNS: [&str; 8] = [
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
    r"(?:^|[^0-9A-Za-z])((?:[0-9][ -]?){12,18}[0-9])(?:$|[^0-9A-Za-z])",
    r"(?:^|[^0-9A-Za-z])([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30})(?:$|[^0-9A-Za-z])",
    r"(?:^|[^0-9A-Za-z-])([0-9]{3})-([0-9]{2})-([0-9]{4})(?:$|[^0-9A-Za-z-])",
    r"(?:^|[^0-9A-Za-z+])\+[1-9](?:[ -]?[0-9]){7,14}(?:$|[^0-9A-Za-z])",
    r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{0,}",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    r#"(?:^|[^A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}(?:$|[^A-Z0-9])|"type"\s*:\s*"service_account"|AIza[0-9A-Za-z_-]{35}|gh[pousr]_[A-Za-z0-9]{36}|xox[abposr]-[A-Za-z0-9-]{10,}"#,
];

struct Detectors {
    any: RegexSet,
    each: Vec<Regex>,
}

static DETECTORS: LazyLock<Detectors> = LazyLock::new(|| Detectors {
    any: RegexSet::new(PATTERNS).expect("the sensitive-data patterns compile"),
    each: PATTERNS
        .iter()
        .map(|p| Regex::new(p).expect("a sensitive-data pattern compiles"))
        .collect(),
});

/// The classes of sensitive data in a body, counted. Bodies are scanned as bytes (JSON, text,
/// or anything else); the caller bounds how much of a body it passes.
pub fn classify(body: &[u8]) -> Sensitive {
    let d = &*DETECTORS;
    let mut out = Sensitive::NONE;
    for i in d.any.matches(body).iter() {
        let class = SensitiveClass::ALL[i];
        let n = count(&d.each[i], class, body);
        out.add(class, n);
    }
    out
}

/// Counts the candidates of one class that pass its check. Patterns with a leading boundary
/// consume one byte, so a candidate right after another is still found by restarting there.
fn count(re: &Regex, class: SensitiveClass, body: &[u8]) -> u32 {
    let mut n = 0u32;
    let mut at = 0;
    while let Some(c) = re.captures_at(body, at) {
        let whole = c.get(0).expect("group 0");
        let valid = match class {
            SensitiveClass::PaymentCard => luhn_card(&c[1]),
            SensitiveClass::Iban => iban_valid(&c[1]),
            SensitiveClass::NationalId => ssn_valid(&c[1], &c[2], &c[3]),
            _ => true,
        };
        n += u32::from(valid);
        // Step back over the trailing boundary byte so the next candidate may start there.
        at = if whole.end() > whole.start() + 1 {
            whole.end() - 1
        } else {
            whole.end() + 1
        }
        .max(whole.start() + 1);
        if at > body.len() {
            break;
        }
    }
    n
}

/// 13–19 digits (separators ignored) with a valid Luhn check digit.
pub fn luhn_card(candidate: &[u8]) -> bool {
    let digits: Vec<u8> = candidate
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    luhn(&digits)
}

/// The Luhn mod-10 check over digits (the last one is the check digit).
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: 15–34 characters (spaces ignored), country letters, check digits, and the
/// rearranged number mod 97 equal to 1.
pub fn iban_valid(candidate: &[u8]) -> bool {
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, rest) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for b in rest.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// A US SSN outside the never-issued ranges (area 000, 666, 900–999; group 00; serial 0000).
fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn classes(body: &str) -> Vec<(SensitiveClass, u32)> {
        classify(body.as_bytes()).classes().collect()
    }

    #[rstest]
    #[case(r#"{"email":"ada@example.com"}"#, SensitiveClass::Email)]
    #[case(r#"{"card":"4111 1111 1111 1111"}"#, SensitiveClass::PaymentCard)]
    #[case(r#"{"card":4111111111111111}"#, SensitiveClass::PaymentCard)]
    #[case("pan=5500-0000-0000-0004;", SensitiveClass::PaymentCard)]
    #[case(r#"{"iban":"DE89370400440532013000"}"#, SensitiveClass::Iban)]
    #[case("IBAN GB82 WEST 1234 5698 7654 32.", SensitiveClass::Iban)]
    #[case(r#"{"ssn":"123-45-6789"}"#, SensitiveClass::NationalId)]
    #[case(r#"{"phone":"+44 20 7946 0958"}"#, SensitiveClass::Phone)]
    #[case(r#"{"phone":"+14155552671"}"#, SensitiveClass::Phone)]
    #[case(
        r#"{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"}"#,
        SensitiveClass::Jwt
    )]
    #[case("-----BEGIN RSA PRIVATE KEY-----\nMIIB...", SensitiveClass::PrivateKey)]
    #[case("-----BEGIN PRIVATE KEY-----", SensitiveClass::PrivateKey)]
    #[case(r#"{"key":"AKIAIOSFODNN7EXAMPLE"}"#, SensitiveClass::CloudKey)]
    #[case(
        r#"{"type": "service_account", "private_key_id": "x"}"#,
        SensitiveClass::CloudKey
    )]
    fn each_class_is_found(#[case] body: &str, #[case] class: SensitiveClass) {
        assert_eq!(classes(body), vec![(class, 1)], "{body}");
    }

    #[rstest]
    #[case(r#"{"card":"4111111111111112"}"#)] // bad Luhn
    #[case(r#"{"id":"0000000000000000"}"#)] // one repeated digit
    #[case(r#"{"iban":"DE89370400440532013001"}"#)] // bad mod-97
    #[case(r#"{"ssn":"000-45-6789"}"#)]
    #[case(r#"{"ssn":"666-45-6789"}"#)]
    #[case(r#"{"ssn":"923-45-6789"}"#)]
    #[case(r#"{"date":"2026-12-03","n":42,"name":"Ada"}"#)]
    #[case(r#"{"public":"-----BEGIN PUBLIC KEY-----"}"#)]
    #[case("")]
    fn look_alikes_are_not_sensitive(#[case] body: &str) {
        assert_eq!(classes(body), vec![], "{body}");
    }

    #[test]
    fn counts_every_value_and_keeps_none() {
        let body = r#"[{"e":"a@x.io","c":"4111111111111111"},{"e":"b@y.io","c":"5500000000000004"},{"e":"c@z.io"}]"#;
        let found = classify(body.as_bytes());
        assert_eq!(found.count(SensitiveClass::Email), 3);
        assert_eq!(found.count(SensitiveClass::PaymentCard), 2);
        let printed = format!("{found:?}");
        assert!(!printed.contains("a@x.io") && !printed.contains("4111"));
    }

    #[test]
    fn adjacent_candidates_are_each_counted() {
        let body = "123-45-6789 123-45-6780,4111111111111111 4111111111111111";
        let found = classify(body.as_bytes());
        assert_eq!(found.count(SensitiveClass::NationalId), 2);
        assert_eq!(found.count(SensitiveClass::PaymentCard), 2);
    }

    #[rstest]
    #[case("4111111111111111", true)]
    #[case("79927398713", true)]
    #[case("79927398710", false)]
    fn luhn_check(#[case] digits: &str, #[case] ok: bool) {
        let d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
        assert_eq!(luhn(&d), ok);
    }

    #[rstest]
    #[case("GB82WEST12345698765432", true)]
    #[case("GB82 WEST 1234 5698 7654 32", true)]
    #[case("FR1420041010050500013M02606", true)]
    #[case("NL91ABNA0417164300", true)]
    #[case("NL91ABNA0417164301", false)]
    #[case("GB82WEST", false)]
    fn iban_check(#[case] iban: &str, #[case] ok: bool) {
        assert_eq!(iban_valid(iban.as_bytes()), ok);
    }

    proptest! {
        #[test]
        fn classify_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = classify(&body);
        }

        /// A Luhn-valid number made by appending its check digit is always a card.
        #[test]
        fn generated_cards_are_found(prefix in "[1-9][0-9]{11,17}") {
            let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            d.push(0);
            let check = (0..10).find(|c| { *d.last_mut().unwrap() = *c; luhn(&d) }).unwrap();
            *d.last_mut().unwrap() = check;
            prop_assume!(!d.iter().all(|x| *x == d[0]));
            let card: String = d.iter().map(|x| char::from(b'0' + x)).collect();
            let body = format!("{{\"pan\":\"{card}\"}}");
            prop_assert_eq!(classify(body.as_bytes()).count(SensitiveClass::PaymentCard), 1);
        }
    }
}
