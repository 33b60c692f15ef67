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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosConfig {
    /// Queries one tenant runs at once.
    pub max_queries: usize,
    /// Queries one tenant may have waiting for a slot.
    pub max_queued: usize,
    /// Media bandwidth one tenant's queries may read together, MB/s (none: unlimited).
    pub media_mb_per_s: Option<f64>,
    /// Kernel time budget of one of the tenant's queries, ms (none: the sandbox's).
    pub kernel_deadline_ms: Option<u64>,
    /// Kernel memory of one of the tenant's queries, MiB (none: the sandbox's).
    pub kernel_memory_mb: Option<usize>,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            max_queries: 8,
            max_queued: 32,
            media_mb_per_s: None,
            kernel_deadline_ms: None,
            kernel_memory_mb: None,
        }
    }
}

struct Lane {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: QosConfig,
    media: Option<Arc<MediaBucket>>,
}

/// A token bucket on bytes read from the media, shared by one tenant's queries: reads wait
/// until the tenant's rate allows them, with a burst of 100 ms worth (at least 1 MiB).
#[derive(Debug)]
pub struct MediaBucket {
    bytes_per_second: f64,
    burst: std::time::Duration,
    /// Theoretical arrival time of the next byte (GCRA).
    tat: Mutex<tokio::time::Instant>,
}

impl MediaBucket {
    /// A bucket of `mb_per_s` megabytes per second.
    pub fn new(mb_per_s: f64) -> Self {
        let bytes_per_second = mb_per_s * 1e6;
        let burst =
            std::time::Duration::from_secs_f64((0.1f64).max((1 << 20) as f64 / bytes_per_second));
        MediaBucket {
            bytes_per_second,
            burst,
            tat: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `bytes` may be read.
    pub async fn take(&self, bytes: u64) {
        let allowed_at = {
            let mut tat = self.tat.lock().expect("media bucket");
            let now = tokio::time::Instant::now();
            let start = (*tat).max(now);
            *tat = start + std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            (*tat).checked_sub(self.burst).unwrap_or(now)
        };
        tokio::time::sleep_until(allowed_at).await;
    }
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

/// A running query's slot (released when dropped) and its tenant's media bucket.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The tenant's media bandwidth limit, if any.
    pub media: Option<Arc<MediaBucket>>,
    /// The tenant's kernel limits, if any.
    pub kernel: Option<crate::compute::wasm::KernelLimits>,
}

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
            if let Some(m) = q.media_mb_per_s
                && !(m.is_finite() && m > 0.0)
            {
                return Err(Error::Config(format!(
                    "{who}: media_mb_per_s must be a positive number"
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
                    media: limits.media_mb_per_s.map(|m| Arc::new(MediaBucket::new(m))),
                })
            })
            .clone()
    }

    /// Waits for a slot of `tenant`'s, or refuses at once when its queue is full.
    pub async fn admit(&self, tenant: &str) -> Result<Slot> {
        let lane = self.lane(tenant);
        let kernel = match (lane.limits.kernel_deadline_ms, lane.limits.kernel_memory_mb) {
            (None, None) => None,
            (d, m) => Some(crate::compute::wasm::KernelLimits {
                deadline: d.map_or(std::time::Duration::MAX, std::time::Duration::from_millis),
                memory_bytes_max: m.map_or(usize::MAX, |m| m << 20),
            }),
        };
        let slot = |p| Slot {
            _permit: p,
            media: lane.media.clone(),
            kernel,
        };
        if let Ok(p) = lane.slots.clone().try_acquire_owned() {
            return Ok(slot(p));
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
            .map(slot)
            .map_err(|_| Error::Internal("admission closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_media_bucket_paces_reads_after_its_burst() {
        // 10 MB/s with a burst of 1 MiB's worth: 6 MB take 0.6 s less the burst.
        let b = MediaBucket::new(10.0);
        assert_eq!(b.burst.as_secs_f64(), (1 << 20) as f64 / 10e6);
        let t = tokio::time::Instant::now();
        for _ in 0..6 {
            b.take(1_000_000).await;
        }
        let want = std::time::Duration::from_millis(600) - b.burst;
        assert!(
            t.elapsed().abs_diff(want) < std::time::Duration::from_millis(1),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_other_tenants_are_unaffected() {
        let a = Admission::new(
            QosConfig {
                max_queries: 2,
                max_queued: 1,
                media_mb_per_s: None,
                kernel_deadline_ms: None,
                kernel_memory_mb: None,
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
