//! Admission control: each tenant may run a bounded number of queries at once and keep a
//! bounded number waiting; past that a query is refused at once with `RESOURCE_EXHAUSTED` and a
//! retry hint, rather than queueing without bound. Limits are per tenant, so one tenant's flood
//! fills only its own slots and queue. While several tenants have work (a query running or
//! waiting, or one that ended in the last 250 ms), each may run at most its
//! share of the device's cores (`cores / active tenants`, at least one) — queries it started
//! before finish, new ones wait — so a tenant flooding the device with CPU-heavy (or hostile)
//! queries leaves the others their share. A tenant alone may use all its `max_queries`.
//!
//! A tenant whose kernels fail (trap, deadline, memory or stack limit, bad output) is backed
//! off while other tenants have work: after its n-th kernel failure in a row its next query is
//! admitted no sooner than 5 ms · 2^(n−1) later (at most 2 s), so a tenant that keeps sending
//! hostile kernels spends the device's cores mostly waiting, not spinning. A query that ends
//! well clears the count; a tenant alone is never backed off. Its hostile queries still fail
//! with their own errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{Error, Result};
pub use crate::storage::media::MediaBucket;

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
    /// Budget of any one call into one of the tenant's kernels, ms (none: the sandbox's).
    pub kernel_call_ms: Option<u64>,
    /// Kernel memory of one of the tenant's queries, MiB (none: the sandbox's).
    pub kernel_memory_mb: Option<usize>,
    /// Kernels one tenant may have registered.
    pub max_kernels: usize,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            max_queries: 8,
            max_queued: 32,
            media_mb_per_s: None,
            kernel_deadline_ms: None,
            kernel_call_ms: None,
            kernel_memory_mb: None,
            max_kernels: 64,
        }
    }
}

struct Lane {
    limits: QosConfig,
    media: Option<Arc<MediaBucket>>,
    backoff: Mutex<Backoff>,
}

/// How a query ended, for the kernel-failure back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered.
    Succeeded,
    /// A kernel of it failed (trap, deadline, limit, bad output).
    KernelFailed,
    /// It failed otherwise.
    OtherFailure,
}

/// Kernel failures in a row, and when the tenant's next query may start while others work.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<tokio::time::Instant>,
}

/// The first back-off after a kernel failure; it doubles with each further failure in a row.
const BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest back-off.
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Queries of one tenant, running and waiting, and when its last query ended.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    running: usize,
    waiting: usize,
    last_end: Option<tokio::time::Instant>,
}

/// How long a tenant still counts as having work after its last query ended: a client that
/// sends one query after another spends part of its time between them.
const RECENT: std::time::Duration = std::time::Duration::from_millis(250);

/// Per-tenant admission.
pub struct Admission {
    defaults: QosConfig,
    overrides: HashMap<String, QosConfig>,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    counts: Mutex<HashMap<String, Counts>>,
    cores: usize,
    changed: Notify,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("defaults", &self.defaults)
            .finish()
    }
}

/// A running query's slot (released when dropped) and its tenant's limits.
#[derive(Debug)]
pub struct Slot {
    _running: Held,
    /// The tenant's media bandwidth limit, if any.
    pub media: Option<Arc<MediaBucket>>,
    /// The tenant's kernel limits, if any.
    pub kernel: Option<crate::compute::KernelLimits>,
}

/// One query counted as running or waiting for a tenant; uncounted when dropped.
#[derive(Debug)]
struct Held {
    admission: Arc<Admission>,
    tenant: String,
    running: bool,
    /// Whether dropping it still has to uncount it.
    counted: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut counts = self.admission.counts.lock().expect("admission counts");
        if let Some(c) = counts.get_mut(&self.tenant) {
            if self.running {
                c.running -= 1;
                c.last_end = Some(tokio::time::Instant::now());
            } else {
                c.waiting -= 1;
            }
        }
        drop(counts);
        self.admission.changed.notify_waiters();
    }
}

impl Admission {
    /// Admission with `defaults`, and per-tenant `overrides`, on a device with this machine's
    /// cores.
    pub fn new(defaults: QosConfig, overrides: HashMap<String, QosConfig>) -> Result<Self> {
        Self::with_cores(
            defaults,
            overrides,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
    }

    /// Admission on a device with `cores` cores.
    pub fn with_cores(
        defaults: QosConfig,
        overrides: HashMap<String, QosConfig>,
        cores: usize,
    ) -> Result<Self> {
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
            counts: Mutex::new(HashMap::new()),
            cores: cores.max(1),
            changed: Notify::new(),
        })
    }

    /// The limits that apply to `tenant`.
    pub fn limits(&self, tenant: &str) -> QosConfig {
        self.overrides.get(tenant).copied().unwrap_or(self.defaults)
    }

    fn lane(&self, tenant: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().expect("admission lanes");
        lanes
            .entry(tenant.to_string())
            .or_insert_with(|| {
                let limits = self.limits(tenant);
                Arc::new(Lane {
                    limits,
                    media: limits.media_mb_per_s.map(|m| Arc::new(MediaBucket::new(m))),
                    backoff: Mutex::default(),
                })
            })
            .clone()
    }

    /// `tenant`'s media bandwidth bucket, if it has a limit: range reads draw on it without
    /// taking a query slot (a host's Parquet reader issues many small reads per query).
    pub fn media(&self, tenant: &str) -> Option<Arc<MediaBucket>> {
        self.lane(tenant).media.clone()
    }

    /// Records that one of `tenant`'s queries ended: a kernel failure lengthens its back-off,
    /// a query that succeeded clears it, any other failure (a client gone, a bad plan) leaves
    /// it as it is.
    pub fn query_ended(&self, tenant: &str, outcome: Outcome) {
        let lane = self.lane(tenant);
        let mut b = lane.backoff.lock().expect("admission backoff");
        match outcome {
            Outcome::KernelFailed => {
                b.failures = b.failures.saturating_add(1);
                let wait = BACKOFF_FIRST
                    .saturating_mul(1u32 << (b.failures - 1).min(16))
                    .min(BACKOFF_MAX);
                b.until = Some(tokio::time::Instant::now() + wait);
            }
            Outcome::Succeeded => *b = Backoff::default(),
            Outcome::OtherFailure => {}
        }
    }

    /// How many queries `tenant` may run now: all its `max_queries` while it is the only
    /// tenant with work, else its share of the cores.
    fn cap(&self, others: usize, max_queries: usize) -> usize {
        if others == 0 {
            max_queries
        } else {
            max_queries.min((self.cores / (others + 1)).max(1))
        }
    }

    /// Tenants other than `tenant` with work: queries running or waiting (unless all they do
    /// is wait out a kernel-failure back-off), or one that ended less than [`RECENT`] ago; and
    /// the next instant one of the latter stops counting.
    fn others(
        &self,
        counts: &HashMap<String, Counts>,
        tenant: &str,
        now: tokio::time::Instant,
    ) -> (usize, Option<tokio::time::Instant>) {
        let mut n = 0;
        let mut next_change: Option<tokio::time::Instant> = None;
        for (t, c) in counts {
            if t.as_str() == tenant {
                continue;
            }
            let backed_off = || {
                self.lanes
                    .lock()
                    .expect("admission lanes")
                    .get(t)
                    .and_then(|l| l.backoff.lock().expect("admission backoff").until)
                    .is_some_and(|u| u > now)
            };
            if c.running > 0 || (c.waiting > 0 && !backed_off()) {
                n += 1;
            } else if let Some(quiet) = c.last_end.map(|e| e + RECENT).filter(|q| *q > now) {
                n += 1;
                next_change = Some(next_change.map_or(quiet, |w| w.min(quiet)));
            }
        }
        (n, next_change)
    }

    /// Waits for a slot of `tenant`'s, or refuses at once when its queue is full.
    pub async fn admit(self: &Arc<Self>, tenant: &str) -> Result<Slot> {
        let lane = self.lane(tenant);
        let l = &lane.limits;
        let ms =
            |v: Option<u64>| v.map_or(std::time::Duration::MAX, std::time::Duration::from_millis);
        let kernel = match (l.kernel_deadline_ms, l.kernel_call_ms, l.kernel_memory_mb) {
            (None, None, None) => None,
            (d, c, m) => Some(crate::compute::KernelLimits {
                deadline: ms(d),
                call_budget: ms(c),
                memory_bytes_max: m.map_or(usize::MAX, |m| m << 20),
            }),
        };
        let mut waiting: Option<Held> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut backed_off = None;
            let wake;
            {
                let mut counts = self.counts.lock().expect("admission counts");
                let now = tokio::time::Instant::now();
                let (others, next_change) = self.others(&counts, tenant, now);
                let cap = self.cap(others, lane.limits.max_queries);
                if others > 0 {
                    let until = lane.backoff.lock().expect("admission backoff").until;
                    backed_off = until.filter(|u| *u > now);
                }
                // Besides a change of counts, the end of the back-off or another tenant
                // falling quiet may admit this query.
                wake = match (backed_off, next_change) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let c = counts.entry(tenant.to_string()).or_default();
                if c.running < cap && backed_off.is_none() {
                    c.running += 1;
                    if let Some(mut w) = waiting.take() {
                        // The waiting count moves to running, here under the lock.
                        c.waiting -= 1;
                        w.counted = false;
                    }
                    return Ok(Slot {
                        _running: Held {
                            admission: self.clone(),
                            tenant: tenant.to_string(),
                            running: true,
                            counted: true,
                        },
                        media: lane.media.clone(),
                        kernel,
                    });
                }
                if waiting.is_none() {
                    if c.waiting >= lane.limits.max_queued {
                        return Err(Error::ResourceExhausted {
                            message: format!(
                                "{} queries running and {} waiting, the most this tenant may have",
                                c.running, c.waiting
                            ),
                            retry_after_ms: 100,
                        });
                    }
                    c.waiting += 1;
                    waiting = Some(Held {
                        admission: self.clone(),
                        tenant: tenant.to_string(),
                        running: false,
                        counted: true,
                    });
                }
            }
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_queries: usize, max_queued: usize) -> QosConfig {
        QosConfig {
            max_queries,
            max_queued,
            ..QosConfig::default()
        }
    }

    fn counts(a: &Admission, t: &str) -> Counts {
        a.counts.lock().unwrap().get(t).copied().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_other_tenants_are_unaffected() {
        let a = Arc::new(Admission::with_cores(limits(2, 1), HashMap::new(), 8).unwrap());
        let s1 = a.admit("x").await.unwrap();
        let _s2 = a.admit("x").await.unwrap();
        // The third waits; the fourth is refused.
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit("x").await.map(|_| ()) });
        while counts(&a, "x").waiting == 0 {
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
        assert_eq!(counts(&a, "x").waiting, 0);
    }

    #[tokio::test]
    async fn busy_tenants_share_the_cores() {
        // Two cores: alone, x runs all 8 it may; once y has work, x's new queries wait until x
        // is under its share of one, while y is admitted at once.
        let a = Arc::new(Admission::with_cores(limits(8, 8), HashMap::new(), 2).unwrap());
        let mut x: Vec<Slot> = Vec::new();
        for _ in 0..3 {
            x.push(a.admit("x").await.unwrap());
        }
        let _y = a.admit("y").await.unwrap();
        let a2 = a.clone();
        let more = tokio::spawn(async move { a2.admit("x").await.map(|_| ()) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!more.is_finished(), "x is over its share while y works");
        x.pop();
        x.pop();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!more.is_finished(), "x still holds its share of one");
        x.pop();
        more.await.unwrap().unwrap();
        // A dropped waiter leaves no trace.
        let _x1 = a.admit("x").await.unwrap();
        let a3 = a.clone();
        let gone = tokio::spawn(async move { a3.admit("x").await.map(|_| ()) });
        while counts(&a, "x").waiting == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(counts(&a, "x").waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn kernel_failures_back_a_tenant_off_while_others_work() {
        let a = Arc::new(Admission::with_cores(limits(8, 8), HashMap::new(), 8).unwrap());
        // Alone, x is never backed off.
        for _ in 0..4 {
            a.query_ended("x", Outcome::KernelFailed);
        }
        let t = tokio::time::Instant::now();
        drop(a.admit("x").await.unwrap());
        assert_eq!(t.elapsed(), std::time::Duration::ZERO);
        // While y works, x's fifth failure in a row delays its next query by 5 ms · 2⁴.
        let y = a.admit("y").await.unwrap();
        a.query_ended("x", Outcome::KernelFailed);
        let after_fifth = tokio::time::Instant::now();
        drop(a.admit("x").await.unwrap());
        assert_eq!(after_fifth.elapsed(), std::time::Duration::from_millis(80));
        // y itself is admitted at once, and x's success clears its count.
        drop(a.admit("y").await.unwrap());
        // A failure that is not a kernel's leaves the count (the next kernel failure is the
        // sixth in a row: 160 ms); a success clears it.
        a.query_ended("x", Outcome::OtherFailure);
        a.query_ended("x", Outcome::KernelFailed);
        let t = tokio::time::Instant::now();
        drop(a.admit("x").await.unwrap());
        assert_eq!(t.elapsed(), std::time::Duration::from_millis(160));
        a.query_ended("x", Outcome::Succeeded);
        let t = tokio::time::Instant::now();
        drop(a.admit("x").await.unwrap());
        assert_eq!(t.elapsed(), std::time::Duration::ZERO);
        // The back-off is bounded, and ends early once y has been quiet for a while.
        for _ in 0..30 {
            a.query_ended("x", Outcome::KernelFailed);
        }
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit("x").await.map(|_| ()) });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "x waits while y works");
        let t = tokio::time::Instant::now();
        drop(y);
        waiter.await.unwrap().unwrap();
        assert_eq!(t.elapsed(), RECENT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_waiting_out_a_back_off_does_not_shrink_the_others_share() {
        // Two cores: y would be held to one query while x has work, but x only waits.
        let a = Arc::new(Admission::with_cores(limits(8, 8), HashMap::new(), 2).unwrap());
        for _ in 0..3 {
            a.query_ended("x", Outcome::KernelFailed);
        }
        let y1 = a.admit("y").await.unwrap();
        let a2 = a.clone();
        let x = tokio::spawn(async move { a2.admit("x").await.map(|_| ()) });
        while counts(&a, "x").waiting == 0 {
            tokio::task::yield_now().await;
        }
        let more = tokio::time::timeout(std::time::Duration::from_millis(1), async {
            (a.admit("y").await.unwrap(), a.admit("y").await.unwrap())
        })
        .await
        .expect("y keeps all its slots while x is backed off");
        drop((y1, more));
        x.await.unwrap().unwrap();
    }
}
