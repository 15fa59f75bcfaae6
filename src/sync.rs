//! Locking the standard library's mutexes.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, using it as it is if a panic poisoned it. Every mutex of
/// the crate guards data that one call changes at a time (a map, a set,
/// counters), so a panic cannot leave it half-changed.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
