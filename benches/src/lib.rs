//! Nearstore benchmarks.
//!
//! [`reader_vs_fio`] measures the storage read path ([`nearstore_runtime::storage::reader`])
//! against `fio` on the same file: random-order reads of every block of the file, once per run,
//! with the io_uring reader, the pread reader and `fio --ioengine=io_uring`, interleaved over
//! several rounds. The `reader` bench (`benches/reader.rs`) is its command-line front end.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use nearstore_runtime::storage::reader::{
    BLOCK_BYTES, QUEUE_DEPTH_MAX, ReadOp, Reader, ReaderChoice, ReaderConfig,
};
use serde::Serialize;

const MIB: u64 = 1 << 20;

/// Engine names, as they appear in the report.
pub const ENGINE_URING: &str = "nearstore io_uring";
/// See [`ENGINE_URING`].
pub const ENGINE_PREAD: &str = "nearstore pread";
/// See [`ENGINE_URING`].
pub const ENGINE_FIO: &str = "fio io_uring";

/// Options of [`reader_vs_fio`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the test file in bytes (a multiple of `block_bytes`).
    pub size_bytes: u64,
    /// Directory of the test file; `None` is `<temp dir>/nearstore-bench`.
    pub dir: Option<PathBuf>,
    /// Bytes per read (a multiple of 4 KiB).
    pub block_bytes: usize,
    /// Reads in flight (1..=128): the reader's queue depth, ops per `read` call and fio's
    /// `--iodepth`.
    pub queue_depth: u32,
    /// Read with `O_DIRECT` (falls back to buffered reads, with a note, if refused).
    pub direct_io: bool,
    /// Rounds; each round runs every engine once, in a rotating order.
    pub rounds: usize,
    /// Install fio with apt-get when it is missing.
    pub install_fio: bool,
    /// `read` calls (batches of `queue_depth` ops) kept in flight for the io_uring reader.
    /// The reader thread caps the reads in flight at `queue_depth`; more than one batch keeps
    /// the ring full while a finished batch is answered and the next one is submitted.
    pub uring_batches_in_flight: usize,
    /// `read` calls kept in flight for the pread reader. Each call runs its ops one after the
    /// other on one blocking thread, so this is the number of reads in flight in the kernel;
    /// `None` means `queue_depth`, the same concurrency as fio's `--iodepth`.
    pub pread_batches_in_flight: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size_bytes: 1024 * MIB,
            dir: None,
            block_bytes: 128 * 1024,
            queue_depth: 32,
            direct_io: true,
            rounds: 5,
            install_fio: false,
            uring_batches_in_flight: 4,
            pread_batches_in_flight: None,
        }
    }
}

/// Result of one engine over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct EngineResult {
    /// Engine name.
    pub engine: String,
    /// How the engine was driven.
    pub driving: String,
    /// Throughput of each run, GB/s (10^9 bytes per second).
    pub runs_gbps: Vec<f64>,
    /// Median of `runs_gbps`.
    pub median_gbps: Option<f64>,
    /// Why the engine did not run (or stopped), if it did not.
    pub error: Option<String>,
}

/// The outcome of [`reader_vs_fio`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Test file.
    pub file: PathBuf,
    /// Test file size in bytes.
    pub size_bytes: u64,
    /// Bytes per read.
    pub block_bytes: usize,
    /// Queue depth.
    pub queue_depth: u32,
    /// Whether `O_DIRECT` was asked for.
    pub direct_io_requested: bool,
    /// Whether `O_DIRECT` was used.
    pub direct_io: bool,
    /// Rounds run.
    pub rounds: usize,
    /// `fio --version`, if fio ran.
    pub fio_version: Option<String>,
    /// Per engine results, io_uring reader first, then pread, then fio.
    pub engines: Vec<EngineResult>,
    /// Median io_uring reader throughput over median fio throughput.
    pub ratio_uring_fio: Option<f64>,
    /// Median pread reader throughput over median fio throughput.
    pub ratio_pread_fio: Option<f64>,
    /// Remarks on the set-up (fallbacks, cache handling, missing tools).
    pub notes: Vec<String>,
}

impl Report {
    /// The results as a Markdown table followed by the ratios and notes.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Random-order reads of a {} MiB file, block {} KiB, queue depth {}, O_DIRECT {}, \
             {} rounds\n\n",
            self.size_bytes / MIB,
            self.block_bytes / 1024,
            self.queue_depth,
            if self.direct_io { "on" } else { "off" },
            self.rounds,
        );
        s.push_str("| engine | driving | median GB/s | runs GB/s |\n");
        s.push_str("|---|---|---:|---|\n");
        for e in &self.engines {
            let median = match (e.median_gbps, &e.error) {
                (Some(m), _) => format!("{m:.3}"),
                (None, Some(_)) => "n/a".to_string(),
                (None, None) => "-".to_string(),
            };
            let mut runs = e
                .runs_gbps
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ");
            if let Some(err) = &e.error {
                if !runs.is_empty() {
                    runs.push_str("; ");
                }
                runs.push_str(&format!("error: {}", err.replace('|', "/")));
            }
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                e.engine, e.driving, median, runs
            ));
        }
        let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.3}"));
        s.push_str(&format!(
            "\nio_uring / fio = {}\npread / fio = {}\n",
            ratio(self.ratio_uring_fio),
            ratio(self.ratio_pread_fio)
        ));
        if let Some(v) = &self.fio_version {
            s.push_str(&format!("\nfio: {v}\n"));
        }
        if !self.notes.is_empty() {
            s.push_str("\nNotes:\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}

/// Runs the read benchmark described in the crate documentation.
pub fn reader_vs_fio(opts: &Options) -> anyhow::Result<Report> {
    check_options(opts)?;
    let bs = opts.block_bytes;
    let qd = opts.queue_depth as usize;
    let uring_k = opts.uring_batches_in_flight.max(1);
    let pread_k = opts.pread_batches_in_flight.unwrap_or(qd).max(1);
    let mut notes = Vec::new();

    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("nearstore-bench"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("nearstore-bench-{}.dat", opts.size_bytes));
    prepare_file(&path, opts.size_bytes)?;

    let direct_io = if opts.direct_io {
        match open_direct(&path) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let note = format!(
                    "the file system of {} refuses O_DIRECT; measured buffered reads instead",
                    dir.display()
                );
                eprintln!("note: {note}");
                notes.push(note);
                false
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    } else {
        false
    };
    if !direct_io {
        notes.push(
            "buffered reads: the page cache is emptied for the file before each run \
             (posix_fadvise DONTNEED for the Nearstore readers, fio --invalidate=1)"
                .to_string(),
        );
    }

    let n_blocks = opts.size_bytes / bs as u64;
    let mut engines = engines(uring_k, pread_k, qd);

    if !Reader::io_uring_supported() {
        engines[0].error = Some("io_uring is not available on this machine".to_string());
    }
    let fio_version = match find_fio(opts.install_fio) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("note: fio not run: {msg}");
            engines[2].error = Some(msg);
            None
        }
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    // Engine index -> (reader choice, read() calls in flight); index 2 is fio.
    let readers = [
        (ReaderChoice::IoUring, uring_k),
        (ReaderChoice::Pread, pread_k),
    ];
    for round in 0..opts.rounds {
        let offsets = shuffled_offsets(n_blocks, bs as u64, 0x5eed_0000 + round as u64);
        for i in 0..3 {
            // Rotate the order so that no engine always runs right after the same one.
            let engine = (i + round) % 3;
            if engines[engine].error.is_some() {
                continue;
            }
            let result = if engine == 2 {
                run_fio(&path, opts.size_bytes, bs, qd, direct_io)
            } else {
                let (choice, k) = readers[engine];
                let config = ReaderConfig {
                    choice,
                    queue_depth: opts.queue_depth,
                    direct_io,
                };
                rt.block_on(run_reader(
                    config,
                    &path,
                    &offsets,
                    bs,
                    qd,
                    k,
                    opts.size_bytes,
                ))
            };
            match result {
                Ok(gbps) => {
                    eprintln!(
                        "round {}/{}: {:<20} {gbps:.3} GB/s",
                        round + 1,
                        opts.rounds,
                        engines[engine].engine
                    );
                    engines[engine].runs_gbps.push(gbps);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("{}: {msg}", engines[engine].engine);
                    engines[engine].error = Some(msg);
                }
            }
        }
    }

    for e in &mut engines {
        e.median_gbps = median(&e.runs_gbps);
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fio_median = engines[2].median_gbps;
    Ok(Report {
        file: path,
        size_bytes: opts.size_bytes,
        block_bytes: bs,
        queue_depth: opts.queue_depth,
        direct_io_requested: opts.direct_io,
        direct_io,
        rounds: opts.rounds,
        fio_version,
        ratio_uring_fio: ratio(engines[0].median_gbps, fio_median),
        ratio_pread_fio: ratio(engines[1].median_gbps, fio_median),
        engines,
        notes,
    })
}

/// Refuses options the benchmark cannot run with.
fn check_options(opts: &Options) -> anyhow::Result<()> {
    let bs = opts.block_bytes;
    if bs == 0 || !bs.is_multiple_of(BLOCK_BYTES) {
        bail!("block size {bs} is not a positive multiple of {BLOCK_BYTES}");
    }
    if opts.queue_depth == 0 || opts.queue_depth > QUEUE_DEPTH_MAX {
        bail!(
            "queue depth {} is outside 1..={QUEUE_DEPTH_MAX}",
            opts.queue_depth
        );
    }
    if opts.size_bytes == 0 || !opts.size_bytes.is_multiple_of(bs as u64) {
        bail!(
            "file size {} is not a positive multiple of the block size {bs}",
            opts.size_bytes
        );
    }
    if opts.rounds == 0 {
        bail!("at least one round is needed");
    }
    Ok(())
}

/// The three engines' results before the first run, with how each is driven.
fn engines(uring_k: usize, pread_k: usize, qd: usize) -> Vec<EngineResult> {
    vec![
        EngineResult {
            engine: ENGINE_URING.to_string(),
            driving: format!("{uring_k} read() calls of {qd} ops in flight; ring depth {qd}"),
            runs_gbps: Vec::new(),
            median_gbps: None,
            error: None,
        },
        EngineResult {
            engine: ENGINE_PREAD.to_string(),
            driving: format!(
                "{pread_k} read() calls of {qd} ops in flight; {pread_k} preads in flight"
            ),
            runs_gbps: Vec::new(),
            median_gbps: None,
            error: None,
        },
        EngineResult {
            engine: ENGINE_FIO.to_string(),
            driving: format!("--iodepth={qd} --numjobs=1"),
            runs_gbps: Vec::new(),
            median_gbps: None,
            error: None,
        },
    ]
}

/// Creates `path` with `size` bytes of pseudo-random non-zero data, unless a file of that size
/// is already there.
fn prepare_file(path: &Path, size: u64) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.len() == size
    {
        eprintln!("reusing {}", path.display());
        return Ok(());
    }
    eprintln!("writing {} MiB to {}", size / MIB, path.display());
    let tmp = path.with_extension("partial");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut rng = XorShift::new(0x00c0_ffee);
    let mut chunk = vec![0u8; 8 * MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        for word in chunk[..n].chunks_mut(8) {
            // `| 0x0101...` keeps every byte non-zero.
            let v = (rng.next() | 0x0101_0101_0101_0101).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Drops the file's pages from the page cache.
fn drop_cached_pages(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is valid for the
    // duration of the call because `file` is borrowed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Reads every block at `offsets` once through a fresh [`Reader`]; returns GB/s.
async fn run_reader(
    config: ReaderConfig,
    path: &Path,
    offsets: &[u64],
    bs: usize,
    qd: usize,
    batches_in_flight: usize,
    expect_bytes: u64,
) -> anyhow::Result<f64> {
    let reader = Reader::start(config).context("starting the reader")?;
    let file = Arc::new(
        reader
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?,
    );
    if !config.direct_io {
        drop_cached_pages(&file).context("posix_fadvise(DONTNEED)")?;
    }
    let start = Instant::now();
    let mut results = futures::stream::iter(offsets.chunks(qd))
        .map(|chunk| {
            let ops = chunk
                .iter()
                .map(|&offset| ReadOp { offset, len: bs })
                .collect();
            reader.read(Arc::clone(&file), ops)
        })
        .buffer_unordered(batches_in_flight);
    let mut bytes = 0u64;
    while let Some(bufs) = results.next().await {
        for buf in bufs.context("read")? {
            bytes += buf.len() as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if bytes != expect_bytes {
        bail!("read {bytes} bytes, expected {expect_bytes}");
    }
    Ok(bytes as f64 / secs / 1e9)
}

/// Finds fio (installing it with apt-get if allowed); returns its version.
fn find_fio(install: bool) -> anyhow::Result<String> {
    let version = || -> Option<String> {
        let out = Command::new("fio").arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    if !install {
        bail!("fio is not installed (pass --install-fio to install it with apt-get)");
    }
    for args in [&["update"][..], &["install", "-y", "fio"][..]] {
        eprintln!("running apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed: {status}", args.join(" "));
        }
    }
    version().context("fio is still not runnable after apt-get install")
}

/// Runs one fio random read of the whole file; returns GB/s.
fn run_fio(path: &Path, size: u64, bs: usize, qd: usize, direct: bool) -> anyhow::Result<f64> {
    let out = Command::new("fio")
        .arg("--name=x")
        .arg(format!("--filename={}", path.display()))
        .arg("--rw=randread")
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={qd}"))
        .arg("--ioengine=io_uring")
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--size={size}"))
        .arg("--numjobs=1")
        .arg("--output-format=json")
        .arg("--invalidate=1")
        .arg("--readonly")
        .output()
        .context("running fio")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // fio may print notes before the JSON document.
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .context("no JSON in fio output")?;
    let v: serde_json::Value = serde_json::from_str(json).context("parsing fio JSON")?;
    let read = &v["jobs"][0]["read"];
    let bw = read["bw_bytes"]
        .as_f64()
        .context("fio JSON has no jobs[0].read.bw_bytes")?;
    let io_bytes = read["io_bytes"].as_u64().unwrap_or(size);
    if io_bytes != size {
        bail!("fio read {io_bytes} bytes, expected {size}");
    }
    Ok(bw / 1e9)
}

/// Block offsets `0, bs, 2 bs, ...` in a seeded random order (Fisher-Yates).
pub fn shuffled_offsets(n_blocks: u64, bs: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n_blocks).map(|i| i * bs).collect();
    let mut rng = XorShift::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// The median; the mean of the middle two for an even count.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// xorshift64*: small, seedable, good enough for shuffles and filler bytes.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A xorshift64 generator from `seed` (not zero): the benches' synthetic data, the same on
/// every run.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation() {
        let v = shuffled_offsets(1000, 4096, 7);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).map(|i| i * 4096).collect::<Vec<_>>());
        assert_ne!(v, s, "shuffled");
        assert_eq!(v, shuffled_offsets(1000, 4096, 7), "deterministic");
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
