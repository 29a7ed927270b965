//! The CA rotation driver: the leader watches the CA Secret and, on every change and when a
//! step is due, plans the next step purely (`crate::identity::ca_rotation::plan`) and writes
//! it with a conditional merge patch, recording each step as an Event on the Secret.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use time::OffsetDateTime;

use crate::identity::ca_rotation::{CaRotationError, Plan, RotationSettings, plan};
use crate::identity::secrets::rotation_patch;
use crate::identity::{CertificateAuthority, DEFAULT_CA_LIFETIME, rfc3339};

/// How many conflicting writes in a row one rotation step tolerates before waiting for the
/// next change.
const ROTATION_ATTEMPTS: usize = 5;
/// When a step failed for a reason that may pass (the apiserver), it is retried after this.
const ROTATION_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The CA Secret a rotation step works on, and where its Events go.
struct RotationTarget<'a> {
    api: &'a Api<Secret>,
    namespace: &'a str,
    name: &'a str,
    recorder: Option<&'a Recorder>,
}

/// What one read-plan-write attempt came to.
enum Attempt {
    /// Finished: look again at this time without a change (`None`: only on a change).
    Done(Option<OffsetDateTime>),
    /// The Secret changed between the read and the write: read and plan again.
    Conflict,
}

/// When to retry a step that failed for a reason that may pass.
fn retry_at() -> OffsetDateTime {
    OffsetDateTime::now_utc() + ROTATION_RETRY
}

/// One look at the CA Secret: plan and write (re-reading on conflicts). Returns when to look
/// again without a change.
async fn rotation_step(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    settings: RotationSettings,
    recorder: Option<&Recorder>,
) -> Option<OffsetDateTime> {
    let target = RotationTarget {
        api,
        namespace,
        name,
        recorder,
    };
    for _ in 0..ROTATION_ATTEMPTS {
        match target.attempt(settings).await {
            Attempt::Done(next) => return next,
            Attempt::Conflict => {
                tracing::debug!(
                    secret.name = name,
                    "CA Secret changed concurrently; re-reading"
                );
            }
        }
    }
    Some(retry_at())
}

/// Plans at the current time; a new CA is generated only when a rotation starts.
fn plan_now(secret: &Secret, settings: RotationSettings) -> Result<Plan, CaRotationError> {
    plan(secret, OffsetDateTime::now_utc(), settings, None, |now| {
        CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME)
    })
}

/// What a state a rotation entered means, for logs and Events.
fn transition_text(state: &str) -> &'static str {
    match state {
        "AddingRoot" => "the new root joins the trust bundle; the old CA still issues",
        "Draining" => "the new CA issues; the old root stays trusted until its leaves have expired",
        _ => "the old root left the trust bundle; rotation complete",
    }
}

impl RotationTarget<'_> {
    /// Read, plan, write once.
    async fn attempt(&self, settings: RotationSettings) -> Attempt {
        let (namespace, name) = (self.namespace, self.name);
        let secret = match self.api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Attempt::Done(None),
            Err(e) => {
                tracing::warn!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation: reading the CA Secret failed; retrying");
                return Attempt::Done(Some(retry_at()));
            }
        };
        let plan = match plan_now(&secret, settings) {
            Ok(p) => p,
            Err(e) => {
                // Nothing is written: the current CA keeps issuing until the Secret is fixed.
                tracing::error!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation cannot proceed");
                self.event(&secret, true, "CARotationFailed", e.to_string())
                    .await;
                return Attempt::Done(None);
            }
        };
        for note in &plan.notes {
            tracing::warn!(secret.namespace = namespace, secret.name = name, "{note}");
            self.event(&secret, true, "CARotationRequestIgnored", note.clone())
                .await;
        }
        let Some(new) = &plan.write else {
            return Attempt::Done(plan.next_step_at);
        };
        let patch = rotation_patch(&secret, new);
        match self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if plan.previous_state != plan.state {
                    self.announce(&secret, &plan).await;
                }
                Attempt::Done(plan.next_step_at)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Attempt::Conflict,
            Err(e) => {
                tracing::warn!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation: writing the CA Secret failed; retrying");
                Attempt::Done(Some(retry_at()))
            }
        }
    }

    /// Logs and records (Event) the state the rotation just entered.
    async fn announce(&self, secret: &Secret, plan: &Plan) {
        let what = transition_text(plan.state);
        let next = plan
            .next_step_at
            .map(|t| format!(" (next step at {})", rfc3339(t)))
            .unwrap_or_default();
        tracing::info!(
            secret.namespace = self.namespace,
            secret.name = self.name,
            from = plan.previous_state,
            to = plan.state,
            next_step_at = ?plan.next_step_at.map(rfc3339),
            "CA rotation: {what}"
        );
        self.event(
            secret,
            false,
            &format!("CARotation{}", plan.state),
            format!("{}: {what}{next}", plan.state),
        )
        .await;
    }

    /// Publishes an Event (action `RotateCA`) on the CA Secret; a failure is only logged.
    async fn event(&self, secret: &Secret, warning: bool, reason: &str, note: String) {
        let Some(recorder) = self.recorder else {
            return;
        };
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "RotateCA".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &secret.object_ref(&())).await {
            tracing::warn!(error = %e, reason = ev.reason, "could not publish Event");
        }
    }
}

/// Drives CA rotations of Secret `namespace/name` until `stop` resolves or `changes` ends: on
/// every change of the Secret (`changes` ticks; the controller's watch of the CA Secret feeds
/// it, e.g. the user's `apiguard.dev/rotate=requested`), at start, and when the current step is
/// due, plans (`plan`) and writes the Secret conditionally,
/// recording each step (and an ignored request or an unusable state) as an Event on the
/// Secret. Run by the leader only.
pub async fn drive_ca_rotation(
    client: kube::Client,
    namespace: &str,
    name: &str,
    settings: RotationSettings,
    recorder: Option<Recorder>,
    changes: impl futures::Stream<Item = ()>,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let mut changes = std::pin::pin!(changes);
    let mut stop = std::pin::pin!(stop);
    // A step at start: a rotation requested or due while no leader ran is carried on.
    let mut due = rotation_step(&api, namespace, name, settings, recorder.as_ref()).await;
    loop {
        let wait = due.map(|t| {
            let d = t - OffsetDateTime::now_utc();
            // A little after the due time, so the step is due when planned.
            std::time::Duration::try_from(d).unwrap_or_default()
                + std::time::Duration::from_millis(50)
        });
        tokio::select! {
            _ = &mut stop => return,
            change = changes.next() => {
                if change.is_none() {
                    return;
                }
            }
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
        }
        due = rotation_step(&api, namespace, name, settings, recorder.as_ref()).await;
    }
}

#[cfg(test)]
mod tests {
    //! `rotation_step` against a scripted apiserver (tower-test).
    use super::*;
    use crate::certs::test_support::{expect, json, status};
    use crate::identity::secrets::ca_secret;
    use axum::http::{Method, Request, Response};
    use kube::client::Body;
    use time::Duration;
    use tower_test::mock;

    const GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-ca";

    #[tokio::test]
    async fn a_rotation_step_rereads_and_replans_after_a_conflict() {
        // rotation_step reads the clock: a CA valid now.
        let old =
            CertificateAuthority::generate(OffsetDateTime::now_utc(), Duration::days(10)).unwrap();
        let mut secret = ca_secret("apiguard-ca", "apiguard-system", &old);
        secret
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("apiguard.dev/rotate".into(), "requested".into());
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let mut patches = Vec::new();
            for (rv, code) in [("1", 409u16), ("2", 200)] {
                let mut current = secret.clone();
                current.metadata.resource_version = Some(rv.into());
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(json(&current));
                let (body, send) = expect(&mut h, Method::PATCH, GET).await;
                let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                patches.push(patch);
                if code == 409 {
                    send.send_response(status(409, "Conflict"));
                } else {
                    send.send_response(json(&current));
                }
            }
            patches
        });
        let api: Api<Secret> = Api::namespaced(client, "apiguard-system");
        let settings = RotationSettings {
            propagation: Duration::minutes(10),
            max_leaf_lifetime: Duration::hours(24),
        };
        let before = OffsetDateTime::now_utc();
        let next = rotation_step(&api, "apiguard-system", "apiguard-ca", settings, None)
            .await
            .expect("AddingRoot has a next step");
        assert!(next >= before + Duration::minutes(10) && next < before + Duration::minutes(11));
        let patches = server.await.unwrap();
        // Each attempt is conditional on the resourceVersion it read.
        assert_eq!(patches[0]["metadata"]["resourceVersion"], "1");
        assert_eq!(patches[1]["metadata"]["resourceVersion"], "2");
        assert_eq!(
            patches[1]["metadata"]["annotations"]["apiguard.dev/rotate"],
            serde_json::Value::Null
        );
        let state: serde_json::Value = serde_json::from_str(
            patches[1]["metadata"]["annotations"]["apiguard.dev/ca-rotation"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(state["state"], "AddingRoot");
        assert!(patches[1]["data"]["next.key"].is_string());
    }
}
