//! Any Arrow Flight client can query a device: the README's pyarrow snippet
//! (`examples/pyarrow_query.py`) runs against a live device and agrees with the Rust SDK.

use std::path::PathBuf;
use std::process::Command;

use nearstore_proto::{AggFunc, Expr};
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::Query;

use crate::support::TestDevice;

/// pyarrow, pinned: the Flight client tests' (and the reference engines').
pub(crate) const PYARROW: &str = "pyarrow==26.0.1";

/// The virtual environment under the cargo cache directory with `packages` (pip pins)
/// installed, checked by running `import` in it.
pub(crate) fn python_with(packages: &[&str], import: &str) -> Result<PathBuf, String> {
    let home = std::env::var("HOME").map_err(|_| "HOME is not set".to_string())?;
    let venv = PathBuf::from(home).join(".cache/nearstore/pyvenv");
    let python = venv.join("bin/python");
    let has = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", import])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(packages))?;
    if has(&python) {
        Ok(python)
    } else {
        Err(format!("{packages:?} installed but `{import}` fails"))
    }
}

/// Runs `examples/NAME` with `python` and `args`; its stdout, after checking it succeeded.
pub(crate) async fn run_example(python: PathBuf, name: &str, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A Python with `packages`, or the test's end: under CI a missing dependency fails the
/// test (never a pass); elsewhere it is skipped with a message on stdout.
pub(crate) fn python_or_skip(packages: &[&str], import: &str) -> Option<PathBuf> {
    match python_with(packages, import) {
        Ok(p) => Some(p),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("cannot set up {packages:?} under CI: {e}")
        }
        Err(e) => {
            println!("SKIPPED: cannot set up {packages:?} ({e})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_flight_client_queries_a_device() {
    let Some(python) = python_or_skip(&[PYARROW], "import pyarrow.flight") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.01, &|_, _| {}).unwrap())
        .await
        .unwrap();
    let stdout = run_example(python, "pyarrow_query.py", &[&dev.url, "lineitem"]).await;

    let mut c = dev.client().await;
    let want = c
        .query(
            &Query::table("lineitem")
                .filter_expr(Expr::parse("l_quantity < 24").unwrap())
                .aggregate(AggFunc::CountStar, None, "n")
                .unwrap()
                .build(),
        )
        .await
        .unwrap();
    let n = want
        .concat()
        .unwrap()
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert!(stdout.contains(&format!("'n': {n},")), "{stdout}");
    assert!(stdout.contains("device read "), "{stdout}");
    dev.stop().await;
}
