//! APG001 for workloads: a container env var that configures CORS to allow every origin
//! (`CORS_ALLOWED_ORIGINS=*`, `ALLOWED_ORIGINS=*`, `ACCESS_CONTROL_ALLOW_ORIGIN=*`), in the pod
//! templates of Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and in Pods.

use super::json::Reader;
use super::{Finding, ObjectRef};
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

static CORS_ENV_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(CORS.*ORIGIN|ALLOWED_ORIGINS|ACCESS_CONTROL_ALLOW_ORIGIN)")
        .expect("CORS env name pattern is a valid regex")
});

/// Whether an env var name configures allowed CORS origins.
pub(crate) fn is_cors_origin_env(name: &str) -> bool {
    CORS_ENV_NAME.is_match(name)
}

/// The pod spec of a workload and its field path.
fn pod_spec<'v>(r: &mut Reader<'_>, object: &'v Value, kind: &str) -> Option<(&'v Value, String)> {
    let spec = r.object(object, "spec", "spec")?;
    match kind {
        "Pod" => Some((spec, "spec".into())),
        "CronJob" => {
            let jt = r.object(spec, "jobTemplate", "spec.jobTemplate")?;
            let js = r.object(jt, "spec", "spec.jobTemplate.spec")?;
            let t = r.object(js, "template", "spec.jobTemplate.spec.template")?;
            let ps = r.object(t, "spec", "spec.jobTemplate.spec.template.spec")?;
            Some((ps, "spec.jobTemplate.spec.template.spec".into()))
        }
        _ => {
            let t = r.object(spec, "template", "spec.template")?;
            let ps = r.object(t, "spec", "spec.template.spec")?;
            Some((ps, "spec.template.spec".into()))
        }
    }
}

pub fn review(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let mut found = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some((pod, base)) = pod_spec(&mut r, object, &obj.kind) else {
            return;
        };
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, c) in r
                .array(pod, list, &format!("{base}.{list}"))
                .iter()
                .enumerate()
            {
                let cpath = format!("{base}.{list}[{i}]");
                if !c.is_object() {
                    r.wrong_type(&cpath, "a mapping", c);
                    continue;
                }
                let cname = r.str(c, "name", &format!("{cpath}.name")).unwrap_or("");
                for (j, e) in r
                    .array(c, "env", &format!("{cpath}.env"))
                    .iter()
                    .enumerate()
                {
                    let epath = format!("{cpath}.env[{j}]");
                    if !e.is_object() {
                        r.wrong_type(&epath, "a mapping", e);
                        continue;
                    }
                    let Some(name) = r.str(e, "name", &format!("{epath}.name")) else {
                        continue;
                    };
                    let Some(value) = r.str(e, "value", &format!("{epath}.value")) else {
                        continue;
                    };
                    if is_cors_origin_env(name)
                        && value
                            .split([',', ' '])
                            .any(|o| super::cors::is_match_all_origin(o) && !o.trim().is_empty())
                    {
                        found.push(super::cors::wildcard_finding(
                            obj,
                            &format!("{epath}.value"),
                            &format!(
                                "container {cname:?} sets {name}={value:?}, allowing every origin"
                            ),
                            &format!(
                                "set {name} to the exact origins, e.g. https://app.example.com"
                            ),
                        ));
                    }
                }
            }
        }
    }
    out.extend(found);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for n in [
            "CORS_ALLOWED_ORIGINS",
            "cors_origin",
            "ALLOWED_ORIGINS",
            "ACCESS_CONTROL_ALLOW_ORIGIN",
            "APP_CORS_ORIGINS",
        ] {
            assert!(is_cors_origin_env(n), "{n}");
        }
        for n in ["ORIGIN", "CORS_MAX_AGE", "ALLOWED_HOSTS"] {
            assert!(!is_cors_origin_env(n), "{n}");
        }
    }
}
