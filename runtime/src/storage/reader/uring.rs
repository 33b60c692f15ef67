//! The io_uring read path: one thread owns the ring. Requests arrive over a channel; their
//! reads are split into pieces of at most [`READ_CHUNK_BYTES_MAX`], kept up to `queue_depth`
//! in flight, short reads resubmitted, and each request answered through its oneshot channel
//! when its last piece completes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::{AlignedBuf, Job, ReadOp, Reply};

/// Largest single read submitted to the kernel; larger ranges are split.
const READ_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Sets up a ring for `queue_depth` reads and starts the reader thread; requests reach it
/// through the returned sender, and it stops when every sender is dropped.
pub(super) fn start_uring(queue_depth: u32) -> io::Result<std::sync::mpsc::Sender<Job>> {
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

/// A request being read: its ops, their buffers, and how far each has got.
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

/// The reader thread's work: batches being read, pieces waiting for a submission slot, and
/// pieces in flight.
#[derive(Default)]
struct Work {
    batches: HashMap<u64, Batch>,
    queue: VecDeque<Pending>,
    // user_data -> piece in flight
    in_flight: HashMap<u64, Pending>,
    next_batch: u64,
    next_op: u64,
}

fn uring_loop(mut ring: io_uring::IoUring, rx: std::sync::mpsc::Receiver<Job>, depth: usize) {
    let mut work = Work::default();
    let mut closed = false;

    loop {
        // Take new work: block only when nothing is in flight or queued.
        if work.in_flight.is_empty() && work.queue.is_empty() {
            if closed {
                break;
            }
            match rx.recv() {
                Ok(job) => work.intake(job),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(job) => work.intake(job),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }

        // Fill the submission queue up to the configured depth.
        work.submit_queued(&mut ring, depth);

        if work.in_flight.is_empty() {
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // The ring is unusable: fail everything and stop; callers see the error and the
            // next request fails with "thread has stopped".
            tracing::error!(error = %e, "io_uring submit failed; reader thread stopping");
            for (_, mut b) in work.batches.drain() {
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
            work.complete(key, res);
        }
    }
}

impl Work {
    /// Takes a request: splits its ops into pieces, queues them and allocates its buffers.
    fn intake(&mut self, job: Job) {
        let id = self.next_batch;
        self.next_batch += 1;
        let mut pieces = 0;
        for (i, op) in job.ops.iter().enumerate() {
            let mut start = 0;
            while start < op.len {
                let len = (op.len - start).min(READ_CHUNK_BYTES_MAX);
                self.queue.push_back(Pending {
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
            self.batches.insert(id, batch);
        }
    }

    /// Pushes queued pieces into the submission queue until `depth` are in flight (or the
    /// submission queue is full).
    fn submit_queued(&mut self, ring: &mut io_uring::IoUring, depth: usize) {
        while self.in_flight.len() < depth {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            let Some(batch) = self.batches.get_mut(&p.batch) else {
                continue;
            };
            if batch.error.is_some() || batch.eof[p.op] {
                // The op already failed or hit end of file: nothing more to read for it.
                self.piece_done(p.batch);
                continue;
            }
            let op = batch.ops[p.op];
            let buf = &mut batch.bufs[p.op];
            // SAFETY: `start + len <= capacity` by construction of the pieces (`intake` splits
            // each op within its buffer's length), so the offset pointer stays in the buffer;
            // the buffer stays owned by `batches` (never moved: AlignedBuf is a pointer to a heap
            // block) until this piece's completion is reaped in `complete`, because a batch is
            // removed only when all its pieces have completed (`piece_done`).
            let ptr = unsafe { buf.spare_mut().as_mut_ptr().add(p.start) };
            let entry = io_uring::opcode::Read::new(
                io_uring::types::Fd(batch.file.as_raw_fd()),
                ptr,
                p.len as u32,
            )
            .offset(op.offset + p.start as u64)
            .build()
            .user_data(self.next_op);
            // SAFETY: the entry's buffer and file descriptor stay valid until completion (see
            // above; the batch also holds an Arc of the file).
            if unsafe { ring.submission().push(&entry) }.is_err() {
                self.queue.push_front(p);
                break;
            }
            self.in_flight.insert(self.next_op, p);
            self.next_op += 1;
        }
    }

    /// Handles the completion of the piece submitted as `key`: `res` is the bytes read, or a
    /// negated errno.
    fn complete(&mut self, key: u64, res: i32) {
        let Some(p) = self.in_flight.remove(&key) else {
            return;
        };
        let Some(batch) = self.batches.get_mut(&p.batch) else {
            return;
        };
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                self.queue.push_front(p);
                return;
            }
            batch.error.get_or_insert(err);
        } else {
            let n = res as usize;
            batch.filled[p.op] = batch.filled[p.op].max(p.start + n);
            if n == 0 {
                batch.eof[p.op] = true;
            } else if n < p.len {
                // Short read: queue the rest of this piece.
                self.queue.push_front(Pending {
                    batch: p.batch,
                    op: p.op,
                    start: p.start + n,
                    len: p.len - n,
                });
                return;
            }
        }
        self.piece_done(p.batch);
    }

    /// Counts one piece of batch `id` as done; its last piece answers the request.
    fn piece_done(&mut self, id: u64) {
        let batch = self.batches.get_mut(&id).expect("batch present");
        batch.pieces_left -= 1;
        if batch.pieces_left == 0 {
            let mut b = self.batches.remove(&id).expect("batch present");
            finish(&mut b);
        }
    }
}

/// Answers a batch's request with its buffers (lengths set to the bytes read) or its error.
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
