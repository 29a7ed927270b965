//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the holder
//! reconciles; the others wait (and keep serving the webhook).

use std::future::Future;

use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};

use super::{RunError, Shutdown, shutdown_on};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the operator namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (pod name), recorded as `holderIdentity`.
    pub identity: String,
    /// How long a Lease is valid after its last renewal (seconds). A replica that loses the
    /// Lease stops reconciling within this time.
    pub duration_secs: u64,
    /// The holder renews this long before expiry (seconds).
    pub grace_secs: u64,
}

impl LeaderConfig {
    /// Defaults: Lease `apiguard-controller`, 15 s duration, renewed 5 s before expiry.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            lease_name: "apiguard-controller".to_string(),
            identity: identity.to_string(),
            duration_secs: 15,
            grace_secs: 5,
        }
    }
}

/// Competes for the Lease until `shutdown`; each time this replica becomes the holder,
/// runs `leading(stop)` where `stop` resolves when the Lease is lost or on shutdown. The
/// Lease is released on shutdown so another replica takes over at once.
pub(crate) async fn lead<F, Fut>(
    client: kube::Client,
    config: &LeaderConfig,
    shutdown: Shutdown,
    mut leading: F,
) -> Result<(), RunError>
where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), RunError>>,
{
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .with_field_manager(crate::api::names::field_managers::lease(&config.identity))
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .build()
        .await?;
    let (mut is_leader, task) = manager.watch().await;
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            r = is_leader.wait_for(|l| *l) => if r.is_err() { break },
        }
        tracing::info!(
            identity = config.identity,
            lease = config.lease_name,
            "acquired the Lease"
        );
        let mut watch = is_leader.clone();
        let lost = async move {
            let _ = watch.wait_for(|l| !*l).await;
        };
        let sd = shutdown.clone();
        let stop = shutdown_on(async move {
            tokio::select! {
                _ = lost => tracing::warn!("lost the Lease; stopping reconciliation"),
                _ = sd => {},
            }
        });
        if let Err(e) = leading(stop).await {
            outcome = Err(e);
            break;
        }
        if shutdown.peek().is_some() {
            break;
        }
    }
    // Closing the channel makes the manager release the Lease and end.
    drop(is_leader);
    match task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed"),
        Err(e) => tracing::warn!(error = %e, "Lease task failed"),
    }
    outcome
}
