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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Alignment and granularity of every read: the device's logical block size.
pub const BLOCK_BYTES: usize = 4096;

/// Largest queue depth accepted.
pub const QUEUE_DEPTH_MAX: u32 = 128;

/// Largest single read submitted to the kernel; larger ranges are split.
const READ_CHUNK_BYTES_MAX: usize = 1 << 20;

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

/// A heap buffer aligned to [`BLOCK_BYTES`], as `O_DIRECT` requires.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `as_ref`, like &Vec<u8>.
unsafe impl Sync for AlignedBuf {}

/// Bytes of freed read buffers kept for reuse. Reused buffers are already faulted in; fresh
/// ones cost a page fault per 4 KiB on first write, which at NVMe speeds is a large share of
/// the read path's time.
const POOL_BYTES_MAX: usize = 64 << 20;

/// Freed buffers by capacity (a power of two of at least one block).
struct Pool {
    free: std::sync::Mutex<HashMap<usize, Vec<PooledPtr>>>,
    bytes: std::sync::atomic::AtomicUsize,
}

struct PooledPtr(NonNull<u8>);

// SAFETY: a pooled pointer is an allocation nobody else references; ownership moves with it.
unsafe impl Send for PooledPtr {}

static POOL: std::sync::LazyLock<Pool> = std::sync::LazyLock::new(|| Pool {
    free: std::sync::Mutex::new(HashMap::new()),
    bytes: std::sync::atomic::AtomicUsize::new(0),
});

impl AlignedBuf {
    /// A buffer of at least `cap` bytes (rounded up to a power of two of whole blocks),
    /// initialised: zeroed when fresh, holding old read data when reused. Only the first
    /// `len()` bytes are ever exposed as read data.
    pub fn zeroed(cap: usize) -> Self {
        let cap = cap.max(BLOCK_BYTES).next_power_of_two();
        let reused = POOL
            .free
            .lock()
            .expect("buffer pool lock")
            .get_mut(&cap)
            .and_then(Vec::pop);
        if let Some(p) = reused {
            POOL.bytes.fetch_sub(cap, Ordering::Relaxed);
            return AlignedBuf {
                ptr: p.0,
                cap,
                len: 0,
            };
        }
        let layout = Self::layout(cap);
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, BLOCK_BYTES).expect("valid aligned layout")
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Valid bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is valid.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole capacity, writable.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes, all initialised (zeroed when allocated, or old
        // read data when reused from the pool), and uniquely
        // borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "length beyond capacity");
        self.len = len;
    }

    /// Freezes the valid bytes into a [`Bytes`] without copying.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first len bytes are initialised (the whole buffer was zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if POOL.bytes.fetch_add(self.cap, Ordering::Relaxed) + self.cap <= POOL_BYTES_MAX {
            POOL.free
                .lock()
                .expect("buffer pool lock")
                .entry(self.cap)
                .or_default()
                .push(PooledPtr(self.ptr));
            return;
        }
        POOL.bytes.fetch_sub(self.cap, Ordering::Relaxed);
        // SAFETY: allocated in `zeroed` with exactly this layout (pooled buffers keep theirs).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
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

type Reply = oneshot::Sender<io::Result<Vec<AlignedBuf>>>;

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

fn pread_batch(file: &File, ops: &[ReadOp]) -> io::Result<Vec<AlignedBuf>> {
    ops.iter()
        .map(|op| {
            let mut buf = AlignedBuf::zeroed(op.len);
            let mut filled = 0;
            while filled < op.len {
                let n = file.read_at(
                    &mut buf.spare_mut()[filled..op.len],
                    op.offset + filled as u64,
                )?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.set_len(filled);
            Ok(buf)
        })
        .collect()
}

fn start_uring(queue_depth: u32) -> io::Result<std::sync::mpsc::Sender<Job>> {
    let ring = io_uring::IoUring::new(queue_depth.next_power_of_two())?;
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("nearstore-uring".into())
        .spawn(move || uring_loop(ring, rx, queue_depth as usize))?;
    Ok(tx)
}

/// One read of a batch, split so that no single submission exceeds [`READ_CHUNK_BYTES_MAX`].
struct Pending {
    batch: u64,
    op: usize,
    /// Offset of this piece within the op's buffer.
    start: usize,
    /// Bytes of this piece.
    len: usize,
}

struct Batch {
    file: Arc<File>,
    ops: Vec<ReadOp>,
    bufs: Vec<AlignedBuf>,
    /// Bytes read per op; EOF ends an op early.
    filled: Vec<usize>,
    eof: Vec<bool>,
    pieces_left: usize,
    error: Option<io::Error>,
    reply: Option<Reply>,
}

fn uring_loop(mut ring: io_uring::IoUring, rx: std::sync::mpsc::Receiver<Job>, depth: usize) {
    let mut batches: HashMap<u64, Batch> = HashMap::new();
    let mut queue: VecDeque<Pending> = VecDeque::new();
    // user_data -> piece in flight
    let mut in_flight: HashMap<u64, Pending> = HashMap::new();
    let mut next_batch = 0u64;
    let mut next_op = 0u64;
    let mut closed = false;

    let mut intake =
        |job: Job, batches: &mut HashMap<u64, Batch>, queue: &mut VecDeque<Pending>| {
            let id = next_batch;
            next_batch += 1;
            let mut pieces = 0;
            for (i, op) in job.ops.iter().enumerate() {
                let mut start = 0;
                while start < op.len {
                    let len = (op.len - start).min(READ_CHUNK_BYTES_MAX);
                    queue.push_back(Pending {
                        batch: id,
                        op: i,
                        start,
                        len,
                    });
                    pieces += 1;
                    start += len;
                }
            }
            let bufs = job
                .ops
                .iter()
                .map(|op| AlignedBuf::zeroed(op.len))
                .collect();
            let n = job.ops.len();
            let mut batch = Batch {
                file: job.file,
                ops: job.ops,
                bufs,
                filled: vec![0; n],
                eof: vec![false; n],
                pieces_left: pieces,
                error: None,
                reply: Some(job.reply),
            };
            if pieces == 0 {
                finish(&mut batch);
            } else {
                batches.insert(id, batch);
            }
        };

    loop {
        // Take new work: block only when nothing is in flight or queued.
        if in_flight.is_empty() && queue.is_empty() {
            if closed {
                break;
            }
            match rx.recv() {
                Ok(job) => intake(job, &mut batches, &mut queue),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(job) => intake(job, &mut batches, &mut queue),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }

        // Fill the submission queue up to the configured depth.
        while in_flight.len() < depth {
            let Some(p) = queue.pop_front() else { break };
            let Some(batch) = batches.get_mut(&p.batch) else {
                continue;
            };
            if batch.error.is_some() || batch.eof[p.op] {
                // The op already failed or hit end of file: nothing more to read for it.
                batch.pieces_left -= 1;
                if batch.pieces_left == 0 {
                    let mut b = batches.remove(&p.batch).expect("batch present");
                    finish(&mut b);
                }
                continue;
            }
            let op = batch.ops[p.op];
            let buf = &mut batch.bufs[p.op];
            // SAFETY: `start + len <= capacity` by construction of the pieces; the buffer stays
            // owned by `batches` (never moved: AlignedBuf is a pointer to a heap block) until
            // this piece's completion is reaped below, because a batch is removed only when
            // all its pieces have completed.
            let ptr = unsafe { buf.spare_mut().as_mut_ptr().add(p.start) };
            let entry = io_uring::opcode::Read::new(
                io_uring::types::Fd(batch.file.as_raw_fd()),
                ptr,
                p.len as u32,
            )
            .offset(op.offset + p.start as u64)
            .build()
            .user_data(next_op);
            // SAFETY: the entry's buffer and file descriptor stay valid until completion (see
            // above; the batch also holds an Arc of the file).
            if unsafe { ring.submission().push(&entry) }.is_err() {
                queue.push_front(p);
                break;
            }
            in_flight.insert(next_op, p);
            next_op += 1;
        }

        if in_flight.is_empty() {
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // The ring is unusable: fail everything and stop; callers see the error and the
            // next request fails with "thread has stopped".
            tracing::error!(error = %e, "io_uring submit failed; reader thread stopping");
            for (_, mut b) in batches.drain() {
                b.error
                    .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
                finish(&mut b);
            }
            return;
        }
        let completed: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (key, res) in completed {
            let Some(p) = in_flight.remove(&key) else {
                continue;
            };
            let Some(batch) = batches.get_mut(&p.batch) else {
                continue;
            };
            if res < 0 {
                let err = io::Error::from_raw_os_error(-res);
                if matches!(-res, libc::EINTR | libc::EAGAIN) {
                    queue.push_front(p);
                    continue;
                }
                batch.error.get_or_insert(err);
            } else {
                let n = res as usize;
                batch.filled[p.op] = batch.filled[p.op].max(p.start + n);
                if n == 0 {
                    batch.eof[p.op] = true;
                } else if n < p.len {
                    // Short read: queue the rest of this piece.
                    queue.push_front(Pending {
                        batch: p.batch,
                        op: p.op,
                        start: p.start + n,
                        len: p.len - n,
                    });
                    continue;
                }
            }
            batch.pieces_left -= 1;
            if batch.pieces_left == 0 {
                let mut b = batches.remove(&p.batch).expect("batch present");
                finish(&mut b);
            }
        }
    }
}

fn finish(batch: &mut Batch) {
    let Some(reply) = batch.reply.take() else {
        return;
    };
    let result = match batch.error.take() {
        Some(e) => Err(e),
        None => {
            let mut bufs = std::mem::take(&mut batch.bufs);
            for (buf, filled) in bufs.iter_mut().zip(&batch.filled) {
                buf.set_len(*filled);
            }
            Ok(bufs)
        }
    };
    // The caller may have gone away (query cancelled); dropping the result is fine.
    let _ = reply.send(result);
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
