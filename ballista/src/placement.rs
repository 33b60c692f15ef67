//! Placement: a device's scan tasks run on an executor near the device.
//!
//! An executor declares the devices near it (`nearstore cluster executor --near-device URL`).
//! The declaration travels in its executor id, the one thing of an executor's that Ballista's
//! task binding sees: `NAME+near.TAG.TAG…`, each TAG a short hash of a device URL as clients
//! name the device ([`near_tag`]).
//!
//! [`NearDevices`] is the scheduler's task distribution policy. For each running stage it
//! reads, from the stage's plan, the device each input partition scans: a
//! [`DeviceScanExec`] reached from the stage's root through operators that keep partitions
//! (partition `p` of the stage is partition `p` of the scan). A partition is bound to a free
//! executor near its device; while such an executor is alive but busy, the partition waits for
//! it, up to the locality wait, and then any executor takes it (a busy executor frees a slot
//! when a task ends, which makes the scheduler bind again, so a waiting partition is never
//! stranded). Partitions without a device, or whose device no live executor is near, go to
//! the executor with the most free slots first, as Ballista's default (bias) policy does; so
//! does every stage whose input collapses to one partition (one task takes all of them).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::{RangeShuffleReaderExec, ShuffleReaderExec};
use ballista_core::serde::protobuf::{AvailableVcores, executor_status, job_status};
use ballista_core::serde::scheduler::TaskKey;
use ballista_scheduler::cluster::{BoundTask, ClusterState, DistributionPolicy};
use ballista_scheduler::state::execution_graph::{TaskDescription, create_task_info};
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::physical_plan::ExecutionPlan;
use nearstore_sdk::sql::DeviceScanExec;

/// The separator between an executor's name and its near-device tags.
const NEAR: &str = "+near.";

/// A device URL's tag: 12 hex digits of its FNV-1a hash, after trimming, lower-casing and
/// dropping a trailing `/` (so `grpc://Host:1/` and `grpc://host:1` are one device).
pub fn near_tag(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').to_ascii_lowercase();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// The executor id that declares `name` near `devices` (`name` itself when there are none).
pub fn executor_id(name: &str, devices: &[String]) -> String {
    if devices.is_empty() {
        return name.to_string();
    }
    let tags: Vec<String> = devices.iter().map(|d| near_tag(d)).collect();
    format!("{name}{NEAR}{}", tags.join("."))
}

/// The device tags an executor id declares.
fn declared_tags(executor_id: &str) -> impl Iterator<Item = &str> {
    executor_id
        .split_once(NEAR)
        .map(|(_, tags)| tags)
        .unwrap_or("")
        .split('.')
        .filter(|t| !t.is_empty())
}

/// A pending partition's place in a stage: (job, stage, partition).
type PartitionKey = (JobId, usize, usize);

/// The task distribution policy that runs a device's scan near it (see the module's doc).
pub struct NearDevices {
    wait: Duration,
    /// The cluster whose live executors may be waited for; set once the cluster exists (the
    /// policy is part of the configuration the cluster is built from).
    cluster: OnceLock<Arc<dyn ClusterState>>,
    /// When each partition waiting for a near executor first waited.
    waiting: Mutex<HashMap<PartitionKey, Instant>>,
}

impl std::fmt::Debug for NearDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearDevices")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl NearDevices {
    /// A policy that waits up to `wait` for a busy executor near a partition's device.
    pub fn new(wait: Duration) -> Self {
        NearDevices {
            wait,
            cluster: OnceLock::new(),
            waiting: Mutex::default(),
        }
    }

    /// Gives the policy the cluster whose executors it binds to.
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterState>) {
        let _ = self.cluster.set(cluster);
    }

    /// Live executors by the device tags they declare.
    fn live_near(&self) -> HashMap<String, HashSet<String>> {
        let mut near: HashMap<String, HashSet<String>> = HashMap::new();
        let Some(cluster) = self.cluster.get() else {
            return near;
        };
        for (id, beat) in cluster.executor_heartbeats() {
            let active = matches!(
                beat.status.and_then(|s| s.status),
                Some(executor_status::Status::Active(_))
            );
            if active {
                for tag in declared_tags(&id) {
                    near.entry(tag.to_string()).or_default().insert(id.clone());
                }
            }
        }
        near
    }
}

#[async_trait::async_trait]
impl DistributionPolicy for NearDevices {
    async fn bind_tasks(
        &self,
        mut budgets: Vec<&mut AvailableVcores>,
        running_jobs: Arc<HashMap<JobId, JobInfoCache>>,
    ) -> datafusion::error::Result<Vec<BoundTask>> {
        let mut bound = Vec::new();
        // The most free slots first, as Ballista's bias policy.
        budgets.sort_by_key(|b| std::cmp::Reverse(b.vcores));
        let near = self.live_near();
        // Taken out of the lock while the jobs' graphs are awaited.
        let mut waiting = std::mem::take(&mut *self.waiting.lock().expect("placement lock"));
        waiting.retain(|(job, _, _), _| running_jobs.contains_key(job));
        let mut binder = Binder {
            budgets,
            near: &near,
            waiting: &mut waiting,
            wait: self.wait,
            now: Instant::now(),
        };
        'jobs: for (job_id, job) in running_jobs.iter() {
            if !matches!(job.status, Some(job_status::Status::Running(_))) {
                continue;
            }
            let mut graph = job.execution_graph.write().await;
            let session_id = graph.session_id().to_string();
            let mut seen = Vec::new();
            while let Some(stage) = graph.fetch_running_stage(&seen) {
                seen.push(stage.stage_id);
                bound.extend(binder.stage(stage, &session_id, job_id));
                if binder.budgets.iter().all(|b| b.vcores == 0) {
                    break 'jobs;
                }
            }
        }
        *self.waiting.lock().expect("placement lock") = waiting;
        Ok(bound)
    }

    fn name(&self) -> &str {
        "near-devices"
    }
}

/// One round of binding: the free slots, the live executors near each device, the waiting
/// partitions.
struct Binder<'a, 'b> {
    budgets: Vec<&'b mut AvailableVcores>,
    near: &'a HashMap<String, HashSet<String>>,
    waiting: &'a mut HashMap<PartitionKey, Instant>,
    wait: Duration,
    now: Instant,
}

impl Binder<'_, '_> {
    /// Binds what it can of `stage`'s pending partitions; the rest stay pending, in order.
    fn stage(&mut self, stage: &mut RunningStage, session_id: &str, job: &JobId) -> Vec<BoundTask> {
        let mut out = Vec::new();
        let pending = stage.pending.next_slice(usize::MAX);
        if pending.is_empty() {
            return out;
        }
        let devices = stage_devices(&stage.plan, stage.partitions);
        let near_of = |p: usize| -> Option<HashSet<String>> {
            let tag = near_tag(devices.get(p)?.as_deref()?);
            self.near.get(&tag).cloned()
        };
        // The units bound whole, each with the live executors near all its devices. A stage
        // whose input collapses is one unit in one task on one slot (Ballista's rule: its root
        // has one partition, so one thread runs it); otherwise a unit is a partition, and a
        // task takes up to the session's cap of them, a slot each.
        let collapse = input_collapses(&stage.plan);
        let units: Vec<(Vec<usize>, Option<HashSet<String>>)> = if collapse {
            let near = pending
                .iter()
                .map(|&p| near_of(p))
                .reduce(|a, b| Some(a?.intersection(&b?).cloned().collect()))
                .flatten()
                .filter(|n| !n.is_empty());
            vec![(pending.clone(), near)]
        } else {
            pending.iter().map(|&p| (vec![p], near_of(p))).collect()
        };
        let cap = if collapse {
            1
        } else {
            stage
                .session_config
                .options()
                .extensions
                .get::<BallistaConfig>()
                .map(|c| c.max_partitions_per_task())
                .filter(|&n| n > 0)
                .unwrap_or(usize::MAX)
        };
        let slots = |units: &[&(Vec<usize>, Option<HashSet<String>>)]| -> u32 {
            if collapse { 1 } else { units.len() as u32 }
        };
        let mut left: Vec<usize> = (0..units.len()).collect();
        // First each unit to a free executor near its devices.
        for b in self.budgets.iter_mut() {
            loop {
                let max = (b.vcores as usize).min(cap);
                let take: Vec<usize> = left
                    .iter()
                    .copied()
                    .filter(|&u| {
                        units[u]
                            .1
                            .as_ref()
                            .is_some_and(|n| n.contains(&b.executor_id))
                    })
                    .take(max)
                    .collect();
                if take.is_empty() {
                    break;
                }
                left.retain(|u| !take.contains(u));
                let chosen: Vec<_> = take.iter().map(|&u| &units[u]).collect();
                let parts = chosen.iter().flat_map(|u| u.0.iter().copied()).collect();
                out.push(task(stage, session_id, job, b, parts, slots(&chosen)));
            }
        }
        // Then whatever has no live executor near it, or has waited long enough, anywhere.
        let stage_id = stage.stage_id;
        let key = |u: usize| (job.clone(), stage_id, units[u].0[0]);
        let (mut free, wait): (Vec<usize>, Vec<usize>) = left.into_iter().partition(|&u| {
            units[u].1.is_none()
                || self.wait.is_zero()
                || self
                    .waiting
                    .get(&key(u))
                    .is_some_and(|since| self.now.duration_since(*since) >= self.wait)
        });
        for b in self.budgets.iter_mut() {
            while b.vcores > 0 && !free.is_empty() {
                let n = (b.vcores as usize).min(cap).min(free.len());
                let chosen: Vec<_> = free.drain(..n).map(|u| &units[u]).collect();
                let parts = chosen.iter().flat_map(|u| u.0.iter().copied()).collect();
                out.push(task(stage, session_id, job, b, parts, slots(&chosen)));
            }
        }
        for &u in &wait {
            self.waiting.entry(key(u)).or_insert(self.now);
        }
        for (_, t) in &out {
            for &p in &t.global_input_partition_ids {
                self.waiting.remove(&(job.clone(), stage_id, p));
            }
        }
        let mut keep: Vec<usize> = free
            .into_iter()
            .chain(wait)
            .flat_map(|u| units[u].0.iter().copied())
            .collect();
        keep.sort_by_key(|p| pending.iter().position(|q| q == p));
        stage.pending.reschedule(keep);
        out
    }
}

/// A task of `partitions` of `stage` on `budget`'s executor, using `slots` of its free slots.
fn task(
    stage: &mut RunningStage,
    session_id: &str,
    job: &JobId,
    budget: &mut AvailableVcores,
    partitions: Vec<usize>,
    slots: u32,
) -> BoundTask {
    let task_id = stage.task_infos.len();
    let task_attempt = partitions
        .iter()
        .map(|&p| stage.task_failure_numbers[p])
        .max()
        .unwrap_or(0);
    let mut info = create_task_info(budget.executor_id.clone(), task_id);
    info.global_input_partition_ids = partitions.clone();
    info.vcores_consumed = slots;
    stage.task_infos.push(info);
    budget.vcores -= slots;
    let description = TaskDescription {
        session_id: session_id.to_string(),
        key: TaskKey {
            job_id: job.clone(),
            stage_id: stage.stage_id,
            task_id,
        },
        stage_attempt_num: stage.stage_attempt_num,
        task_attempt,
        global_input_partition_ids: partitions,
        vcores_consumed: slots,
        plan: stage.plan.clone(),
        session_config: stage.session_config.clone(),
    };
    (budget.executor_id.clone(), description)
}

/// Whether a stage's input collapses to one partition below its root (Ballista packs all of
/// such a stage's partitions into one task): walking down single-child operators to the
/// stage's inputs, one of them has a single partition.
fn input_collapses(root: &Arc<dyn ExecutionPlan>) -> bool {
    fn walk(node: &Arc<dyn ExecutionPlan>) -> bool {
        if node.is::<ShuffleReaderExec>() || node.is::<RangeShuffleReaderExec>() {
            return false;
        }
        if node.properties().output_partitioning().partition_count() == 1 {
            return true;
        }
        match node.children().as_slice() {
            [child] => walk(child),
            _ => false,
        }
    }
    match root.children().as_slice() {
        [child] => walk(child),
        _ => false,
    }
}

/// The device each of a stage's `partitions` input partitions scans, when the stage's root
/// reaches a [`DeviceScanExec`] through operators that keep partitions (at a node with several
/// children, the one child with the stage's partitions; a repartition stops the walk), and
/// each of its partitions scans one device. Empty otherwise.
fn stage_devices(root: &Arc<dyn ExecutionPlan>, partitions: usize) -> Vec<Option<String>> {
    let keeps = |n: &Arc<dyn ExecutionPlan>| {
        n.properties().output_partitioning().partition_count() == partitions
    };
    let mut node = match root.children().as_slice() {
        [child] => Arc::clone(child),
        _ => return Vec::new(),
    };
    loop {
        if !keeps(&node) || node.name() == "RepartitionExec" {
            return Vec::new();
        }
        if let Some(scan) = node.downcast_ref::<DeviceScanExec>() {
            return scan
                .partition_devices()
                .into_iter()
                .map(|d| match d.as_slice() {
                    [one] => Some(one.to_string()),
                    _ => None,
                })
                .collect();
        }
        let next: Vec<_> = node.children().into_iter().filter(|c| keeps(c)).collect();
        match next.as_slice() {
            [one] => node = Arc::clone(one),
            _ => return Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_url_has_one_tag_however_it_is_written() {
        let t = near_tag("grpc://127.0.0.1:5001");
        assert_eq!(t.len(), 12);
        assert_eq!(near_tag("GRPC://127.0.0.1:5001/ "), t);
        assert_ne!(near_tag("grpc://127.0.0.1:5002"), t);
    }

    #[test]
    fn an_executor_id_declares_its_devices() {
        let devices = vec!["grpc://a:1".to_string(), "grpc://b:2".to_string()];
        let id = executor_id("exec-0", &devices);
        assert!(id.starts_with("exec-0+near."), "{id}");
        let tags: Vec<&str> = declared_tags(&id).collect();
        assert_eq!(tags, vec![near_tag("grpc://a:1"), near_tag("grpc://b:2")]);
        assert_eq!(executor_id("exec-1", &[]), "exec-1");
        assert_eq!(declared_tags("exec-1").count(), 0);
    }
}
