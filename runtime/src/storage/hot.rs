//! The hot-column tier: decoded column chunks (one column of one row group of one object, as
//! an Arrow array) kept in memory under a byte budget, between the compute and the media.
//!
//! - **Admission on second touch.** A chunk a query needs and the tier lacks is remembered
//!   (a bounded list of keys, no data); only when a later query needs it again is it decoded
//!   whole and kept. A one-off scan of a large table therefore leaves the tier as it was.
//! - **Eviction** least recently used, by bytes (the arrays' memory size), when an admission
//!   would pass the budget; a chunk larger than the whole budget is never kept.
//! - **Invalidation.** Objects are immutable and their ids never reused, so a cached chunk is
//!   never stale by construction; a drop or a replace deletes the old objects, and their
//!   chunks leave the tier with them ([`HotTier::invalidate`], called where the namespace
//!   deletes objects). An append adds objects and leaves the others' chunks valid.
//!
//! Hit and miss counts are in bytes of the column chunks on the media (compressed, as the
//! footer records them): what a hit saved reading, what a miss read.
//!
//! With a file-backed tier (`pmem`, `--pmem-dir`) every kept chunk is also written to a file,
//! removed with it, and read back (verified) when the device starts: a restart keeps the tier.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::ArrayRef;
use nearstore_proto::CacheInfo;

use super::pmem::Pmem;
use crate::error::{Error, Result};

/// Keys remembered as touched once (about 100 bytes each).
const GHOSTS: usize = 1 << 16;

/// One column chunk: object id, row group, column (root index in the Arrow schema).
pub(super) type Key = (String, u32, u32);

struct Entry {
    array: ArrayRef,
    bytes: u64,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Entries by last use.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    used: u64,
    /// Chunks touched once and not kept.
    seen: HashSet<Key>,
    seen_order: VecDeque<Key>,
}

impl Inner {
    /// Keeps `array` as the most recently used chunk (room made by the caller).
    fn insert(&mut self, key: Key, array: ArrayRef, bytes: u64) {
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        let tick = self.tick;
        self.entries.insert(key, Entry { array, bytes, tick });
        self.used += bytes;
    }
}

/// The tier. A budget of 0 turns it off (nothing is remembered or kept).
#[derive(Default)]
pub struct HotTier {
    budget: u64,
    inner: Mutex<Inner>,
    hit_bytes: AtomicU64,
    miss_bytes: AtomicU64,
    admitted_bytes: AtomicU64,
    evicted_bytes: AtomicU64,
    /// The file-backed tier, when there is one.
    pmem: Option<Pmem>,
    /// Chunks it gave back at start-up, and files it rejected then.
    restored_chunks: u64,
    rejected_chunks: u64,
}

impl std::fmt::Debug for HotTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotTier")
            .field("info", &self.info())
            .finish()
    }
}

/// What the tier holds of one row group's needed columns.
#[derive(Debug)]
pub struct Lookup {
    /// Per column asked for, its array when kept.
    pub arrays: Vec<Option<ArrayRef>>,
    /// Whether the missing columns were touched before: decode them whole and
    /// [`HotTier::admit`] them.
    pub admit: bool,
    /// Media bytes of the columns found.
    pub hit_bytes: u64,
    /// Media bytes of the columns missing.
    pub miss_bytes: u64,
}

impl Lookup {
    /// Every column is kept.
    pub fn is_hit(&self) -> bool {
        self.arrays.iter().all(Option::is_some)
    }
}

impl HotTier {
    /// A tier of `budget` bytes.
    pub fn new(budget: u64) -> Self {
        HotTier {
            budget,
            ..Default::default()
        }
    }

    /// Writes every kept chunk through to files in `dir` too, and starts with the chunks found
    /// there that pass their checks (`live`: the namespace's objects and their row group
    /// counts), up to the budget; the others' files are deleted.
    pub(super) fn with_pmem(mut self, dir: &Path, live: &HashMap<String, u64>) -> Result<Self> {
        let pmem =
            Pmem::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        let found = pmem
            .restore(live)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for (path, why) in &found.rejected {
            tracing::warn!("file-backed tier: deleted {}: {why}", path.display());
        }
        self.rejected_chunks = found.rejected.len() as u64;
        let inner = self.inner.get_mut().expect("hot tier lock");
        for (key, array) in found.chunks {
            // Its buffers are slices of one mapping, whose whole length each would count as
            // its capacity: count the bytes they span instead.
            let bytes = array
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| array.get_array_memory_size()) as u64;
            if inner.used + bytes > self.budget {
                pmem.remove(&key);
                continue;
            }
            inner.insert(key, array, bytes);
            self.restored_chunks += 1;
        }
        tracing::info!(
            "file-backed tier {}: {} chunks ({} MiB) restored, {} rejected",
            dir.display(),
            self.restored_chunks,
            inner.used >> 20,
            self.rejected_chunks
        );
        self.pmem = Some(pmem);
        Ok(self)
    }

    /// Whether the tier keeps anything.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// What the tier holds of `columns` (column id, bytes on the media) of one row group;
    /// missing columns are remembered as touched.
    pub fn lookup(&self, object: &str, row_group: usize, columns: &[(usize, u64)]) -> Lookup {
        if !self.enabled() {
            return Lookup {
                arrays: vec![None; columns.len()],
                admit: false,
                hit_bytes: 0,
                miss_bytes: columns.iter().map(|c| c.1).sum(),
            };
        }
        let mut inner = self.inner.lock().expect("hot tier lock");
        let inner = &mut *inner;
        let mut admit = true;
        let mut arrays = Vec::with_capacity(columns.len());
        let (mut hit, mut miss) = (0, 0);
        for &(col, media) in columns {
            let key = (object.to_string(), row_group as u32, col as u32);
            inner.tick += 1;
            match inner.entries.get_mut(&key) {
                Some(e) => {
                    inner.lru.remove(&e.tick);
                    e.tick = inner.tick;
                    arrays.push(Some(e.array.clone()));
                    inner.lru.insert(inner.tick, key);
                    hit += media;
                }
                None => {
                    arrays.push(None);
                    miss += media;
                    if !inner.seen.contains(&key) {
                        admit = false;
                        if inner.seen_order.len() >= GHOSTS
                            && let Some(old) = inner.seen_order.pop_front()
                        {
                            inner.seen.remove(&old);
                        }
                        inner.seen.insert(key.clone());
                        inner.seen_order.push_back(key);
                    }
                }
            }
        }
        Lookup {
            arrays,
            admit,
            hit_bytes: hit,
            miss_bytes: miss,
        }
    }

    /// Counts what a scan took from the tier and what it read instead (media bytes): a
    /// row group some of whose columns the tier holds but not all is read from the media.
    pub fn record(&self, hit_bytes: u64, miss_bytes: u64) {
        self.hit_bytes.fetch_add(hit_bytes, Ordering::Relaxed);
        self.miss_bytes.fetch_add(miss_bytes, Ordering::Relaxed);
    }

    /// Keeps a decoded column chunk, evicting the least recently used ones to make room.
    pub fn admit(&self, object: &str, row_group: usize, column: usize, array: ArrayRef) {
        let bytes = array.get_array_memory_size() as u64;
        let key = (object.to_string(), row_group as u32, column as u32);
        let mut victims = Vec::new();
        {
            let mut inner = self.inner.lock().expect("hot tier lock");
            let inner = &mut *inner;
            // Admitted or refused, its next touch is a first one again (a chunk larger than
            // the budget is not decoded whole on every touch).
            inner.seen.remove(&key);
            if bytes > self.budget {
                return;
            }
            if let Some(old) = inner.entries.remove(&key) {
                inner.lru.remove(&old.tick);
                inner.used -= old.bytes;
            }
            while inner.used + bytes > self.budget {
                let Some((_, victim)) = inner.lru.pop_first() else {
                    break;
                };
                let e = inner.entries.remove(&victim).expect("lru names an entry");
                inner.used -= e.bytes;
                self.evicted_bytes.fetch_add(e.bytes, Ordering::Relaxed);
                victims.push(victim);
            }
            inner.insert(key.clone(), array.clone(), bytes);
            self.admitted_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(pmem) = &self.pmem {
            for v in &victims {
                pmem.remove(v);
            }
            // The memory copy serves either way; without its file the chunk is just not
            // there after a restart.
            if let Err(e) = pmem.store(&key, &array) {
                tracing::warn!("file-backed tier: {e}");
            }
        }
    }

    /// Forgets every chunk of `objects` (deleted by a drop or a replace).
    pub fn invalidate<'a>(&self, objects: impl IntoIterator<Item = &'a str>) {
        if !self.enabled() {
            return;
        }
        let gone: HashSet<&str> = objects.into_iter().collect();
        let mut inner = self.inner.lock().expect("hot tier lock");
        let inner = &mut *inner;
        let mut freed = 0;
        let mut removed = Vec::new();
        inner.entries.retain(|k, e| {
            let keep = !gone.contains(k.0.as_str());
            if !keep {
                freed += e.bytes;
                inner.lru.remove(&e.tick);
                removed.push(k.clone());
            }
            keep
        });
        inner.used -= freed;
        inner.seen.retain(|k| !gone.contains(k.0.as_str()));
        inner.seen_order.retain(|k| !gone.contains(k.0.as_str()));
        if let Some(pmem) = &self.pmem {
            for k in &removed {
                pmem.remove(k);
            }
        }
    }

    /// Its budget, use and counters.
    pub fn info(&self) -> CacheInfo {
        let inner = self.inner.lock().expect("hot tier lock");
        CacheInfo {
            budget_bytes: self.budget,
            used_bytes: inner.used,
            chunks: inner.entries.len() as u64,
            hit_bytes: self.hit_bytes.load(Ordering::Relaxed),
            miss_bytes: self.miss_bytes.load(Ordering::Relaxed),
            admitted_bytes: self.admitted_bytes.load(Ordering::Relaxed),
            evicted_bytes: self.evicted_bytes.load(Ordering::Relaxed),
            pmem_restored_chunks: self.restored_chunks,
            pmem_rejected_chunks: self.rejected_chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    fn column(n: usize) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(0..n as i64))
    }

    #[test]
    fn a_chunk_is_kept_on_its_second_touch_only() {
        let size = column(1000).get_array_memory_size() as u64;
        let tier = HotTier::new(10 * size);
        let first = tier.lookup("o1", 0, &[(0, 100)]);
        assert!(!first.admit && !first.is_hit());
        let second = tier.lookup("o1", 0, &[(0, 100)]);
        assert!(second.admit && !second.is_hit());
        tier.admit("o1", 0, 0, column(1000));
        let third = tier.lookup("o1", 0, &[(0, 100)]);
        assert!(third.is_hit());
        assert_eq!((third.hit_bytes, second.miss_bytes), (100, 100));
        tier.record(third.hit_bytes, first.miss_bytes + second.miss_bytes);
        let info = tier.info();
        assert_eq!((info.hit_bytes, info.miss_bytes), (100, 200));
        assert_eq!((info.used_bytes, info.chunks), (size, 1));
    }

    #[test]
    fn the_least_recently_used_chunk_leaves_first_and_the_budget_holds() {
        let size = column(1000).get_array_memory_size() as u64;
        let tier = HotTier::new(2 * size);
        tier.admit("o", 0, 0, column(1000));
        tier.admit("o", 1, 0, column(1000));
        assert!(tier.lookup("o", 0, &[(0, 1)]).is_hit()); // row group 1 is now the oldest
        tier.admit("o", 2, 0, column(1000));
        assert!(tier.lookup("o", 0, &[(0, 1)]).is_hit());
        assert!(!tier.lookup("o", 1, &[(0, 1)]).is_hit());
        assert!(tier.lookup("o", 2, &[(0, 1)]).is_hit());
        let info = tier.info();
        assert_eq!(info.used_bytes, 2 * size);
        assert_eq!(info.evicted_bytes, size);
        // Larger than the budget: never kept, and its next touch is a first one.
        tier.lookup("o", 3, &[(0, 1)]);
        assert!(tier.lookup("o", 3, &[(0, 1)]).admit);
        tier.admit("o", 3, 0, column(3000));
        let after = tier.lookup("o", 3, &[(0, 1)]);
        assert!(!after.is_hit() && !after.admit);
    }

    #[test]
    fn invalidation_frees_an_objects_chunks_and_forgets_its_touches() {
        let tier = HotTier::new(1 << 20);
        tier.admit("old", 0, 0, column(10));
        tier.admit("old", 0, 1, column(10));
        tier.admit("other", 0, 0, column(10));
        tier.lookup("old", 1, &[(0, 1)]);
        tier.invalidate(["old"]);
        let found = tier.lookup("old", 0, &[(0, 1), (1, 1)]);
        assert!(found.arrays.iter().all(Option::is_none));
        assert!(tier.lookup("other", 0, &[(0, 1)]).is_hit());
        assert_eq!(tier.info().chunks, 1);
        // The touch of ("old", 1) was forgotten: this is a first touch again.
        assert!(!tier.lookup("old", 1, &[(0, 1)]).admit);
    }

    #[test]
    fn the_file_backed_tier_holds_what_memory_holds_and_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let size = column(1000).get_array_memory_size() as u64;
        let live: HashMap<String, u64> = [("o".to_string(), 8), ("p".to_string(), 8)].into();
        let tier = HotTier::new(2 * size).with_pmem(dir.path(), &live).unwrap();
        tier.admit("o", 0, 0, column(1000));
        tier.admit("p", 0, 0, column(1000));
        assert_eq!(files(), 2);
        tier.admit("o", 1, 0, column(1000)); // evicts ("o", 0, 0), and its file
        assert_eq!(files(), 2);
        tier.invalidate(["p"]);
        assert_eq!(files(), 1);
        drop(tier);

        let again = HotTier::new(2 * size).with_pmem(dir.path(), &live).unwrap();
        let found = again.lookup("o", 1, &[(0, 1)]);
        assert!(found.is_hit());
        assert_eq!(&found.arrays[0].clone().unwrap(), &column(1000));
        let info = again.info();
        assert_eq!((info.chunks, info.pmem_restored_chunks), (1, 1));
        // Its object gone while the device was down: rejected, and its file deleted.
        let none = HashMap::new();
        let gone = HotTier::new(2 * size).with_pmem(dir.path(), &none).unwrap();
        assert_eq!(
            (gone.info().chunks, gone.info().pmem_rejected_chunks),
            (0, 1)
        );
        assert_eq!(files(), 0);
    }

    #[test]
    fn a_tier_of_zero_bytes_keeps_and_counts_nothing() {
        let tier = HotTier::new(0);
        tier.lookup("o", 0, &[(0, 1)]);
        let again = tier.lookup("o", 0, &[(0, 1)]);
        assert!(!again.admit && !again.is_hit());
        tier.admit("o", 0, 0, column(10));
        assert_eq!(tier.info(), CacheInfo::default());
    }
}
