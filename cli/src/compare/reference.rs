//! Reference engines: DuckDB and DataFusion (Python packages) run the suite's SQL directly on
//! the device's Parquet file, with the device's thread count, as "what a user would run
//! instead", each producing Arrow; their results are compared value by value with the
//! device's. They live in a virtual environment under `~/.cache/nearstore/pyvenv`, which
//! `--reference install` creates and fills with pip, at pinned versions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::measure::{Values, values_of};
use super::{Case, EngineRun, ReferenceChoice};

const SCRIPT: &str = include_str!("reference.py");
/// Module, pinned version: what pip installs and what an existing environment must have.
const PACKAGES: [(&str, &str); 3] = [
    ("duckdb", "2.0.1"),
    ("datafusion", "55.0.0"),
    ("pyarrow", "26.0.1"),
];

/// What the engines returned.
pub struct References {
    /// name → version of each engine that ran.
    pub engines: BTreeMap<String, String>,
    /// query → engine → figures.
    pub results: BTreeMap<String, BTreeMap<String, EngineRun>>,
    /// Engines or queries that failed, if any.
    pub note: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    engines: BTreeMap<String, String>,
    results: BTreeMap<String, BTreeMap<String, EngineRun>>,
    errors: BTreeMap<String, String>,
}

fn venv() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/nearstore/pyvenv"))
}

/// Whether `module` imports at `version`.
fn imports(python: &Path, module: &str, version: &str) -> bool {
    Command::new(python)
        .args([
            "-c",
            &format!("import sys, {module}; sys.exit({module}.__version__ != '{version}')"),
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The venv's Python with the engines, installing them if `choice` allows.
fn python(choice: ReferenceChoice) -> Result<PathBuf> {
    let venv = venv()?;
    let python = venv.join("bin/python");
    let missing: Vec<String> = PACKAGES
        .iter()
        .filter(|(m, v)| !python.exists() || !imports(&python, m, v))
        .map(|(m, v)| format!("{m}=={v}"))
        .collect();
    if missing.is_empty() {
        return Ok(python);
    }
    if choice != ReferenceChoice::Install {
        bail!(
            "{} not installed in {} (run with --reference install)",
            missing.join(" and "),
            venv.display()
        );
    }
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    if !python.exists() {
        eprintln!(
            "creating a Python virtual environment in {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    eprintln!(
        "installing {} with pip for the reference columns",
        missing.join(", ")
    );
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(&missing))?;
    Ok(python)
}

/// The one Parquet object of lineitem in the device's data directory.
fn parquet_file(data: &Path) -> Result<PathBuf> {
    let objects = data.join("objects");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&objects)
        .with_context(|| format!("listing {}", objects.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    match files.len() {
        1 => Ok(files.remove(0)),
        n => bail!(
            "expected one Parquet object in {}, found {n}",
            objects.display()
        ),
    }
}

/// The values of an engine's result file.
fn read_values(path: &Path) -> Result<Values> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = arrow::ipc::reader::FileReader::try_new(file, None)
        .with_context(|| format!("reading {}", path.display()))?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    values_of(&batches)
}

/// The request's queries: each case's name and SQL.
fn queries(cases: &[Case]) -> serde_json::Value {
    cases
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "sql": c.sql}))
        .collect()
}

/// Runs the engines over `cases`; `ours` is each query's values on the device.
pub fn run(
    data: &Path,
    cases: &[Case],
    runs: usize,
    threads: usize,
    choice: ReferenceChoice,
    ours: &BTreeMap<String, Values>,
) -> Result<References> {
    let python = python(choice)?;
    let parquet = parquet_file(data)?;
    eprintln!(
        "reference engines: {} on {} ({} threads, as the device has workers)",
        PACKAGES.map(|(m, _)| m).join(", "),
        parquet.display(),
        threads
    );
    let out_file = tempfile::NamedTempFile::new().context("a file for the engines' output")?;
    let results_dir = tempfile::tempdir().context("a directory for the engines' results")?;
    let request = serde_json::json!({
        "parquet": parquet,
        "out": out_file.path(),
        "dir": results_dir.path(),
        "threads": threads,
        "runs": runs.max(1),
        "queries": queries(cases),
    });
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    child
        .stdin
        .take()
        .context("reference engine stdin")?
        .write_all(&serde_json::to_vec(&request)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "reference engines failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut parsed: Output = serde_json::from_slice(
        &std::fs::read(out_file.path()).context("reading the reference engines' output")?,
    )
    .context("parsing the reference engines' output")?;
    // Each result's values against the device's, while the files exist.
    for (query, engines) in &mut parsed.results {
        for (engine, e) in engines.iter_mut() {
            let Some(path) = e.arrow.take() else { continue };
            match (ours.get(query), read_values(&path)) {
                (Some(mine), Ok(theirs)) => e.values_equal = Some(mine.same(&theirs)),
                (None, _) => {}
                (_, Err(err)) => {
                    parsed
                        .errors
                        .insert(format!("{engine}/{query}"), format!("{err:#}"));
                }
            }
        }
    }
    let note = (!parsed.errors.is_empty()).then(|| {
        parsed
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    Ok(References {
        engines: parsed.engines,
        results: parsed.results,
        note,
    })
}

/// DuckDB running the suite's queries one at a time as asked (`reference.py`'s serve mode),
/// to be timed alternately with the device.
pub struct DuckServer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl DuckServer {
    /// Starts DuckDB with `threads` threads over the Parquet file of the device's `data`,
    /// ready to run `cases` (the venv's engines as `choice` allows).
    pub async fn start(
        data: &Path,
        cases: &[Case],
        threads: usize,
        choice: ReferenceChoice,
    ) -> Result<Self> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let python = python(choice)?;
        let request = serde_json::json!({
            "serve": true,
            "parquet": parquet_file(data)?,
            "threads": threads,
            "queries": queries(cases),
        });
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let mut stdin = child.stdin.take().context("DuckDB's stdin")?;
        let stdout = child.stdout.take().context("DuckDB's stdout")?;
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        let mut server = DuckServer {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        server.answer("ready").await?;
        Ok(server)
    }

    /// Runs query `i` of the cases once: DuckDB's wall time of it into Arrow, ms.
    pub async fn run(&mut self, i: usize) -> Result<f64> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{i}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let ms = self.answer("ms ").await?;
        ms.parse()
            .with_context(|| format!("DuckDB's time {ms:?} is not a number"))
    }

    /// The rest of the next line that begins with `prefix` (the engine's own output skipped).
    async fn answer(&mut self, prefix: &str) -> Result<String> {
        while let Some(line) = self.lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
        bail!(
            "DuckDB stopped before answering ({})",
            self.child.wait().await?
        )
    }
}
