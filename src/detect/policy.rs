//! `spec.runtime` (the policy's types, also the `runtime` section of `sensor.yaml`) to the
//! engine's configs: durations parsed, defaults applied, every detector compiled once so a
//! policy the sensor could not run is refused where it is written. Errors name the field from
//! `runtime.` (the renderer prefixes `spec.`).

use super::baseline::{BaselineConfig, Sensitivity};
use super::config::{Action, ConfigError, DetectorConfig, KeyKind, Threshold};
use crate::api::duration::parse_duration;
use crate::api::{BaselineSensitivity, Detector, DetectorAction, RateLimitKey, Runtime};

/// The detectors of `runtime`, checked as the engine checks them (the engine is built once to
/// do so; the caller builds its own).
pub fn detectors(runtime: &Runtime) -> Result<Vec<DetectorConfig>, ConfigError> {
    let configs = runtime
        .detectors
        .iter()
        .enumerate()
        .map(|(i, d)| detector(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    super::Engine::new(&configs, super::Limits::default())?;
    Ok(configs)
}

/// The baseline of `runtime`; None when it is absent or disabled.
pub fn baseline(runtime: &Runtime) -> Option<BaselineConfig> {
    let b = runtime.baseline.as_ref().filter(|b| b.enabled)?;
    Some(BaselineConfig {
        sensitivity: match b.sensitivity {
            BaselineSensitivity::Low => Sensitivity::Low,
            BaselineSensitivity::Medium => Sensitivity::Medium,
            BaselineSensitivity::High => Sensitivity::High,
        },
        ..BaselineConfig::default()
    })
}

/// Whether any detector blocks (the gateway then asks the sensor about every request).
pub fn any_block(runtime: &Runtime) -> bool {
    runtime
        .detectors
        .iter()
        .any(|d| d.action == DetectorAction::Block)
}

/// The request headers detectors key by (`by: {header: x-tenant}`), lower case, sorted, once.
pub fn key_headers(runtime: &Runtime) -> Vec<String> {
    let mut names: Vec<String> = runtime
        .detectors
        .iter()
        .filter_map(|d| d.by.as_ref()?.header.as_ref())
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn field_error(i: usize, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("runtime.detectors[{i}].{field}"),
        message: message.into(),
    }
}

fn millis(i: usize, field: &str, value: &str) -> Result<u64, ConfigError> {
    let d = parse_duration(value).map_err(|e| field_error(i, field, e.to_string()))?;
    u64::try_from(d.as_millis()).map_err(|_| field_error(i, field, "is too long"))
}

fn detector(i: usize, d: &Detector) -> Result<DetectorConfig, ConfigError> {
    let window_ms = millis(i, "threshold.window", &d.threshold.window)?;
    let count = d.threshold.count;
    let threshold = match &d.threshold.distinct {
        Some(distinct) => Threshold::Distinct {
            path_param: distinct.path_param.clone(),
            count,
            window_ms,
        },
        None => Threshold::Count { count, window_ms },
    };
    let block_for_ms = d
        .block_for
        .as_deref()
        .map(|b| millis(i, "blockFor", b))
        .transpose()?;
    let route = d.route.as_ref();
    Ok(DetectorConfig {
        name: d.name.clone(),
        methods: route.map(|r| r.methods.clone()).unwrap_or_default(),
        paths: route.map(|r| r.paths.clone()).unwrap_or_default(),
        statuses: d
            .when
            .as_ref()
            .map(|w| w.statuses.clone())
            .unwrap_or_default(),
        by: key_kind(i, d.by.as_ref())?,
        threshold,
        action: match d.action {
            DetectorAction::Alert => Action::Alert,
            DetectorAction::Block => Action::Block,
        },
        block_for_ms,
    })
}

/// `by`: exactly one of its fields; absent means the client IP.
fn key_kind(i: usize, by: Option<&RateLimitKey>) -> Result<KeyKind, ConfigError> {
    let Some(by) = by else {
        return Ok(KeyKind::ClientIp);
    };
    let mut kinds = Vec::new();
    if by.client_ip.is_some() {
        kinds.push(KeyKind::ClientIp);
    }
    if let Some(claim) = &by.claim {
        kinds.push(KeyKind::Claim(claim.clone()));
    }
    if by.api_key.is_some() {
        kinds.push(KeyKind::ApiKey);
    }
    if let Some(header) = &by.header {
        kinds.push(KeyKind::Header(header.to_ascii_lowercase()));
    }
    match kinds.len() {
        1 => Ok(kinds.remove(0)),
        0 => Err(field_error(
            i,
            "by",
            "names no key: give one of clientIP, claim, apiKey, header",
        )),
        _ => Err(field_error(
            i,
            "by",
            "names several keys: give exactly one of clientIP, claim, apiKey, header",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        DetectorThreshold, DetectorWhen, DistinctValues, Empty, RouteMatch, TrafficBaseline,
    };

    fn stuffing() -> Detector {
        Detector {
            name: "login-stuffing".into(),
            route: Some(RouteMatch {
                methods: vec!["POST".into()],
                paths: vec!["/login".into()],
            }),
            when: Some(DetectorWhen {
                statuses: vec![401, 403],
            }),
            by: Some(RateLimitKey {
                client_ip: Some(Empty {}),
                ..Default::default()
            }),
            threshold: DetectorThreshold {
                count: 20,
                window: "1m".into(),
                distinct: None,
            },
            action: DetectorAction::Block,
            block_for: Some("15m".into()),
        }
    }

    #[test]
    fn a_policy_detector_becomes_an_engine_config() {
        let runtime = Runtime {
            detectors: vec![stuffing()],
            baseline: None,
        };
        let configs = detectors(&runtime).unwrap();
        assert_eq!(
            configs,
            vec![DetectorConfig {
                name: "login-stuffing".into(),
                methods: vec!["POST".into()],
                paths: vec!["/login".into()],
                statuses: vec![401, 403],
                by: KeyKind::ClientIp,
                threshold: Threshold::Count {
                    count: 20,
                    window_ms: 60_000
                },
                action: Action::Block,
                block_for_ms: Some(900_000),
            }]
        );
        assert!(any_block(&runtime));
        assert_eq!(baseline(&runtime), None);
    }

    #[test]
    fn distinct_thresholds_header_keys_and_the_baseline() {
        let mut d = stuffing();
        d.name = "bola".into();
        d.route = Some(RouteMatch {
            methods: vec![],
            paths: vec!["/users/{userId}/orders".into()],
        });
        d.by = Some(RateLimitKey {
            header: Some("X-Tenant".into()),
            ..Default::default()
        });
        d.threshold.distinct = Some(DistinctValues {
            path_param: "userId".into(),
        });
        d.action = DetectorAction::Alert;
        d.block_for = None;
        let runtime = Runtime {
            detectors: vec![d],
            baseline: Some(TrafficBaseline {
                enabled: true,
                sensitivity: BaselineSensitivity::High,
            }),
        };
        let c = &detectors(&runtime).unwrap()[0];
        assert_eq!(c.by, KeyKind::Header("x-tenant".into()));
        assert!(
            matches!(c.threshold, Threshold::Distinct { ref path_param, count: 20, .. } if path_param == "userId")
        );
        assert_eq!(key_headers(&runtime), vec!["x-tenant".to_string()]);
        assert!(!any_block(&runtime));
        assert_eq!(baseline(&runtime).unwrap().sensitivity, Sensitivity::High);
    }

    #[test]
    fn errors_name_the_field() {
        let mut d = stuffing();
        d.threshold.window = "2d".into();
        let e = detectors(&Runtime {
            detectors: vec![stuffing(), d],
            baseline: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "runtime.detectors[1].threshold.window");

        let mut d = stuffing();
        d.threshold.window = "48h".into();
        let e = detectors(&Runtime {
            detectors: vec![d],
            baseline: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "runtime.detectors[0].threshold.window", "{e}");

        let mut d = stuffing();
        d.by = Some(RateLimitKey {
            claim: Some("sub".into()),
            api_key: Some(Empty {}),
            ..Default::default()
        });
        let e = detectors(&Runtime {
            detectors: vec![d],
            baseline: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "runtime.detectors[0].by");
        assert!(e.message.contains("exactly one"), "{e}");
    }

    #[test]
    fn a_disabled_baseline_is_none() {
        let runtime = Runtime {
            detectors: vec![],
            baseline: Some(TrafficBaseline {
                enabled: false,
                sensitivity: BaselineSensitivity::Low,
            }),
        };
        assert_eq!(baseline(&runtime), None);
    }
}
