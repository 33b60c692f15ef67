//! The storage read path: batched reads of byte ranges from object files.
//!
//! Two implementations sit behind [`Reader`]:
//! - **io_uring** on a dedicated thread: a batch of ranges is queued as one request; the thread
//!   keeps up to `queue_depth` reads in flight, submits them in one `io_uring_enter`, finishes
//!   short reads, and answers the request through a oneshot channel (the tokio bridge);
//! - **pread**, used when io_uring is unavailable (old kernel, seccomp) or asked for; it runs
//!   the ranges of a batch on tokio's blocking pool.
//!
//! Every buffer is 4 KiB aligned and a multiple of 4 KiB long, so the same requests work with
//! files opened with `O_DIRECT`. The choice is made once at start-up and logged.
//!
//! Files: `buffer` (aligned, pooled read buffers), `uring` (the io_uring thread), `pread`
//! (the fallback); this file holds the configuration, the request type and [`Reader`].

mod buffer;
mod pread;
mod uring;

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

pub use buffer::AlignedBuf;
use pread::pread_batch;
use uring::start_uring;

/// Alignment and granularity of every read: the device's logical block size.
pub const BLOCK_BYTES: usize = 4096;

/// Largest queue depth accepted.
pub const QUEUE_DEPTH_MAX: u32 = 128;

/// Which read path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderChoice {
    /// io_uring when the kernel offers it, else pread.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// pread.
    Pread,
}

impl std::str::FromStr for ReaderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ReaderChoice::Auto),
            "io_uring" | "uring" => Ok(ReaderChoice::IoUring),
            "pread" => Ok(ReaderChoice::Pread),
            o => Err(format!(
                "unknown reader '{o}' (expected auto, io_uring or pread)"
            )),
        }
    }
}

/// Read path configuration.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Implementation choice.
    pub choice: ReaderChoice,
    /// Reads in flight at most (1..=128).
    pub queue_depth: u32,
    /// Open object files with `O_DIRECT` (bypass the page cache).
    pub direct_io: bool,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            choice: ReaderChoice::Auto,
            queue_depth: 64,
            direct_io: false,
        }
    }
}

/// The read path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    /// io_uring on a dedicated thread.
    IoUring,
    /// Positional reads on the blocking pool.
    Pread,
}

impl ReaderKind {
    /// Name used in logs and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderKind::IoUring => "io_uring",
            ReaderKind::Pread => "pread",
        }
    }
}

/// One read: `len` bytes at `offset`, both multiples of [`BLOCK_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    /// File offset.
    pub offset: u64,
    /// Bytes wanted.
    pub len: usize,
}

/// Counters of the read path since start-up.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Read operations completed.
    pub ops: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Batches submitted.
    pub batches: AtomicU64,
    /// Read operations submitted and not completed yet (the queue depth in use).
    pub in_flight: AtomicU64,
}

/// Where a request's answer goes.
type Reply = oneshot::Sender<io::Result<Vec<AlignedBuf>>>;

/// A request to the io_uring thread: a batch of reads of one file.
struct Job {
    file: Arc<File>,
    ops: Vec<ReadOp>,
    reply: Reply,
}

/// Handle to the read path; cheap to clone.
#[derive(Clone)]
pub struct Reader {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ReaderKind,
    config: ReaderConfig,
    uring_tx: Option<std::sync::mpsc::Sender<Job>>,
    counters: ReaderCounters,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("kind", &self.inner.kind)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Reader {
    /// Starts the read path chosen by `config`.
    pub fn start(config: ReaderConfig) -> io::Result<Self> {
        if config.queue_depth == 0 || config.queue_depth > QUEUE_DEPTH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "queue depth {} is outside 1..={QUEUE_DEPTH_MAX}",
                    config.queue_depth
                ),
            ));
        }
        let uring_tx = match config.choice {
            ReaderChoice::Pread => None,
            ReaderChoice::IoUring => Some(start_uring(config.queue_depth)?),
            ReaderChoice::Auto => match start_uring(config.queue_depth) {
                Ok(tx) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using the pread fallback");
                    None
                }
            },
        };
        let kind = if uring_tx.is_some() {
            ReaderKind::IoUring
        } else {
            ReaderKind::Pread
        };
        tracing::info!(
            reader = kind.as_str(),
            queue_depth = config.queue_depth,
            direct_io = config.direct_io,
            "storage read path ready"
        );
        Ok(Reader {
            inner: Arc::new(Inner {
                kind,
                config,
                uring_tx,
                counters: ReaderCounters::default(),
            }),
        })
    }

    /// Whether io_uring can be set up on this machine.
    pub fn io_uring_supported() -> bool {
        io_uring::IoUring::new(2).is_ok()
    }

    /// The path in use.
    pub fn kind(&self) -> ReaderKind {
        self.inner.kind
    }

    /// The configuration.
    pub fn config(&self) -> ReaderConfig {
        self.inner.config
    }

    /// Counters since start-up.
    pub fn counters(&self) -> &ReaderCounters {
        &self.inner.counters
    }

    /// Opens a file for reading, with `O_DIRECT` when configured and supported by the file
    /// system (tmpfs, for one, refuses it; the file is then opened buffered).
    pub fn open(&self, path: &std::path::Path) -> io::Result<File> {
        if self.inner.config.direct_io {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => return Ok(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(path = %path.display(), "O_DIRECT refused; reading buffered");
                }
                Err(e) => return Err(e),
            }
        }
        File::open(path)
    }

    /// Reads all `ops` from `file` as one batch. Each result holds the bytes read, fewer than
    /// asked only at end of file.
    pub async fn read(&self, file: Arc<File>, ops: Vec<ReadOp>) -> io::Result<Vec<AlignedBuf>> {
        for op in &ops {
            if op.offset % BLOCK_BYTES as u64 != 0 || op.len % BLOCK_BYTES != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unaligned read {op:?}"),
                ));
            }
        }
        let n_ops = ops.len() as u64;
        let c = &self.inner.counters;
        c.in_flight.fetch_add(n_ops, Ordering::Relaxed);
        let bufs = self.submit(file, ops).await;
        c.in_flight.fetch_sub(n_ops, Ordering::Relaxed);
        let bufs = bufs?;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(n_ops, Ordering::Relaxed);
        c.bytes
            .fetch_add(bufs.iter().map(|b| b.len() as u64).sum(), Ordering::Relaxed);
        Ok(bufs)
    }

    async fn submit(&self, file: Arc<File>, ops: Vec<ReadOp>) -> io::Result<Vec<AlignedBuf>> {
        Ok(match &self.inner.uring_tx {
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Job { file, ops, reply })
                    .map_err(|_| io::Error::other("io_uring reader thread has stopped"))?;
                rx.await
                    .map_err(|_| io::Error::other("io_uring reader thread dropped a request"))??
            }
            None => tokio::task::spawn_blocking(move || pread_batch(&file, &ops))
                .await
                .map_err(|e| io::Error::other(format!("pread task failed: {e}")))??,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn check(choice: ReaderChoice) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let reader = Reader::start(ReaderConfig {
            choice,
            queue_depth: 4,
            direct_io: false,
        })
        .unwrap();
        let file = Arc::new(reader.open(&path).unwrap());
        let ops = vec![
            ReadOp {
                offset: 0,
                len: 4096,
            },
            ReadOp {
                offset: 8192,
                len: 2 * 1024 * 1024 + 4096,
            },
            ReadOp {
                offset: 3 * 1024 * 1024,
                len: 8192,
            },
            ReadOp {
                offset: 4 * 1024 * 1024,
                len: 4096,
            },
        ];
        let bufs = reader.read(file, ops.clone()).await.unwrap();
        for (op, buf) in ops.iter().zip(&bufs) {
            let start = (op.offset as usize).min(data.len());
            let end = (op.offset as usize + op.len).min(data.len());
            assert_eq!(buf.as_ref(), &data[start..end], "{op:?}");
        }
        assert_eq!(bufs[3].len(), 0, "read past EOF returns nothing");
    }

    #[tokio::test]
    async fn pread_reads_ranges() {
        check(ReaderChoice::Pread).await;
    }

    #[tokio::test]
    async fn io_uring_reads_ranges() {
        if !Reader::io_uring_supported() {
            eprintln!("SKIPPED: io_uring is not available on this machine");
            return;
        }
        check(ReaderChoice::IoUring).await;
    }
}
