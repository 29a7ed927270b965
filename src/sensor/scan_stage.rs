//! The sensitive-data stage (`spec.discovery.sensitiveData`): JSON response bodies scanned with
//! [`classify`], per endpoint, as the mode says (Sampled: the 1st, 11th, 21st, ... JSON
//! response of each endpoint; All: every one). The pick is made at the response headers, so
//! the body of a response not picked is not even sent by Envoy (see
//! [`Stage::wants_response_body`]). What it found goes out as an
//! [`Event::Sensitive`]: the edge adds the classes to the discovery inventory (without counting
//! a request: the access log entry of the exchange counts it) and to
//! `apiguard_sensitive_responses_total`. The body is never kept, and no value leaves the stage:
//! only classes and counts.
//!
//! It runs after the contract stage, so it scans the body the client receives: with
//! `responses: Redact`, a property the contract removed never reaches the client, so it is not
//! an exposure and is not counted; with `responses: Audit` the body is unchanged and scanned as
//! sent.
//!
//! Observation only: the stage always answers [`Action::Continue`].

use super::pipeline::{Action, Event, Exchange, Stage};
use crate::api::SensitiveDataMode;
use crate::discovery::inventory::endpoint_key;
use crate::discovery::{Declared, MAX_ENDPOINTS, classify};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Sampled: one scannable response in this many, per endpoint.
pub(crate) const SAMPLE_EVERY: u64 = 10;

pub(crate) struct ScanStage {
    /// Sampled or All (Off builds no stage).
    mode: SensitiveDataMode,
    /// The declared endpoints, so a sample is per endpoint as the inventory keys it.
    declared: Declared,
    /// Larger bodies are not scanned (`maxResponseBytes`; the edge buffers one byte more).
    max_bytes: usize,
    sampler: Mutex<Sampler>,
}

/// Scannable responses seen per endpoint (`GET /users/{id}`), bounded like the inventory:
/// endpoints past [`MAX_ENDPOINTS`] share one counter.
#[derive(Default)]
struct Sampler {
    seen: HashMap<String, u64>,
    overflow: u64,
}

impl Sampler {
    /// Counts one response of `key`; true for the 1st, 11th, 21st, ...
    fn pick(&mut self, key: String) -> bool {
        let full = self.seen.len() >= MAX_ENDPOINTS;
        let n = match self.seen.get_mut(&key) {
            Some(n) => n,
            None if full => &mut self.overflow,
            None => self.seen.entry(key).or_default(),
        };
        let picked = (*n).is_multiple_of(SAMPLE_EVERY);
        *n += 1;
        picked
    }
}

/// `application/json` or any `+json` type (`application/problem+json`), parameters ignored.
pub(crate) fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

impl ScanStage {
    /// None for `Off`.
    pub(crate) fn new(
        mode: SensitiveDataMode,
        declared: Declared,
        max_bytes: usize,
    ) -> Option<Self> {
        (mode != SensitiveDataMode::Off).then(|| ScanStage {
            mode,
            declared,
            max_bytes,
            sampler: Mutex::new(Sampler::default()),
        })
    }

    fn picked(&self, method: &str, path: &str) -> bool {
        match self.mode {
            SensitiveDataMode::All => true,
            SensitiveDataMode::Off => false,
            SensitiveDataMode::Sampled => {
                let key = endpoint_key(&self.declared, method, path);
                self.sampler
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pick(key)
            }
        }
    }
}

impl Stage for ScanStage {
    /// Picks the response at its headers: JSON, and in the sample. A response that is not
    /// JSON is not scanned and does not count toward the sample.
    fn response_headers(&self, exchange: &mut Exchange, _events: &mut Vec<Event>) -> Action {
        let json = exchange
            .response
            .as_ref()
            .is_some_and(|head| is_json(head.content_type.as_deref()));
        let request = &exchange.request;
        exchange.scan_response =
            json && !request.method.is_empty() && self.picked(&request.method, &request.path);
        Action::Continue
    }

    /// Only the picked responses: for the others, Envoy need not send the body at all.
    fn wants_response_body(&self, exchange: &Exchange) -> bool {
        exchange.scan_response
    }

    /// A picked body larger than `maxResponseBytes` (`body` None when the edge did not
    /// buffer it all) is not scanned.
    fn response_body(
        &self,
        exchange: &mut Exchange,
        body: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Action {
        if !exchange.scan_response {
            return Action::Continue;
        }
        let Some(body) = body.filter(|b| b.len() <= self.max_bytes) else {
            return Action::Continue;
        };
        let request = &exchange.request;
        events.push(Event::Sensitive {
            method: request.method.clone(),
            path: request.path.clone(),
            found: classify(body),
        });
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            " Application/JSON ",
            "application/problem+json",
            "application/merge-patch+json;v=1",
        ] {
            assert!(is_json(Some(ct)), "{ct}");
        }
        for ct in [
            "text/plain",
            "text/json+html",
            "application/jsonl",
            "application/x-ndjson",
            "",
        ] {
            assert!(!is_json(Some(ct)), "{ct}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn the_sampler_is_per_endpoint_and_bounded() {
        let mut s = Sampler::default();
        let picks: Vec<bool> = (0..21).map(|_| s.pick("GET /a".into())).collect();
        let at: Vec<usize> = (0..21).filter(|i| picks[*i]).collect();
        assert_eq!(at, [0, 10, 20]);
        assert!(s.pick("GET /b".into()), "a new endpoint starts at its 1st");
        for i in 0..MAX_ENDPOINTS {
            s.pick(format!("GET /e{i}"));
        }
        assert_eq!(s.seen.len(), MAX_ENDPOINTS);
        // Past the bound, new endpoints share one counter (still one in ten).
        let shared: usize = (0..20).filter(|i| s.pick(format!("GET /late{i}"))).count();
        assert_eq!(shared, 2);
        assert_eq!(s.seen.len(), MAX_ENDPOINTS);
    }
}
