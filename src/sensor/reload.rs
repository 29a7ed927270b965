//! `sensor.yaml` read from its file and re-read by polling: the compiled pipeline is swapped
//! atomically when the file's content changes; a file that does not load keeps the last good
//! pipeline (logged and counted).
//!
//! Polling by content hash, not inotify or mtime: a ConfigMap volume is updated by swapping a
//! `..data` symlink, which watches on the file path miss, and mtimes can stay equal.

use super::config::SensorReport;
use super::guard::SharedGuard;
use super::load::{LoadError, compile_with_report};
use super::observe::{ResultLabels, SensorMetrics};
use super::pipeline::Pipeline;
use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The config in force and where it comes from.
pub(crate) struct ConfigFile {
    path: PathBuf,
    current: ArcSwap<Pipeline>,
    /// The `report` section of the same content (the inventory push).
    report: ArcSwapOption<SensorReport>,
    /// SHA-256 of the text last tried (good or bad), so a bad file is reported once.
    last_hash: Mutex<[u8; 32]>,
    /// The runtime detection state every pipeline compiled from this file checks blocks in
    /// (it outlives reloads).
    guard: SharedGuard,
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn read(path: &Path) -> Result<(String, [u8; 32]), ReloadError> {
    let text = std::fs::read_to_string(path).map_err(|error| ReloadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let hash = Sha256::digest(text.as_bytes()).into();
    Ok((text, hash))
}

impl ConfigFile {
    /// Loads the file; an error names the file (and the JSON pointer for the contract).
    pub(crate) fn load(path: impl Into<PathBuf>) -> Result<Self, ReloadError> {
        let path = path.into();
        let (text, hash) = read(&path)?;
        let guard = SharedGuard::default();
        let (pipeline, report) = compile_with_report(&path.display().to_string(), &text, &guard)?;
        Ok(ConfigFile {
            path,
            current: ArcSwap::from_pointee(pipeline),
            report: ArcSwapOption::new(report.map(Arc::new)),
            last_hash: Mutex::new(hash),
            guard,
        })
    }

    /// The runtime detection state (shared with the block stage of every pipeline).
    pub(crate) fn guard(&self) -> &SharedGuard {
        &self.guard
    }

    /// The pipeline new exchanges use.
    pub(crate) fn current(&self) -> Arc<Pipeline> {
        self.current.load_full()
    }

    /// Re-reads the file; swaps in the new pipeline when the content changed and compiles.
    /// `Ok(false)`: unchanged (or the same bad content as last time).
    pub(crate) fn reload_if_changed(&self) -> Result<bool, ReloadError> {
        let (text, hash) = read(&self.path)?;
        {
            let mut last = self
                .last_hash
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last == hash {
                return Ok(false);
            }
            *last = hash;
        }
        let (pipeline, report) =
            compile_with_report(&self.path.display().to_string(), &text, &self.guard)?;
        self.report.store(report.map(Arc::new));
        self.current.store(Arc::new(pipeline));
        Ok(true)
    }

    /// The `report` section in force (None: no push).
    pub(crate) fn report(&self) -> Option<Arc<SensorReport>> {
        self.report.load_full()
    }

    /// The file (relative paths of the `report` section are relative to its directory).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Polls the file every `interval` until `shutdown`, logging and counting each reload.
    pub(crate) async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: SensorMetrics,
        shutdown: impl Future<Output = ()>,
    ) {
        let this = self.clone();
        crate::poll::every(
            interval,
            shutdown,
            move || this.reload_if_changed(),
            |result| {
                let outcome = match result {
                    Ok(Ok(false)) => return,
                    Ok(Ok(true)) => {
                        tracing::info!(config = %self.path.display(), "sensor config reloaded");
                        "loaded"
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "sensor config not reloaded; keeping the last good one");
                        "failed"
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sensor config reload task failed");
                        "failed"
                    }
                };
                metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: outcome })
                    .inc();
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\n";

    #[test]
    fn reload_swaps_on_change_and_keeps_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sensor.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let first = file.current();
        assert!(!file.reload_if_changed().unwrap());
        assert!(Arc::ptr_eq(&first, &file.current()));

        std::fs::write(&path, GOOD.replace("name: b", "name: c")).unwrap();
        assert!(file.reload_if_changed().unwrap());
        assert_eq!(file.current().policy, "a/c");

        let bad =
            format!("{GOOD}openapi:\n  document: '{{\"openapi\": \"3.1.0\", \"paths\": 7}}'\n");
        std::fs::write(&path, bad.replace("name: b", "name: d")).unwrap();
        let err = file.reload_if_changed().unwrap_err();
        assert!(err.to_string().contains("sensor.yaml"), "{err}");
        assert!(err.to_string().contains("/paths"), "{err}");
        assert_eq!(file.current().policy, "a/c", "the last good config stays");
        // The same bad content is reported once.
        assert!(!file.reload_if_changed().unwrap());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.yaml");
        let err = ConfigFile::load(&path).err().unwrap();
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }
}
