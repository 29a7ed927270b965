//! Per-endpoint traffic baselines: requests per minute, learned as an exponentially weighted
//! mean and variance; a sustained deviation raises one [`Anomaly`]. Alerts only.
//!
//! The maths, per endpoint and closed minute with `x` requests (minutes without requests
//! count, as 0):
//!
//! - **learning** (the first [`BaselineConfig::learning_minutes`]): `x` is learned with weight
//!   `max(1/(n+1), alpha)` (the plain mean and variance of the first minutes), no alerts;
//! - then `sigma = max(sqrt(var), sqrt(mean), 1)` (never below Poisson noise) and the minute
//!   **deviates** when `x > mean + z * sigma` **and** `x >= min_factor * mean` **and**
//!   `x >= min_rate`, `z` from the [`Sensitivity`];
//! - a normal minute is learned with weight `alpha`; a deviating one is learned as if it were
//!   `mean + z * sigma` (clamped to the threshold) at a tenth of `alpha`, so a long attack
//!   moves the baseline slowly instead of becoming normal;
//! - [`BaselineConfig::sustain_minutes`] deviating minutes in a row raise one [`Anomaly`]
//!   (factor: their mean rate over the baseline mean); the endpoint raises none again until
//!   [`BaselineConfig::rearm_minutes`] normal minutes in a row.
//!
//! Learning is `mean += alpha * d; var = (1 - alpha) * (var + alpha * d * d)` with
//! `d = x - mean` (the exponentially weighted variance).

use crate::detect::config::ConfigError;
use crate::detect::time::rfc3339;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

const MINUTE_MS: i64 = 60_000;
/// An endpoint idle for longer than this many minutes starts learning again.
const MAX_GAP_MINUTES: i64 = 180;
/// The longest `METHOD path` an endpoint may be (longer ones are counted as overflow).
const MAX_ENDPOINT_LEN: usize = 512;
/// Anomalies kept for [`Baseline::recent`].
const RECENT: usize = 100;

/// How readily a deviation is an anomaly: the `z` of `mean + z * sigma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Sensitivity {
    /// `z = 6`.
    Low,
    /// `z = 4`.
    #[default]
    Medium,
    /// `z = 3`.
    High,
}

impl Sensitivity {
    /// The standard deviations above the mean a minute must be.
    pub fn z(self) -> f64 {
        match self {
            Sensitivity::Low => 6.0,
            Sensitivity::Medium => 4.0,
            Sensitivity::High => 3.0,
        }
    }
}

/// `spec.runtime.baseline` and the baseline's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineConfig {
    /// `sensitivity`.
    pub sensitivity: Sensitivity,
    /// Minutes of data learned before any alert (30).
    pub learning_minutes: u32,
    /// Deviating minutes in a row that make an anomaly (3).
    pub sustain_minutes: u32,
    /// A deviating minute is at least this many times the mean (3.0).
    pub min_factor: f64,
    /// A deviating minute has at least this many requests (20).
    pub min_rate: u64,
    /// Normal minutes in a row after an anomaly before the endpoint may raise another (15).
    pub rearm_minutes: u32,
    /// The weight of a normal minute (1/30: about half an hour of memory).
    pub alpha: f64,
    /// Endpoints tracked (1,000, as the discovery inventory); more are counted as overflow.
    pub max_endpoints: usize,
    /// An endpoint without requests for this many minutes is forgotten (1,440: a day).
    pub forget_after_minutes: u32,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            sensitivity: Sensitivity::Medium,
            learning_minutes: 30,
            sustain_minutes: 3,
            min_factor: 3.0,
            min_rate: 20,
            rearm_minutes: 15,
            alpha: 1.0 / 30.0,
            max_endpoints: 1_000,
            forget_after_minutes: 24 * 60,
        }
    }
}

impl BaselineConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| {
            Err(ConfigError {
                field: format!("runtime.baseline.{field}"),
                message: message.to_string(),
            })
        };
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return bad("alpha", "must be in (0, 1]");
        }
        if !(self.min_factor.is_finite() && self.min_factor >= 1.0) {
            return bad("minFactor", "must be a number of at least 1");
        }
        if self.sustain_minutes == 0 || self.sustain_minutes > 60 {
            return bad("sustainMinutes", "must be 1 to 60");
        }
        if self.learning_minutes > 7 * 24 * 60 {
            return bad("learningMinutes", "must be at most 7 days");
        }
        if self.forget_after_minutes == 0 {
            return bad("forgetAfterMinutes", "must be at least 1");
        }
        Ok(())
    }
}

/// An endpoint's traffic deviated for several minutes in a row. Alert only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    /// `METHOD path` (`GET /users/{userId}`), as given.
    pub endpoint: String,
    /// The deviating minutes' mean rate over the baseline mean, one decimal.
    pub factor: f64,
    /// The deviating minutes' mean rate, requests per minute.
    pub rate_per_minute: f64,
    /// The baseline mean, requests per minute.
    pub baseline_per_minute: f64,
    /// Deviating minutes in a row when it was raised.
    pub minutes: u32,
    /// The end of the last deviating minute.
    #[serde(rename = "at", with = "rfc3339")]
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct EndpointState {
    /// The open minute and its requests.
    minute: i64,
    count: u64,
    /// Minutes learned.
    learned: u32,
    mean: f64,
    var: f64,
    /// Deviating minutes in a row, and their requests.
    streak: u32,
    streak_sum: u64,
    /// An anomaly was raised and the endpoint is not back to normal yet.
    alerted: bool,
    /// Normal minutes in a row since the anomaly.
    calm: u32,
    /// The minute of the last request.
    last_seen: i64,
}

impl EndpointState {
    fn learn(&mut self, x: f64, alpha: f64) {
        let d = x - self.mean;
        self.mean += alpha * d;
        self.var = ((1.0 - alpha) * (self.var + alpha * d * d)).max(0.0);
    }

    /// Closes the open minute; an anomaly when it completes one.
    fn close(&mut self, c: &BaselineConfig, endpoint: &str) -> Option<Anomaly> {
        let x = self.count;
        let minute = self.minute;
        self.minute = self.minute.saturating_add(1);
        self.count = 0;
        let xf = x as f64;
        if self.learned < c.learning_minutes {
            let alpha = (1.0 / f64::from(self.learned.saturating_add(1))).max(c.alpha);
            self.learn(xf, alpha);
            self.learned = self.learned.saturating_add(1);
            return None;
        }
        let sigma = self.var.sqrt().max(self.mean.sqrt()).max(1.0);
        let threshold = self.mean + c.sensitivity.z() * sigma;
        let deviating = xf > threshold && xf >= c.min_factor * self.mean && x >= c.min_rate;
        if !deviating {
            self.streak = 0;
            self.streak_sum = 0;
            self.learn(xf, c.alpha);
            if self.alerted {
                self.calm = self.calm.saturating_add(1);
                if self.calm >= c.rearm_minutes {
                    self.alerted = false;
                }
            }
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        self.streak_sum = self.streak_sum.saturating_add(x);
        self.calm = 0;
        let mean = self.mean;
        self.learn(threshold, c.alpha / 10.0);
        if self.streak < c.sustain_minutes || self.alerted {
            return None;
        }
        self.alerted = true;
        let rate = self.streak_sum as f64 / f64::from(self.streak);
        Some(Anomaly {
            endpoint: endpoint.to_string(),
            factor: (rate / mean.max(0.1) * 10.0).round() / 10.0,
            rate_per_minute: (rate * 10.0).round() / 10.0,
            baseline_per_minute: (mean * 10.0).round() / 10.0,
            minutes: self.streak,
            at_ms: minute.saturating_add(1).saturating_mul(MINUTE_MS),
        })
    }

    /// Closes every minute before `minute` (idle minutes count as 0; after a long idle
    /// stretch the endpoint starts learning again).
    fn close_until(
        &mut self,
        minute: i64,
        c: &BaselineConfig,
        endpoint: &str,
        out: &mut Vec<Anomaly>,
    ) {
        if minute.saturating_sub(self.minute) > MAX_GAP_MINUTES {
            if self.count > 0 {
                out.extend(self.close(c, endpoint));
            }
            *self = EndpointState {
                minute,
                last_seen: self.last_seen,
                ..EndpointState::default()
            };
            return;
        }
        while self.minute < minute {
            out.extend(self.close(c, endpoint));
        }
    }
}

/// The traffic baselines of one gateway's endpoints. Pure: time comes with the calls.
#[derive(Debug, Clone)]
pub struct Baseline {
    config: BaselineConfig,
    endpoints: HashMap<Box<str>, EndpointState>,
    /// Anomalies raised while observing, handed out by the next [`Baseline::tick`].
    pending: Vec<Anomaly>,
    recent: VecDeque<Anomaly>,
    overflow: u64,
    scratch: String,
}

impl Baseline {
    /// Baselines with `config`; `Err` names the field that is wrong.
    pub fn new(config: BaselineConfig) -> Result<Baseline, ConfigError> {
        config.check()?;
        Ok(Baseline {
            config,
            endpoints: HashMap::new(),
            pending: Vec::new(),
            recent: VecDeque::new(),
            overflow: 0,
            scratch: String::new(),
        })
    }

    /// Counts one request to `method path` (the endpoint's template, as the caller names it)
    /// at `at_ms`. A request of an earlier minute than the endpoint's open one counts in it.
    pub fn observe(&mut self, method: &str, path: &str, at_ms: i64) {
        let minute = at_ms.div_euclid(MINUTE_MS);
        self.scratch.clear();
        self.scratch.push_str(method);
        self.scratch.push(' ');
        self.scratch.push_str(path);
        if self.scratch.len() > MAX_ENDPOINT_LEN {
            self.overflow = self.overflow.saturating_add(1);
            return;
        }
        if !self.endpoints.contains_key(self.scratch.as_str()) {
            if self.endpoints.len() >= self.config.max_endpoints {
                self.overflow = self.overflow.saturating_add(1);
                return;
            }
            let fresh = EndpointState {
                minute,
                last_seen: minute,
                ..EndpointState::default()
            };
            self.endpoints.insert(self.scratch.as_str().into(), fresh);
        }
        let Some(state) = self.endpoints.get_mut(self.scratch.as_str()) else {
            return;
        };
        state.close_until(minute, &self.config, &self.scratch, &mut self.pending);
        state.count = state.count.saturating_add(1);
        state.last_seen = state.last_seen.max(minute);
        self.pending.truncate(self.config.max_endpoints);
    }

    /// Closes every endpoint's minutes before `now_ms`'s minute, forgets endpoints idle for
    /// [`BaselineConfig::forget_after_minutes`]; the anomalies raised since the last tick, by
    /// time then endpoint. Call it about once a minute.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Anomaly> {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut out = std::mem::take(&mut self.pending);
        for (endpoint, state) in &mut self.endpoints {
            state.close_until(minute, &self.config, endpoint, &mut out);
        }
        let forget = i64::from(self.config.forget_after_minutes);
        self.endpoints
            .retain(|_, s| minute.saturating_sub(s.last_seen) < forget);
        out.sort_by(|a, b| (a.at_ms, &a.endpoint).cmp(&(b.at_ms, &b.endpoint)));
        for a in &out {
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(a.clone());
        }
        out
    }

    /// The latest anomalies, oldest first (at most 100).
    pub fn recent(&self) -> impl ExactSizeIterator<Item = &Anomaly> + DoubleEndedIterator {
        self.recent.iter()
    }

    /// Endpoints tracked.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoint is tracked.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Requests of endpoints not tracked because the table was full.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// An endpoint's learned mean and standard deviation, requests per minute.
    pub fn learned(&self, method: &str, path: &str) -> Option<(f64, f64)> {
        self.endpoints
            .get(format!("{method} {path}").as_str())
            .map(|s| (s.mean, s.var.sqrt()))
    }
}
