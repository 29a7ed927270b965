//! Polling a blocking check on an interval, off the async workers: how the webhook's
//! certificate files and the sensor's `sensor.yaml` are re-read.

use std::future::Future;
use std::time::Duration;

/// Runs `check` on the blocking pool every `interval` (a missed tick waits rather than
/// bursting) until `shutdown` completes, handing each outcome to `report` (`Err`: the
/// blocking task itself failed).
pub(crate) async fn every<T: Send + 'static>(
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    check: impl Fn() -> T + Clone + Send + 'static,
    mut report: impl FnMut(Result<T, tokio::task::JoinError>),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        report(tokio::task::spawn_blocking(check.clone()).await);
    }
}
