//! The emulated NVMe namespace: a data directory of objects (Parquet files) and a catalog of
//! tables.
//!
//! Layout of the data directory:
//!
//! ```text
//! catalog.json         the catalog, replaced atomically (write temp, fsync, rename, fsync dir)
//! objects/<id>.parquet object bytes, immutable once visible
//! objects/<id>.pi      block checksums of the object (see `pi`)
//! tmp/                 uploads in progress; emptied at start-up
//! ```
//!
//! Invariants: an object becomes visible only through the catalog, and the catalog names an
//! object only after the object and its sidecar are durable (fsynced and renamed into
//! `objects/`, directory fsynced). A crash therefore leaves either the old catalog (the upload
//! is lost, its files are garbage collected at the next start) or the new one (the upload is
//! complete). An upload is acknowledged only after the catalog commit is durable.
//!
//! Files: `catalog` (the catalog document and its commits), `object` (reading objects),
//! `upload` (writing them), `recovery` (opening the namespace), `scrub`, `fs` (the file
//! operations: real, capped or simulated; durable writes), `hot` (decoded column chunks in
//! memory), `pmem` (the file-backed tier under it), `kernels` (registered kernels), `pi` (block
//! checksums), `reader` (the read path).

mod catalog;
#[cfg(test)]
mod crash_tests;
pub mod fs;
pub mod hot;
pub mod kernels;
pub mod media;
mod object;
pub mod pi;
mod pmem;
pub mod reader;
mod recovery;
mod scrub;
mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

pub(crate) use catalog::is_valid_name;
pub use object::{Object, TableHandle};
pub use upload::Upload;

use catalog::CatalogDoc;
use reader::Reader;

use crate::error::{Error, Result};

/// How the device writes Parquet objects.
#[derive(Debug, Clone, Copy)]
pub struct WriteConfig {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Rows per data page at most (the page index's granularity).
    pub page_rows: usize,
    /// How pages are compressed.
    pub codec: PageCodec,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            row_group_rows: 128 * 1024,
            page_rows: 8 * 1024,
            codec: PageCodec::Snappy,
        }
    }
}

/// The compression of the pages of objects the device writes (objects written before keep
/// theirs: a reader takes the codec from each column chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCodec {
    /// Snappy.
    Snappy,
    /// LZ4 (Parquet's `LZ4_RAW`).
    Lz4,
    /// Zstandard, level 1.
    Zstd,
    /// Uncompressed.
    None,
}

impl std::str::FromStr for PageCodec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "snappy" => Ok(PageCodec::Snappy),
            "lz4" => Ok(PageCodec::Lz4),
            "zstd" => Ok(PageCodec::Zstd),
            "none" => Ok(PageCodec::None),
            o => Err(format!(
                "unknown page codec '{o}' (expected snappy, lz4, zstd or none)"
            )),
        }
    }
}

/// The namespace: data directory, catalog and open objects.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    reader: Reader,
    write: WriteConfig,
    catalog: RwLock<CatalogDoc>,
    /// Serialises catalog commits.
    commit: tokio::sync::Mutex<()>,
    open: Mutex<HashMap<String, Arc<Object>>>,
    /// Where the namespace's files are written.
    fs: Arc<dyn fs::Fs>,
    next_tmp: AtomicU64,
    kernels: kernels::KernelStore,
    /// Decoded column chunks kept in memory (off until [`Storage::with_hot_tier`]).
    hot: Arc<hot::HotTier>,
}

impl Storage {
    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Gives the namespace a hot-column tier of `budget` bytes (0: none), written through to
    /// the file-backed tier in `pmem` when there is one (it needs a budget).
    pub fn with_hot_tier(mut self, budget: u64, pmem: Option<&Path>) -> Result<Self> {
        let tier = hot::HotTier::new(budget);
        let tier = match pmem {
            None => tier,
            Some(_) if budget == 0 => {
                return Err(Error::Config(
                    "the file-backed tier (--pmem-dir) keeps the hot-column tier's chunks: it \
                     needs --cache-mb above 0"
                        .into(),
                ));
            }
            Some(dir) => {
                let live = self
                    .catalog
                    .read()
                    .expect("catalog lock")
                    .tables
                    .values()
                    .flat_map(|t| t.objects.iter().map(|o| (o.id.clone(), o.row_groups)))
                    .collect();
                tier.with_pmem(dir, &live)?
            }
        };
        self.hot = Arc::new(tier);
        Ok(self)
    }

    /// The hot-column tier.
    pub fn hot(&self) -> &Arc<hot::HotTier> {
        &self.hot
    }

    /// The registered kernels.
    pub fn kernels(&self) -> &kernels::KernelStore {
        &self.kernels
    }

    /// Bytes used and the namespace's capacity, when it has one (`--capacity-mb`).
    pub fn space(&self) -> Option<(u64, u64)> {
        self.fs.space()
    }

    /// The read path.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Path of an object's Parquet file.
    pub fn object_path(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(format!("{id}.parquet"))
    }

    fn sums_path(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(format!("{id}.pi"))
    }
}
