//! Detector configuration: what `spec.runtime.detectors[]` will say, validated and compiled
//! once (`Compiled`). Errors name the field (`runtime.detectors[2].threshold.count`).

use crate::discovery::template::Template;
use serde::{Deserialize, Serialize};

/// The default cap on keys tracked per detector.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The default length of the recent-detections ring.
pub const DEFAULT_RECENT: usize = 100;
/// The default `blockFor` of a `Block` detector that gives none (15 minutes).
pub const DEFAULT_BLOCK_FOR_MS: u64 = 15 * 60 * 1000;
/// The most detectors one engine runs.
pub const MAX_DETECTORS: usize = 64;
/// The largest `count` of a count threshold.
pub const MAX_COUNT: u32 = 1_000_000;
/// The largest `count` of a distinct threshold (each key keeps up to this many values).
pub const MAX_DISTINCT: u32 = 1_000;
/// The shortest window (the window is cut into [`BUCKETS`] buckets of whole milliseconds).
pub const MIN_WINDOW_MS: u64 = 1_000;
/// The longest window (one day).
pub const MAX_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest `blockFor` (seven days).
pub const MAX_BLOCK_FOR_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The buckets a window is cut into: the sliding window's resolution is a twentieth of it.
pub const BUCKETS: usize = 20;

/// One detector, as the policy declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// `name`: unique in the policy; names the detector in detections and blocks.
    pub name: String,
    /// `match.methods`: empty means every method.
    pub methods: Vec<String>,
    /// `match.paths`: exact paths, `{param}` templates or `/prefix/*`; empty means every path.
    pub paths: Vec<String>,
    /// `when.statuses`: empty means every response.
    pub statuses: Vec<u16>,
    /// `by`: what a key is.
    pub by: KeyKind,
    /// `threshold`.
    pub threshold: Threshold,
    /// `action`.
    pub action: Action,
    /// `blockFor` in milliseconds; only with `action: Block` (default [`DEFAULT_BLOCK_FOR_MS`]).
    pub block_for_ms: Option<u64>,
}

/// What a detector counts per: `by` in the policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `clientIP: {}`: the client address Envoy saw, shown as given.
    ClientIp,
    /// `claim: sub`: a claim of the verified JWT, shown hashed.
    Claim(String),
    /// `apiKey: {}`: the client id of the API key, shown hashed.
    ApiKey,
    /// `header: x-tenant`: a request header (name case-insensitive), shown hashed.
    Header(String),
}

impl KeyKind {
    /// How the kind is named in a detection (`clientIP`, `claim`, `apiKey`, `header`).
    pub fn label(&self) -> KeyLabel {
        match self {
            KeyKind::ClientIp => KeyLabel::ClientIp,
            KeyKind::Claim(_) => KeyLabel::Claim,
            KeyKind::ApiKey => KeyLabel::ApiKey,
            KeyKind::Header(_) => KeyLabel::Header,
        }
    }

    /// The claim or header name, if the kind has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            KeyKind::Claim(n) | KeyKind::Header(n) => Some(n),
            KeyKind::ClientIp | KeyKind::ApiKey => None,
        }
    }
}

/// A [`KeyKind`] without its name, as serialized (`"keyKind": "clientIP"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyLabel {
    /// The client IP.
    #[serde(rename = "clientIP")]
    ClientIp,
    /// A JWT claim.
    #[serde(rename = "claim")]
    Claim,
    /// An API key's client id.
    #[serde(rename = "apiKey")]
    ApiKey,
    /// A request header.
    #[serde(rename = "header")]
    Header,
}

/// When a key is detected: `threshold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Threshold {
    /// `{count, window}`: `count` matching events within the window.
    Count {
        /// Events.
        count: u32,
        /// The sliding window, milliseconds.
        window_ms: u64,
    },
    /// `{distinct: {pathParam}, count, window}`: `count` distinct values of a path parameter
    /// within the window (enumeration, BOLA).
    Distinct {
        /// The parameter of `match.paths` whose values are counted.
        path_param: String,
        /// Distinct values.
        count: u32,
        /// The sliding window, milliseconds.
        window_ms: u64,
    },
}

impl Threshold {
    /// Events or distinct values that make a detection.
    pub fn count(&self) -> u32 {
        match self {
            Threshold::Count { count, .. } | Threshold::Distinct { count, .. } => *count,
        }
    }

    /// The window, milliseconds.
    pub fn window_ms(&self) -> u64 {
        match self {
            Threshold::Count { window_ms, .. } | Threshold::Distinct { window_ms, .. } => {
                *window_ms
            }
        }
    }
}

/// What a detection does: `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Action {
    /// Report only.
    #[default]
    Alert,
    /// Report, and refuse the key's requests until the block ends.
    Block,
}

/// The engine's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys tracked per detector; a new key beyond it is counted as overflow, not tracked.
    /// Also the most blocks per detector.
    pub max_keys: usize,
    /// Detections kept for [`crate::detect::Engine::recent`].
    pub recent: usize,
    /// Queue entries each detector's sweep looks at per observed event.
    pub sweep_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: DEFAULT_MAX_KEYS,
            recent: DEFAULT_RECENT,
            sweep_per_event: 2,
        }
    }
}

/// A detector the engine cannot run: the field (`runtime.detectors[2].threshold.count`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct ConfigError {
    /// The field path, from `runtime.`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(i: usize, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("runtime.detectors[{i}].{field}"),
        message: message.into(),
    }
}

/// One path of `match.paths`, parsed, with the position of the distinct parameter in it.
#[derive(Debug, Clone)]
pub(crate) struct PathMatch {
    template: Template,
    /// Which of the template's parameters is the distinct one.
    param: Option<usize>,
}

/// A validated detector, ready to match events.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) name: String,
    methods: Vec<String>,
    paths: Vec<PathMatch>,
    statuses: Vec<u16>,
    pub(crate) by: KeyKind,
    pub(crate) distinct: Option<String>,
    pub(crate) count: u32,
    pub(crate) window_ms: u64,
    /// `window_ms / BUCKETS`, at least 1.
    pub(crate) bucket_ms: u64,
    pub(crate) action: Action,
    pub(crate) block_for_ms: u64,
}

/// Where a path matched: `None` the detector does not apply; `Some(None)` it applies without
/// a parameter value; `Some(Some(v))` with the distinct parameter's value.
pub(crate) type PathFit<'p> = Option<Option<&'p str>>;

impl Compiled {
    /// Validates detector `i` of the list.
    pub(crate) fn compile(i: usize, c: &DetectorConfig) -> Result<Compiled, ConfigError> {
        check_name(i, &c.name)?;
        check_methods(i, &c.methods)?;
        if let Some(j) = c.statuses.iter().position(|s| !(100..=599).contains(s)) {
            return Err(err(
                i,
                &format!("when.statuses[{j}]"),
                format!("{} is not an HTTP status (100-599)", c.statuses[j]),
            ));
        }
        check_key(i, &c.by)?;
        let (count, window_ms, distinct) = check_threshold(i, &c.threshold)?;
        let paths = compile_paths(i, &c.paths, distinct.as_deref())?;
        let block_for_ms = check_action(i, c.action, c.block_for_ms)?;
        Ok(Compiled {
            name: c.name.clone(),
            methods: c.methods.clone(),
            paths,
            statuses: c.statuses.clone(),
            by: c.by.clone(),
            distinct,
            count,
            window_ms,
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            action: c.action,
            block_for_ms,
        })
    }

    /// Whether the method and status are the detector's (checked before the path).
    pub(crate) fn matches_head(&self, method: &str, status: u16) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&status))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }

    /// Whether the detector needs the path's segments.
    pub(crate) fn has_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    /// The first of `match.paths` that fits the request path's segments.
    pub(crate) fn fit<'p>(&self, segments: &[&'p str]) -> PathFit<'p> {
        if self.paths.is_empty() {
            return Some(None);
        }
        let p = self
            .paths
            .iter()
            .find(|p| p.template.fit(segments).is_some())?;
        Some(
            p.param
                .and_then(|k| p.template.param_values(segments).nth(k)),
        )
    }
}

fn check_name(i: usize, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 63 {
        return Err(err(i, "name", "must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(err(
            i,
            "name",
            format!("{name:?} may only hold letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn check_methods(i: usize, methods: &[String]) -> Result<(), ConfigError> {
    for (j, m) in methods.iter().enumerate() {
        if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(err(
                i,
                &format!("match.methods[{j}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        }
    }
    Ok(())
}

fn check_key(i: usize, by: &KeyKind) -> Result<(), ConfigError> {
    match by {
        KeyKind::Claim(n) if n.is_empty() => Err(err(i, "by.claim", "names no claim")),
        KeyKind::Header(n)
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Err(err(i, "by.header", format!("{n:?} is not a header name")))
        }
        _ => Ok(()),
    }
}

fn check_threshold(
    i: usize,
    threshold: &Threshold,
) -> Result<(u32, u64, Option<String>), ConfigError> {
    let (count, window_ms, distinct, max) = match threshold {
        Threshold::Count { count, window_ms } => (*count, *window_ms, None, MAX_COUNT),
        Threshold::Distinct {
            path_param,
            count,
            window_ms,
        } => {
            if path_param.is_empty() {
                return Err(err(i, "threshold.distinct.pathParam", "names no parameter"));
            }
            (*count, *window_ms, Some(path_param.clone()), MAX_DISTINCT)
        }
    };
    if count == 0 || count > max {
        return Err(err(
            i,
            "threshold.count",
            format!("{count} is out of range (1-{max})"),
        ));
    }
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(err(
            i,
            "threshold.window",
            format!("{window_ms} ms is out of range (1s-24h)"),
        ));
    }
    Ok((count, window_ms, distinct))
}

fn compile_paths(
    i: usize,
    paths: &[String],
    distinct: Option<&str>,
) -> Result<Vec<PathMatch>, ConfigError> {
    let mut out = Vec::with_capacity(paths.len());
    for (j, p) in paths.iter().enumerate() {
        let template = Template::parse(p)
            .map_err(|e| err(i, &format!("match.paths[{j}]"), format!("{p:?}: {e}")))?;
        let param = distinct.and_then(|d| template.params().position(|n| n == d));
        out.push(PathMatch { template, param });
    }
    if let Some(d) = distinct
        && !out.iter().any(|p| p.param.is_some())
    {
        return Err(err(
            i,
            "threshold.distinct.pathParam",
            format!("{d:?} is not a parameter of any of match.paths"),
        ));
    }
    Ok(out)
}

fn check_action(i: usize, action: Action, block_for_ms: Option<u64>) -> Result<u64, ConfigError> {
    match (action, block_for_ms) {
        (Action::Alert, None) => Ok(0),
        (Action::Alert, Some(_)) => Err(err(i, "blockFor", "needs action: Block")),
        (Action::Block, None) => Ok(DEFAULT_BLOCK_FOR_MS),
        (Action::Block, Some(ms)) if ms == 0 || ms > MAX_BLOCK_FOR_MS => Err(err(
            i,
            "blockFor",
            format!("{ms} ms is out of range (1ms-7d)"),
        )),
        (Action::Block, Some(ms)) => Ok(ms),
    }
}

/// Validates a list of detectors: each one, their number, unique names.
pub(crate) fn compile_all(configs: &[DetectorConfig]) -> Result<Vec<Compiled>, ConfigError> {
    if configs.len() > MAX_DETECTORS {
        return Err(ConfigError {
            field: "runtime.detectors".into(),
            message: format!("has {} detectors, at most {MAX_DETECTORS}", configs.len()),
        });
    }
    let mut out: Vec<Compiled> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        if out.iter().any(|o| o.name == c.name) {
            return Err(err(i, "name", format!("{:?} is used twice", c.name)));
        }
        out.push(Compiled::compile(i, c)?);
    }
    Ok(out)
}
