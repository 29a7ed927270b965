//! Isolation between the test modules of one tier binary that share its control plane.
//!
//! The cluster and end-to-end tiers run every test module (one former test binary each)
//! against one control plane. Tests of one module may run at the same time, as they were
//! written to; tests of different modules never do, because operators watch every namespace,
//! webhooks are cluster-wide and the operator namespace holds one CA. [`enter`] is a lock that
//! any number of tests of the same group hold together; a test of another group waits until
//! the group is empty. When a different group takes over, the cluster-wide state a group may
//! have left behind (webhook registrations, ApiSecurityPolicies, the operator namespace's
//! Secrets, ConfigMaps, Leases, Events) is removed, so each module starts as it did on its own control plane.
//!
//! Objects a group needs for all its tests (an in-process operator) live in the group
//! ([`shared`]) and are dropped when its last test ends, before the next group starts.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::cluster::control_plane;
use super::controller::OPERATOR_NS;

#[derive(Default)]
struct State {
    /// The group running now, with its number of running tests.
    current: Option<(&'static str, usize)>,
    /// The last group that ran (to know when a different one takes over).
    last: Option<&'static str>,
    /// Objects shared by the running group's tests.
    shared: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test for its whole run (`let _group = enter(module_path!());` first thing).
#[must_use = "the group is left when the guard is dropped"]
pub struct Group {
    name: &'static str,
}

/// Enters `group` (a module path), waiting while a test of another group runs.
pub fn enter(group: &'static str) -> Group {
    let mut guard = lock();
    loop {
        let state = guard.get_or_insert_with(State::default);
        match &mut state.current {
            Some((name, count)) if *name == group => {
                *count += 1;
                break;
            }
            Some(_) => {
                guard = CHANGED.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            None => {
                if state.last.is_some_and(|last| last != group) {
                    reset_shared_cluster_state();
                }
                state.current = Some((group, 1));
                state.last = Some(group);
                break;
            }
        }
    }
    Group { name: group }
}

impl Drop for Group {
    fn drop(&mut self) {
        let mut guard = lock();
        let Some(state) = guard.as_mut() else { return };
        let Some((name, count)) = &mut state.current else {
            return;
        };
        debug_assert_eq!(*name, self.name);
        *count -= 1;
        if *count == 0 {
            state.current = None;
            // Dropped with the lock held: the next group starts only once an operator the
            // group shared has stopped.
            let shared = std::mem::take(&mut state.shared);
            drop(shared);
            CHANGED.notify_all();
        }
    }
}

/// The running group's `T`, made by `init` for the group's first test that asks.
pub fn shared<T: Any + Send + Sync>(init: impl FnOnce() -> T) -> Arc<T> {
    let existing = lock()
        .as_ref()
        .and_then(|s| s.shared.get(&TypeId::of::<T>()).cloned());
    let value = match existing {
        Some(value) => value,
        None => {
            // Made without the lock (an operator takes a moment to start); a racing test of
            // the same group may make one too: the first stored wins, the other is dropped.
            let made: Arc<dyn Any + Send + Sync> = Arc::new(init());
            let mut guard = lock();
            let state = guard.get_or_insert_with(State::default);
            state
                .shared
                .entry(TypeId::of::<T>())
                .or_insert(made)
                .clone()
        }
    };
    value
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("stored under the TypeId of T"))
}

/// Removes what a group may leave behind that would change another group's results: webhook
/// registrations (a fail-closed one pointing at a stopped server refuses every write), the
/// ApiSecurityPolicies (the next operator would reconcile and count them) and the operator
/// namespace's CA, serving certificate, Leases, Events and helm release records.
fn reset_shared_cluster_state() {
    let cp = control_plane();
    cp.kubectl_ok([
        "delete",
        "validatingwebhookconfigurations",
        "--all",
        "--ignore-not-found",
        "--wait=false",
    ]);
    // Policies another module left (their namespaces may still be terminating) would be
    // reconciled, counted and reported by this module's operators.
    let policies = cp.kubectl([
        "delete",
        "apisecuritypolicies.apiguard.dev",
        "--all",
        "--all-namespaces",
        "--ignore-not-found",
    ]);
    let stderr = String::from_utf8_lossy(&policies.stderr);
    assert!(
        policies.status.success() || stderr.contains("doesn't have a resource type"),
        "deleting the policies another module left: {stderr}"
    );
    cp.kubectl_ok([
        "delete",
        "secrets,configmaps,leases,events",
        "--all",
        "-n",
        OPERATOR_NS,
        "--ignore-not-found",
        "--wait=false",
    ]);
}
