//! The compile cache: compiled modules by SHA-256 (an `InstancePre`; per engine, so the
//! wasmtime version and configuration are part of the key), at most
//! [`SandboxConfig::programs_max`](super::SandboxConfig::programs_max) of them (64 by default),
//! each owned by the tenant that compiled it. A full cache drops the least recently used
//! module of the tenant holding the most, so a tenant cycling through modules pushes out its
//! own.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Program, Sandbox};

/// Compiled modules by SHA-256, at most `programs_max` of them, each with the owner (tenant)
/// that compiled it. A full cache drops the least recently used module of the owner holding
/// the most, which a later query compiles again: an owner cycling through many modules pushes
/// out its own, not everyone else's.
#[derive(Default)]
pub(super) struct ProgramCache {
    /// SHA-256 → the program, when it was last used (a counter, not a clock) and its owner.
    entries: HashMap<String, (Arc<Program>, u64, String)>,
    uses: u64,
}

impl ProgramCache {
    pub(super) fn get(&mut self, id: &str) -> Option<Arc<Program>> {
        self.uses += 1;
        let uses = self.uses;
        self.entries.get_mut(id).map(|(p, last, _)| {
            *last = uses;
            p.clone()
        })
    }

    pub(super) fn insert(&mut self, id: String, program: Arc<Program>, owner: &str, max: usize) {
        while self.entries.len() >= max.max(1) && !self.entries.contains_key(&id) {
            let mut held: HashMap<&str, usize> = HashMap::new();
            for (_, _, o) in self.entries.values() {
                *held.entry(o).or_default() += 1;
            }
            // The newcomer counts for its owner: one at its limit evicts its own. Some entry's
            // owner holds the most (an owner with no entry counts one at most, as every
            // entry's owner does at least).
            *held.entry(owner).or_default() += 1;
            let most = held.values().copied().max().unwrap_or(0);
            let oldest = self
                .entries
                .iter()
                .filter(|(_, (_, _, o))| held.get(o.as_str()) == Some(&most))
                .min_by_key(|(_, (_, last, _))| *last)
                .map(|(k, _)| k.clone())
                .expect("an entry's owner holds the most");
            self.entries.remove(&oldest);
        }
        self.uses += 1;
        self.entries
            .insert(id, (program, self.uses, owner.to_string()));
    }
}

impl Sandbox {
    /// How many compiled modules the cache holds.
    pub fn cached_programs(&self) -> usize {
        self.cache.lock().expect("cache lock").entries.len()
    }
}
