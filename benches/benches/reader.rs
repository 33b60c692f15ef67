//! Storage read path vs fio: `cargo bench -p nearstore-benches --bench reader -- [options]`.
//!
//! Prints a Markdown table of per-engine median throughput and the ratios to fio; see
//! [`nearstore_benches::reader_vs_fio`] for what is measured.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use nearstore_benches::{Options, reader_vs_fio};

const USAGE: &str = "\
usage: cargo bench -p nearstore-benches --bench reader -- [options]

  --size-mib N          test file size in MiB (default 1024)
  --bs-kib N            block size in KiB (default 128)
  --qd N                queue depth, 1..=128 (default 32)
  --no-direct           buffered reads instead of O_DIRECT
  --rounds N            rounds of (io_uring, pread, fio) (default 5)
  --dir PATH            directory of the test file (default <tmp>/nearstore-bench)
  --install-fio         install fio with apt-get if it is missing
  --json PATH           also write the report as JSON to PATH
  --quick               64 MiB file, 2 rounds (later --size-mib/--rounds still apply)
  --uring-batches N     read() calls in flight for the io_uring reader (default 4)
  --pread-batches N     read() calls in flight for the pread reader (default: the queue depth)
";

struct Args {
    opts: Options,
    json: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut opts = Options::default();
    let mut json = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Ok(None),
            "--size-mib" => opts.size_bytes = parse_num::<u64>(&arg, value(&arg)?)? << 20,
            "--bs-kib" => opts.block_bytes = parse_num::<usize>(&arg, value(&arg)?)? * 1024,
            "--qd" => opts.queue_depth = parse_num(&arg, value(&arg)?)?,
            "--no-direct" => opts.direct_io = false,
            "--rounds" => opts.rounds = parse_num(&arg, value(&arg)?)?,
            "--dir" => opts.dir = Some(PathBuf::from(value(&arg)?)),
            "--install-fio" => opts.install_fio = true,
            "--json" => json = Some(PathBuf::from(value(&arg)?)),
            "--quick" => {
                opts.size_bytes = 64 << 20;
                opts.rounds = 2;
            }
            "--uring-batches" => opts.uring_batches_in_flight = parse_num(&arg, value(&arg)?)?,
            "--pread-batches" => {
                opts.pread_batches_in_flight = Some(parse_num(&arg, value(&arg)?)?)
            }
            other => bail!("unknown argument '{other}'\n\n{USAGE}"),
        }
    }
    Ok(Some(Args { opts, json }))
}

fn parse_num<T: std::str::FromStr>(name: &str, s: String) -> anyhow::Result<T> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("{name}: '{s}' is not a valid number"))
}

fn run() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        print!("{USAGE}");
        return Ok(());
    };
    let report = reader_vs_fio(&args.opts)?;
    println!("{}", report.to_markdown());
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
