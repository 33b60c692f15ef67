//! Admission control: each tenant may run a bounded number of queries at once and keep a
//! bounded number waiting; past that a query is refused at once with `RESOURCE_EXHAUSTED` and a
//! retry hint, rather than queueing without bound. Limits are per tenant, so one tenant's flood
//! fills only its own slots and queue: another tenant is admitted as if the device were idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Admission limits, device-wide defaults that a tenant's configuration may override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosConfig {
    /// Queries one tenant runs at once.
    pub max_queries: usize,
    /// Queries one tenant may have waiting for a slot.
    pub max_queued: usize,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            max_queries: 8,
            max_queued: 32,
        }
    }
}

struct Lane {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: QosConfig,
}

/// Per-tenant admission.
pub struct Admission {
    defaults: QosConfig,
    overrides: HashMap<String, QosConfig>,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("defaults", &self.defaults)
            .finish()
    }
}

/// A running query's slot; released when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// Admission with `defaults`, and per-tenant `overrides`.
    pub fn new(defaults: QosConfig, overrides: HashMap<String, QosConfig>) -> Result<Self> {
        for (who, q) in std::iter::once(("(default)".to_string(), &defaults))
            .chain(overrides.iter().map(|(k, v)| (k.clone(), v)))
        {
            if q.max_queries == 0 {
                return Err(Error::Config(format!(
                    "{who}: max_queries must be at least 1"
                )));
            }
        }
        Ok(Admission {
            defaults,
            overrides,
            lanes: Mutex::new(HashMap::new()),
        })
    }

    fn lane(&self, tenant: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().expect("admission lanes");
        lanes
            .entry(tenant.to_string())
            .or_insert_with(|| {
                let limits = self.overrides.get(tenant).copied().unwrap_or(self.defaults);
                Arc::new(Lane {
                    slots: Arc::new(Semaphore::new(limits.max_queries)),
                    waiting: AtomicUsize::new(0),
                    limits,
                })
            })
            .clone()
    }

    /// Waits for a slot of `tenant`'s, or refuses at once when its queue is full.
    pub async fn admit(&self, tenant: &str) -> Result<Slot> {
        let lane = self.lane(tenant);
        if let Ok(p) = lane.slots.clone().try_acquire_owned() {
            return Ok(Slot(p));
        }
        let waiting = lane.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= lane.limits.max_queued {
            lane.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted {
                message: format!(
                    "{} queries running and {waiting} waiting, the most this tenant may have",
                    lane.limits.max_queries
                ),
                retry_after_ms: 100,
            });
        }
        let permit = lane.slots.clone().acquire_owned().await;
        lane.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
            .map(Slot)
            .map_err(|_| Error::Internal("admission closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_and_other_tenants_are_unaffected() {
        let a = Admission::new(
            QosConfig {
                max_queries: 2,
                max_queued: 1,
            },
            HashMap::new(),
        )
        .unwrap();
        let s1 = a.admit("x").await.unwrap();
        let _s2 = a.admit("x").await.unwrap();
        // The third waits; the fourth is refused.
        let a = Arc::new(a);
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit("x").await.map(|_| ()) });
        tokio::task::yield_now().await;
        while a.lane("x").waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        match a.admit("x").await {
            Err(Error::ResourceExhausted { retry_after_ms, .. }) => assert!(retry_after_ms > 0),
            other => panic!("{other:?}"),
        }
        // Another tenant gets a slot at once.
        let _y = a.admit("y").await.unwrap();
        drop(s1);
        waiter.await.unwrap().unwrap();
    }
}
