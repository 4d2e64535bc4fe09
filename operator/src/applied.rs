//! What the operator last applied to each child, so that a reconcile does
//! not apply again what nobody has changed since.
//!
//! A server-side apply that changes nothing still costs the API server a
//! full merge; a Connection's reconcile applies seven children, and it is
//! reconciled again whenever its Deployment's status moves. The cache keeps,
//! per child, a hash of the last patch and the child's *epoch*: a counter
//! that the watch of the children bumps whenever someone other than the
//! operator writes to the child, or deletes it. A patch is skipped only
//! when its hash is the one recorded *and* no such write came since the
//! apply began, so an edit or a deletion that races an apply is never
//! mistaken for the operator's own state. An operator that starts afresh
//! applies everything once.
//!
//! kube-runtime has no such cache (controller-runtime neither); it is a
//! map and a counter, kept here.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

/// A child: `Kind/namespace/name` (no namespace for a cluster-wide one).
pub type Key = String;

/// The key of the child `kind` `name` in `namespace`.
pub fn key(kind: &str, namespace: Option<&str>, name: &str) -> Key {
    format!("{kind}/{}/{name}", namespace.unwrap_or_default())
}

/// A hash of a patch body.
pub fn hash(patch: &serde_json::Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    patch.to_string().hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Bumped by every write of someone else, and every deletion.
    epoch: u64,
    /// The hash of the last patch applied, and the epoch its apply began in.
    applied: Option<(u64, u64)>,
}

/// The last patch applied to each child; see the module documentation.
#[derive(Debug, Default)]
pub struct Applied(Mutex<HashMap<Key, Entry>>);

impl Applied {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic elsewhere while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The child's epoch, taken before an apply begins.
    pub fn epoch(&self, key: &str) -> u64 {
        self.entries().get(key).map_or(0, |e| e.epoch)
    }

    /// Whether `hash` was applied to the child and nobody else wrote to it
    /// since that apply began.
    pub fn unchanged(&self, key: &str, hash: u64) -> bool {
        self.entries()
            .get(key)
            .is_some_and(|e| e.applied == Some((hash, e.epoch)))
    }

    /// Records that `hash` was applied in `epoch`.
    pub fn record(&self, key: Key, hash: u64, epoch: u64) {
        self.entries().entry(key).or_default().applied = Some((hash, epoch));
    }

    /// Someone else wrote to the child, or it went.
    pub fn touched(&self, key: Key) {
        let mut entries = self.entries();
        let entry = entries.entry(key).or_default();
        entry.epoch += 1;
    }

    /// Every child of `kind` may have changed unseen: its watch starts
    /// again from a list, which shows no deletion of the time between.
    pub fn touched_all(&self, kind: &str) {
        let prefix = format!("{kind}/");
        for (_, entry) in self.entries().iter_mut().filter(|(k, _)| k.starts_with(&prefix)) {
            entry.epoch += 1;
        }
    }

    /// Forgets every child whose key `keep` refuses (a deleted
    /// Connection's children).
    pub fn forget(&self, keep: impl Fn(&str) -> bool) {
        self.entries().retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_patch_is_unchanged_until_someone_else_writes() {
        let applied = Applied::default();
        let k = key("ConfigMap", Some("shop"), "gatehouse-orders");
        assert!(!applied.unchanged(&k, 7), "nothing applied yet");
        applied.record(k.clone(), 7, applied.epoch(&k));
        assert!(applied.unchanged(&k, 7));
        assert!(!applied.unchanged(&k, 8), "another patch is applied");
        applied.touched(k.clone());
        assert!(!applied.unchanged(&k, 7), "an edit by someone else");
        applied.record(k.clone(), 7, applied.epoch(&k));
        assert!(applied.unchanged(&k, 7));
    }

    #[test]
    fn an_edit_during_an_apply_is_not_covered_by_it() {
        let applied = Applied::default();
        let k = key("Service", Some("shop"), "orders");
        let began = applied.epoch(&k);
        // The edit's event arrives before the apply's answer is recorded.
        applied.touched(k.clone());
        applied.record(k.clone(), 7, began);
        assert!(!applied.unchanged(&k, 7));
    }

    #[test]
    fn a_new_list_of_a_kind_touches_every_child_of_that_kind() {
        let applied = Applied::default();
        let role = key("Role", Some("shop"), "gatehouse-a");
        let binding = key("RoleBinding", Some("shop"), "gatehouse-a");
        applied.record(role.clone(), 1, 0);
        applied.record(binding.clone(), 1, 0);
        applied.touched_all("Role");
        assert!(!applied.unchanged(&role, 1));
        assert!(applied.unchanged(&binding, 1));
    }

    #[test]
    fn forgotten_children_are_applied_again() {
        let applied = Applied::default();
        let a = key("Role", Some("shop"), "gatehouse-a");
        let b = key("Role", Some("shop"), "gatehouse-b");
        applied.record(a.clone(), 1, 0);
        applied.record(b.clone(), 1, 0);
        applied.forget(|k| !k.ends_with("/gatehouse-a"));
        assert!(!applied.unchanged(&a, 1));
        assert!(applied.unchanged(&b, 1));
    }
}
