//! Kernels in C and AssemblyScript beside Rust: a kernel of every kind scaffolded in every
//! language by a copy of the `nearstore` binary in an empty directory (no checkout in reach),
//! built, registered and queried from SQL against the same computation in host SQL; the C and
//! AssemblyScript examples against their Rust twins and host SQL on 20 000 generated rows; and
//! the kernel guide's C and AssemblyScript code built as written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use nearstore_proto::PutMode;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::kernel_dev::{examples_table, kernel_target, run_bin, same_rows};
use crate::support::{TestDevice, cli_bin, sorted_rows};

/// Runs the binary at `bin` in `cwd`; its stdout, or a panic with both streams.
fn run(bin: &Path, args: &[&str], cwd: &Path) -> String {
    run_bin(bin, args, cwd).0
}

/// 10 000 rows: ids, integer-valued floats with NULLs (so sums of squares are exact), and 6
/// groups, the last of which has only NULL values.
fn scaffold_table() -> RecordBatch {
    let n = 10_000i64;
    let x: Float64Array = (0..n)
        .map(|i| (i % 7 != 3 && i % 6 != 5).then(|| ((i * 37) % 201 - 100) as f64))
        .collect();
    RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
        ),
        ("x", Arc::new(x) as ArrayRef),
        (
            "g",
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 6))) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_in_every_language_builds_from_the_binary_alone() {
    // The binary alone in an empty directory: what it scaffolds cannot reach a checkout.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let bin = w.join("nearstore");
    std::fs::copy(cli_bin(), &bin).unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let target = kernel_target().join("scaffolds");
    let target = target.to_str().unwrap();

    let mut modules = Vec::new();
    for (lang, short) in [("rust", "rs"), ("c", "c"), ("assemblyscript", "as")] {
        for kind in ["filter", "map", "aggregate"] {
            let name = format!("{kind}_{short}");
            run(
                &bin,
                &["kernel", "new", &name, "--kind", kind, "--lang", lang],
                w,
            );
            for f in files_under(&w.join(&name)) {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                assert!(
                    !text.contains(checkout.to_str().unwrap()),
                    "{} names the checkout",
                    f.display()
                );
            }
            let built = run(&bin, &["kernel", "build", &name, "--target-dir", target], w);
            let module = PathBuf::from(built.trim());
            assert!(module.ends_with(format!("{name}.wasm")), "{built}");
            modules.push((name, kind, module));
        }
    }
    // A Rust scaffold's own host tests pass.
    let host = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--quiet", "--target-dir", target])
        .current_dir(w.join("map_rs"))
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let mut c = dev.client().await;
    c.put_batches("t", PutMode::Create, vec![scaffold_table()])
        .await
        .unwrap();
    for (name, _, module) in &modules {
        let out = run(
            &bin,
            &[
                "kernel",
                "register",
                module.to_str().unwrap(),
                "--device",
                &dev.url,
            ],
            w,
        );
        assert!(out.contains(&format!("registered kernel {name}")), "{out}");
    }
    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    for (name, kind, _) in &modules {
        let (kernel, host) = match *kind {
            "filter" => (
                format!("select id, x from t where {name}(id, '4990') and g <> 2"),
                "select id, x from t where id > 4990 and g <> 2".to_string(),
            ),
            "map" => (
                format!("select id, {name}(x, '2.5') as v from t"),
                "select id, x * 2.5 as v from t".to_string(),
            ),
            _ => (
                format!("select g, {name}(x) as v from t group by g"),
                "select g, sum(x * x) as v from t group by g".to_string(),
            ),
        };
        let a = same_rows(&s, &kernel, &host).await;
        assert!(a.num_rows() >= 6, "{kernel}");
        if *kind == "aggregate" {
            assert!(sorted_rows(&a).contains(&"5|".to_string()), "{kernel}");
        }
        // Parameters the kernel refuses are its error, and the device goes on serving.
        if *kind != "aggregate" {
            let bad = kernel.replace("'4990'", "'many'").replace("'2.5'", "'x'");
            let e = s.sql(&bad).await.unwrap_err().to_string();
            assert!(e.contains(name.as_str()), "{bad}: {e}");
        }
    }
    assert_eq!(s.sql("select count(*) from t").await.unwrap().num_rows(), 1);

    // An AssemblyScript file without a manifest, and a C file that does not compile: the
    // build says what is wrong.
    std::fs::create_dir(w.join("bad")).unwrap();
    std::fs::write(
        w.join("bad/nearstore.ts"),
        std::fs::read(w.join("filter_as/nearstore.ts")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        w.join("bad/nomanifest.ts"),
        "export function f(): i32 { return 1; }\n",
    )
    .unwrap();
    let e = Command::new(&bin)
        .args(["kernel", "build", "bad/nomanifest.ts"])
        .current_dir(w)
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("has no manifest"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    std::fs::write(w.join("bad/broken.c"), "int f( {\n").unwrap();
    let e = Command::new(&bin)
        .args(["kernel", "build", "bad/broken.c"])
        .current_dir(w)
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("clang failed on"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    dev.stop().await;
}

/// The repository's kernels directory.
fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels")
}

/// Builds `dir`'s kernels into the shared kernel target.
async fn build(dir: PathBuf, target: &str) -> Vec<PathBuf> {
    let target = kernel_target().join(target);
    tokio::task::spawn_blocking(move || nearstore::kernel::build(&dir, Some(&target)).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_and_assemblyscript_examples_equal_their_rust_twins_and_host_sql() {
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for (dir, target, suffix) in [
        (kernels_dir().join("examples"), "examples", ""),
        (kernels_dir().join("c/examples"), "examples-c", "_c"),
        (
            kernels_dir().join("assemblyscript/examples"),
            "examples-as",
            "_as",
        ),
    ] {
        for m in build(dir, target).await {
            let stem = m.file_stem().unwrap().to_str().unwrap().to_string();
            named.push((format!("{stem}{suffix}"), m));
        }
    }
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["grep_c", "histogram_c", "bbox_as"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let mut c = dev.client().await;
    c.put_batches("pts", PutMode::Create, vec![examples_table()])
        .await
        .unwrap();
    for (name, m) in &named {
        c.register_kernel(name, &std::fs::read(m).unwrap())
            .await
            .unwrap();
    }
    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    for needle in ["abc", "special re", "", "x"] {
        let host = if needle.is_empty() {
            "select id from pts where s is not null".to_string()
        } else {
            format!("select id from pts where s like '%{needle}%'")
        };
        same_rows(
            &s,
            &format!("select id from pts where grep_c(s, '{needle}')"),
            &host,
        )
        .await;
        same_rows(
            &s,
            &format!("select id from pts where grep_c(s, '{needle}')"),
            &format!("select id from pts where grep(s, '{needle}')"),
        )
        .await;
    }
    for b in [
        "-10, -20.5, 30, 0",
        "0,0,100,100",
        "-100,-100,-99.9,100",
        "1e1,-2E1,3.5e+1,0",
    ] {
        let host = {
            let v: Vec<f64> = b.split(',').map(|p| p.trim().parse().unwrap()).collect();
            format!(
                "select id, x, y from pts where x between {} and {} and y between {} and {}",
                v[0], v[2], v[1], v[3]
            )
        };
        same_rows(
            &s,
            &format!("select id, x, y from pts where bbox_as(x, y, '{b}')"),
            &host,
        )
        .await;
        same_rows(
            &s,
            &format!("select id, x, y from pts where bbox_as(x, y, '{b}')"),
            &format!("select id, x, y from pts where bbox(x, y, '{b}')"),
        )
        .await;
    }
    for p in ["-100,100,20", "0,1,2", "-50.5,50,256"] {
        for group in [true, false] {
            let (k, r) = if group {
                (
                    format!("select g, histogram_c(y, '{p}') from pts group by g"),
                    format!("select g, histogram(y, '{p}') from pts group by g"),
                )
            } else {
                (
                    format!("select histogram_c(x, '{p}') from pts"),
                    format!("select histogram(x, '{p}') from pts"),
                )
            };
            let a = same_rows(&s, &k, &r).await;
            assert!(
                a.scans.iter().all(|(plan, _)| !plan.aggregates.is_empty()),
                "{k} ran on the device"
            );
        }
    }
    // Bad parameters: each kernel's own error, and the device goes on serving.
    for q in [
        "select id from pts where bbox_as(x, y, 'not a box')",
        "select id from pts where bbox_as(x, y, '1,2,3')",
        "select histogram_c(y, '5,1,10') from pts",
        "select histogram_c(y, '0,1,257') from pts",
        "select id from pts where grep_c(x, 'a')",
    ] {
        let e = s.sql(q).await.unwrap_err().to_string();
        let name = if q.contains("bbox_as") {
            "bbox_as"
        } else if q.contains("histogram_c") {
            "histogram_c"
        } else {
            "grep_c"
        };
        assert!(e.contains(name), "{q}: {e}");
    }
    assert_eq!(
        s.sql("select count(*) from pts").await.unwrap().num_rows(),
        1
    );
    dev.stop().await;
}

/// The code blocks of `docs/kernels.md` in `lang` (the fence's info string).
fn guide_blocks(lang: &str) -> Vec<String> {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/kernels.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in guide.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_c_and_assemblyscript_kernels_build_as_written() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_path_buf();
    std::fs::copy(
        kernels_dir().join("c/nearstore_kernel.h"),
        w.join("nearstore_kernel.h"),
    )
    .unwrap();
    std::fs::copy(
        kernels_dir().join("assemblyscript/nearstore.ts"),
        w.join("nearstore.ts"),
    )
    .unwrap();
    let mut written = 0;
    for (lang, ext) in [("c", "c"), ("ts", "ts")] {
        let blocks = guide_blocks(lang);
        assert!(!blocks.is_empty(), "the guide has no {lang} kernel");
        for (i, b) in blocks.iter().enumerate() {
            std::fs::write(w.join(format!("guide_{lang}_{i}.{ext}")), b).unwrap();
            written += 1;
        }
    }
    let modules = tokio::task::spawn_blocking(move || {
        nearstore::kernel::build(&w, Some(&w.join("target"))).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(modules.len(), written);
}
