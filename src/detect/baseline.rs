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
//! - a normal minute is learned with weight `alpha`; a deviating one only moves the mean, as if
//!   it were `mean + z * sigma` (clamped to the threshold), at a tenth of `alpha`, and leaves
//!   the variance alone, so a long attack moves the baseline by at most `alpha/10 * z * sigma`
//!   a minute instead of becoming normal;
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
        // Clamped to the threshold, a tenth of the weight, the variance untouched: a long
        // attack moves the mean by at most alpha/10 * z * sigma a minute.
        self.mean += c.alpha / 10.0 * (threshold - self.mean);
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    /// A deterministic xorshift: the same noise every run.
    struct Noise(u64);

    impl Noise {
        /// `rate` with ±20 % uniform noise.
        fn around(&mut self, rate: f64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let u = (self.0 % 10_001) as f64 / 10_000.0; // 0..=1
            (rate * (0.8 + 0.4 * u)).round() as u64
        }
    }

    const ENDPOINTS: [&str; 4] = ["/v1/users/{id}", "/v1/orders", "/v1/products", "/v1/rare"];

    /// Runs minutes `from..to`, the rate of endpoint `e` at minute `m` given by `rate`, the
    /// requests spread over each minute, a tick after each; every anomaly.
    fn drive(
        b: &mut Baseline,
        noise: &mut Noise,
        minutes: std::ops::Range<i64>,
        rate: impl Fn(usize, i64) -> f64,
    ) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for m in minutes {
            for (e, path) in ENDPOINTS.iter().enumerate() {
                let n = noise.around(rate(e, m));
                for j in 0..n {
                    let at = T0 + m * MINUTE_MS + (j as i64 * MINUTE_MS) / n as i64;
                    b.observe("GET", path, at);
                }
            }
            out.extend(b.tick(T0 + (m + 1) * MINUTE_MS));
        }
        out
    }

    /// 100, 40, 8 requests a minute, and a rare endpoint with 0 to 2.
    fn normal(e: usize, m: i64) -> f64 {
        [100.0, 40.0, 8.0, (m % 3) as f64][e]
    }

    fn baseline() -> Baseline {
        Baseline::new(BaselineConfig::default()).unwrap()
    }

    #[test]
    fn steady_noisy_traffic_raises_nothing() {
        let mut b = baseline();
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let found = drive(&mut b, &mut noise, 0..6 * 60, normal);
        assert_eq!(found, vec![]);
        let (mean, sd) = b.learned("GET", "/v1/users/{id}").unwrap();
        assert!((95.0..105.0).contains(&mean), "{mean}");
        assert!((5.0..20.0).contains(&sd), "{sd}");
        // Traffic that slowly doubles over three hours is normal too.
        let ramp = |e: usize, m: i64| normal(e, m) * (1.0 + (m - 360) as f64 / 180.0);
        assert_eq!(drive(&mut b, &mut noise, 360..540, ramp), vec![]);
    }

    #[test]
    fn a_sustained_spike_raises_one_anomaly() {
        let mut b = baseline();
        let mut noise = Noise(7);
        assert_eq!(drive(&mut b, &mut noise, 0..60, normal), vec![]);
        let spike = |e: usize, m: i64| normal(e, m) * if e == 1 { 10.0 } else { 1.0 };
        let found = drive(&mut b, &mut noise, 60..70, spike);
        assert_eq!(found.len(), 1, "{found:?}");
        let a = &found[0];
        assert_eq!(a.endpoint, "GET /v1/orders");
        assert!((8.0..=12.0).contains(&a.factor), "factor {}", a.factor);
        assert_eq!(a.minutes, 3);
        assert_eq!(a.at_ms, T0 + 63 * MINUTE_MS, "after the third minute");
        assert!((36.0..44.0).contains(&a.baseline_per_minute));
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["endpoint"], "GET /v1/orders");
        assert_eq!(json["at"], "2027-01-15T09:03:00Z");
        assert!(json["ratePerMinute"].as_f64().unwrap() > 300.0);
        assert_eq!(b.recent().len(), 1);
        // Back to normal: nothing; one spike of one minute: nothing.
        assert_eq!(drive(&mut b, &mut noise, 70..100, normal), vec![]);
        let blip = |e: usize, m: i64| normal(e, m) * if m == 100 { 10.0 } else { 1.0 };
        assert_eq!(drive(&mut b, &mut noise, 100..110, blip), vec![]);
        // After being normal for a while, a new spike is a new anomaly.
        let found = drive(&mut b, &mut noise, 110..120, spike);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_long_attack_does_not_become_normal() {
        let mut b = baseline();
        let mut noise = Noise(11);
        drive(&mut b, &mut noise, 0..60, normal);
        let spike = |e: usize, m: i64| normal(e, m) * if e == 0 { 10.0 } else { 1.0 };
        let found = drive(&mut b, &mut noise, 60..240, spike);
        assert_eq!(found.len(), 1, "three hours of attack, one anomaly");
        let (mean, _) = b.learned("GET", "/v1/users/{id}").unwrap();
        assert!(
            mean < 300.0,
            "the attack was learned at full weight: mean {mean}"
        );
        drive(&mut b, &mut noise, 240..300, normal);
        let found = drive(&mut b, &mut noise, 300..310, spike);
        assert_eq!(found.len(), 1, "the next attack is still an anomaly");
        assert!(found[0].factor > 5.0, "{}", found[0].factor);
    }

    #[test]
    fn nothing_is_raised_while_learning() {
        let mut b = baseline();
        let mut noise = Noise(3);
        let spike = |e: usize, m: i64| normal(e, m) * if m >= 10 && e == 0 { 10.0 } else { 1.0 };
        assert_eq!(drive(&mut b, &mut noise, 0..29, spike), vec![]);
        let mut b = Baseline::new(BaselineConfig {
            learning_minutes: 10,
            sensitivity: Sensitivity::High,
            ..BaselineConfig::default()
        })
        .unwrap();
        let spike = |e: usize, m: i64| normal(e, m) * if m >= 20 && e == 0 { 10.0 } else { 1.0 };
        assert_eq!(drive(&mut b, &mut noise, 0..30, spike).len(), 1);
    }

    #[test]
    fn endpoints_are_bounded_and_forgotten() {
        let mut b = baseline();
        for i in 0..1_500 {
            b.observe("GET", &format!("/scan/{i}"), T0);
        }
        assert_eq!((b.len(), b.overflow()), (1_000, 500));
        b.observe("GET", &format!("/{}", "x".repeat(600)), T0);
        assert_eq!(b.overflow(), 501);
        assert_eq!(b.tick(T0 + 60 * MINUTE_MS), vec![]);
        assert_eq!(b.len(), 1_000);
        // Idle a day: forgotten (and the long gap is not walked minute by minute).
        assert_eq!(b.tick(T0 + 24 * 60 * MINUTE_MS), vec![]);
        assert!(b.is_empty());
    }

    #[test]
    fn configs_are_validated() {
        let bad = |c: BaselineConfig| Baseline::new(c).unwrap_err().field;
        let d = BaselineConfig::default();
        assert_eq!(
            bad(BaselineConfig { alpha: 0.0, ..d }),
            "runtime.baseline.alpha"
        );
        assert_eq!(
            bad(BaselineConfig {
                min_factor: f64::NAN,
                ..d
            }),
            "runtime.baseline.minFactor"
        );
        assert_eq!(
            bad(BaselineConfig {
                sustain_minutes: 0,
                ..d
            }),
            "runtime.baseline.sustainMinutes"
        );
        assert_eq!(Sensitivity::default().z(), 4.0);
        assert!(Sensitivity::High.z() < Sensitivity::Low.z());
    }

    proptest::proptest! {
        /// Any times, in any order, extremes included: no panic, the bounds hold.
        #[test]
        fn any_times_are_safe(
            calls in proptest::collection::vec((proptest::prelude::any::<i64>(), 0u8..8, proptest::prelude::any::<bool>()), 0..200),
        ) {
            let mut b = Baseline::new(BaselineConfig { max_endpoints: 4, learning_minutes: 1, ..BaselineConfig::default() }).unwrap();
            for (at, e, tick) in calls {
                if tick {
                    for a in b.tick(at) {
                        proptest::prop_assert!(a.factor.is_finite());
                        proptest::prop_assert!(serde_json::to_string(&a).is_ok());
                    }
                } else {
                    b.observe("GET", &format!("/e{e}"), at);
                }
                proptest::prop_assert!(b.len() <= 4);
            }
        }
    }
}
