//! The kernel author's workflow, as `docs/kernels.md` tells it: scaffold a kernel, test it on
//! the host, build it for the device, run it on a Parquet file, register it on a running device,
//! and call it from SQL — same rows as the equivalent host-side SQL. Also the example kernels
//! against their host-side equivalents, and modules the device refuses at registration.

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::RecordBatch;
use nearstore_proto::{ErrorCode, PutMode};
use nearstore_sdk::{ClientOptions, Error, Mode, SqlSession};

use crate::support::{TestDevice, cli_bin, sorted_rows, table_batches};

/// Where kernel builds go: under the workspace's target directory, so reruns are incremental.
pub(crate) fn kernel_target() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("nearstore-kernel-tests"));
    base.join("kernel-tests")
}

fn nearstore(args: &[&str], cwd: &Path) -> (String, String) {
    run_bin(&cli_bin(), args, cwd)
}

/// Runs the `nearstore` binary at `bin` in `cwd` (no device or token from the environment):
/// its stdout and stderr, or a panic with both when it fails.
pub(crate) fn run_bin(bin: &Path, args: &[&str], cwd: &Path) -> (String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env_remove("NEARSTORE_DEVICE")
        .env_remove("NEARSTORE_TOKEN")
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        out.status.success(),
        "nearstore {args:?} failed:\n{so}\n{se}"
    );
    (so, se)
}

/// `kernel new` scaffolds the crate `above` in `w`, its own test passes on the host, and
/// `kernel build` makes its module, whose path it returns.
fn scaffold_and_build(w: &Path, target: &str) -> PathBuf {
    nearstore(&["kernel", "new", "above"], w);
    let crate_dir = w.join("above");
    let host = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--quiet", "--target-dir", target])
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "the scaffold's own test fails: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    let (built, _) = nearstore(&["kernel", "build", "above", "--target-dir", target], w);
    let module = PathBuf::from(built.trim());
    assert!(module.ends_with("above.wasm"), "{built}");
    module
}

/// `kernel test` runs `module` on a Parquet file in `w` (written from the batches it returns),
/// and prints a trapping kernel's error with its Wasm frames.
fn test_locally(w: &Path, module: &Path) -> Vec<RecordBatch> {
    let batches = table_batches(5_000, 1_000, 9);
    let file = w.join("data.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        batches[0].schema(),
        None,
    )
    .unwrap();
    for b in &batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    let (rows, stats) = nearstore(
        &[
            "kernel",
            "test",
            module.to_str().unwrap(),
            "--file",
            "data.parquet",
            "--args",
            "id",
            "--params",
            "4990",
            "--format",
            "csv",
        ],
        w,
    );
    assert!(stats.contains("9 of 5000 rows selected"), "{stats}");
    assert!(rows.starts_with("id,val,cat,day,price\n4991,"), "{rows}");
    assert_eq!(rows.lines().count(), 1 + 9);
    // A kernel that traps: `kernel test` prints the device's error with the Wasm frames.
    let trapping = w.join("trap.wasm");
    std::fs::write(
        &trapping,
        nearstore_test_support::kernel::filter(
            "(call $boom) (i32.const 0)",
            "(func $boom unreachable)",
        ),
    )
    .unwrap();
    let out = Command::new(cli_bin())
        .args([
            "kernel",
            "test",
            "trap.wasm",
            "--file",
            "data.parquet",
            "--args",
            "id",
        ])
        .current_dir(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("trapped: wasm trap: wasm `unreachable` instruction executed"),
        "{err}"
    );
    assert!(err.contains("boom"), "no backtrace frame: {err}");
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kernel_goes_from_scaffold_to_sql() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let target = kernel_target();
    let target = target.to_str().unwrap();

    // 1. Scaffold, test on the host, build for the device.
    let module = scaffold_and_build(w, target);
    // 2. Run it on a Parquet file, locally, in the device's sandbox.
    let batches = test_locally(w, &module);

    // 3. Register it on a running device, see it listed, call it from SQL.
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let mut c = dev.client().await;
    c.put_batches("t", PutMode::Create, batches).await.unwrap();
    let (out, _) = nearstore(
        &[
            "kernel",
            "register",
            module.to_str().unwrap(),
            "--device",
            &dev.url,
        ],
        w,
    );
    assert!(out.contains("registered kernel above (filter"), "{out}");
    let (list, _) = nearstore(&["kernel", "list", "--device", &dev.url], w);
    assert!(list.starts_with("above\tfilter\t"), "{list}");
    // From a plan, through the CLI.
    let (rows, _) = nearstore(
        &[
            "query",
            "--table",
            "t",
            "--kernel",
            "above(id):4990",
            "--select",
            "id",
            "--format",
            "csv",
            "--no-stats",
            "--device",
            &dev.url,
        ],
        w,
    );
    let ids: Vec<&str> = rows.lines().skip(1).collect();
    assert_eq!(ids, (4991..5000).map(|i| i.to_string()).collect::<Vec<_>>());

    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    let with_kernel = s
        .sql("select id, cat from t where above(id, '4000') and cat <> 'beta'")
        .await
        .unwrap();
    let host_side = s
        .sql("select id, cat from t where id > 4000 and cat <> 'beta'")
        .await
        .unwrap();
    assert!(with_kernel.num_rows() > 500);
    assert_eq!(sorted_rows(&with_kernel), sorted_rows(&host_side));
    let (plan, stats) = &with_kernel.scans[0];
    assert!(
        plan.filter
            .as_ref()
            .unwrap()
            .to_string()
            .contains("KERNEL above(id")
    );
    assert!(
        stats.placement.contains("kernel:above=wasm"),
        "{}",
        stats.placement
    );

    // The same function where it cannot run on the device says so.
    let t = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
        .await
        .unwrap();
    let e = t
        .sql("select id from t where above(id, '4000')")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("runs on the device"), "{e}");

    // Bad calls: unknown kernel, wrong argument type, parameters the kernel rejects.
    let plan = |k: nearstore_proto::Expr| nearstore_sdk::Query::table("t").filter_expr(k).build();
    let call = |name: &str, col: &str, params: &str| nearstore_proto::Expr::Kernel {
        name: name.into(),
        args: vec![col.into()],
        params: params.into(),
    };
    let code = |e: Error| match e {
        Error::Device { code, message, .. } => (code, message),
        other => panic!("{other}"),
    };
    let (k, m) = code(c.query(&plan(call("nope", "id", "1"))).await.unwrap_err());
    assert_eq!(k, ErrorCode::UnknownKernel, "{m}");
    assert!(m.contains("'nope'"), "{m}");
    let (k, m) = code(c.query(&plan(call("above", "cat", "1"))).await.unwrap_err());
    assert_eq!(k, ErrorCode::KernelFailed, "{m}");
    let (k, m) = code(
        c.query(&plan(call("above", "id", "many")))
            .await
            .unwrap_err(),
    );
    assert_eq!(k, ErrorCode::KernelFailed, "{m}");
    assert!(m.contains("above"), "{m}");
    // Removal.
    nearstore(&["kernel", "remove", "above", "--device", &dev.url], w);
    assert!(c.kernels().await.unwrap().is_empty());
    dev.stop().await;
}

/// A table of strings and points for the example kernels: 20 000 generated rows.
pub(crate) fn examples_table() -> RecordBatch {
    nearstore_test_support::example_data::example_rows(0, 20_000)
}

/// Runs the kernel query and its host-side equivalent: the host's has rows and both have the
/// same ones. Returns the kernel query's result.
pub(crate) async fn same_rows(
    s: &SqlSession,
    kernel: &str,
    host: &str,
) -> nearstore_sdk::SqlResult {
    let a = s
        .sql(kernel)
        .await
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let b = s.sql(host).await.unwrap();
    assert!(b.num_rows() > 0, "{host}");
    assert_eq!(sorted_rows(&a), sorted_rows(&b), "{kernel}");
    a
}

/// The `histogram` aggregate kernel per group equals the host's bucket counts.
async fn histogram_equals_host_counts(s: &SqlSession) {
    let hist = s
        .sql("select g, histogram(y, '-100,100,20') as h from pts group by g")
        .await
        .unwrap();
    let counts = s
        .sql(
            "select g, cast(floor((y - -100) * 20 / (100 - -100)) as bigint) as b, count(*) as n \
             from pts where y >= -100 and y < 100 group by g, b",
        )
        .await
        .unwrap();
    let mut want = vec![vec![0i64; 20]; 5];
    for b in &counts.batches {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let (g, k, n) = (
            b.column(0).as_primitive::<Int64Type>(),
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Int64Type>(),
        );
        for r in 0..b.num_rows() {
            want[g.value(r) as usize][k.value(r) as usize] = n.value(r);
        }
    }
    let want_rows: Vec<String> = (0..5)
        .map(|g| {
            let l: Vec<String> = want[g].iter().map(|c| c.to_string()).collect();
            format!("{g}|[{}]", l.join(", "))
        })
        .collect();
    assert_eq!(sorted_rows(&hist), want_rows);
    assert!(
        hist.scans.iter().all(|(p, _)| !p.aggregates.is_empty()),
        "the histogram ran on the device"
    );
}

/// The `topk` aggregate kernel, with and without GROUP BY, equals the host's ranking.
async fn topk_equals_host_ranking(s: &SqlSession) {
    for (grouped, k) in [(true, 5), (false, 12)] {
        let (kernel, host) = if grouped {
            (
                format!("select g, topk(id, x, '{k}') from pts group by g"),
                format!(
                    "select g, id from (select g, id, row_number() over (partition by g order by \
                     x desc, id) as r from pts where x is not null) where r <= {k} order by g, r"
                ),
            )
        } else {
            (
                format!("select topk(id, x, '{k}') from pts"),
                format!(
                    "select 0 as g, id from pts where x is not null order by x desc, id limit {k}"
                ),
            )
        };
        let a = s.sql(&kernel).await.unwrap();
        let b = s.sql(&host).await.unwrap();
        let mut lists: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for batch in &b.batches {
            use arrow::array::AsArray;
            use arrow::datatypes::Int64Type;
            let (g, id) = (
                arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64).unwrap(),
                batch.column(1).clone(),
            );
            for r in 0..batch.num_rows() {
                lists
                    .entry(g.as_primitive::<Int64Type>().value(r))
                    .or_default()
                    .push(id.as_primitive::<Int64Type>().value(r).to_string());
            }
        }
        let want: Vec<String> = lists
            .iter()
            .map(|(g, ids)| {
                let l = format!("[{}]", ids.join(", "));
                if grouped { format!("{g}|{l}") } else { l }
            })
            .collect();
        assert_eq!(sorted_rows(&a), want, "{kernel}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_kernels_equal_their_host_side_sql() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/examples");
    let target = kernel_target();
    let modules = tokio::task::spawn_blocking(move || {
        nearstore::kernel::build(&examples, Some(&target)).unwrap()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let mut c = dev.client().await;
    c.put_batches("pts", PutMode::Create, vec![examples_table()])
        .await
        .unwrap();
    for m in &modules {
        let name = m.file_stem().unwrap().to_str().unwrap();
        c.register_kernel(name, &std::fs::read(m).unwrap())
            .await
            .unwrap();
    }
    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    let pairs = [
        (
            "select id from pts where grep(s, 'abc')",
            "select id from pts where s like '%abc%'",
        ),
        (
            "select id from pts where grep(s, 'special re')",
            "select id from pts where s like '%special re%'",
        ),
        (
            "select id from pts where grep(s, '')",
            "select id from pts where s is not null",
        ),
        (
            "select id, x, y from pts where bbox(x, y, '-10, -20.5, 30, 0')",
            "select id, x, y from pts where x between -10 and 30 and y between -20.5 and 0",
        ),
        (
            "select count(*) from pts where bbox(x, y, '0,0,100,100') and grep(s, 'cd')",
            "select count(*) from pts where x between 0 and 100 and y between 0 and 100 and s like '%cd%'",
        ),
        // A kernel call and a comparison each reading the string column alone: the column
        // stays plain strings (the call takes them so), both conjuncts hold.
        (
            "select id from pts where grep(s, 'abc') and s <> 'zzz'",
            "select id from pts where s like '%abc%' and s <> 'zzz'",
        ),
    ];
    for (kernel, host) in pairs {
        same_rows(&s, kernel, host).await;
    }
    // A map kernel in SELECT (pushed with the filter and limit) and in WHERE.
    let pairs = [
        (
            "select id, score(x, y, '0.5,2') as v from pts",
            "select id, 0.5 * x + 2 * y as v from pts",
        ),
        (
            "select id, score(x, y, '1,-1') from pts where bbox(x, y, '0,0,50,50')",
            "select id, 1 * x + -1 * y from pts where x between 0 and 50 and y between 0 and 50",
        ),
        (
            "select count(*) from pts where score(x, y, '1,1') > 10",
            "select count(*) from pts where 1 * x + 1 * y > 10",
        ),
        (
            "select g, sum(score(x, y, '2,0')) from pts group by g",
            "select g, sum(2 * x + 0 * y) from pts group by g",
        ),
    ];
    for (kernel, host) in pairs {
        let a = same_rows(&s, kernel, host).await;
        // The kernel ran on the device: its call is in the plan sent.
        assert!(
            a.scans
                .iter()
                .any(|(p, _)| String::from_utf8_lossy(&p.to_json()).contains("\"score\"")),
            "{kernel}: {:?}",
            a.scans
        );
    }
    let few = s
        .sql("select id, score(x, y, '1,1') from pts limit 7")
        .await
        .unwrap();
    assert_eq!(few.num_rows(), 7);
    assert!(few.bytes_moved() < 4096, "{}", few.bytes_moved());

    // Aggregate kernels with and without GROUP BY against the host's SQL.
    histogram_equals_host_counts(&s).await;
    topk_equals_host_ranking(&s).await;
    // Kernels run only on the device: in full-transfer mode calling one says so.
    let host = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
        .await
        .unwrap();
    for q in [
        "select histogram(y, '0,1,2') from pts",
        "select score(x, y, '1,1') from pts",
    ] {
        let e = host.sql(q).await.unwrap_err().to_string();
        assert!(e.contains("runs on the device"), "{q}: {e}");
    }
    // A map kernel is not an aggregate kernel.
    let mut plain = dev.client().await;
    let mut bad = nearstore_proto::Plan::scan("pts");
    bad.aggregates.push(nearstore_proto::Aggregate {
        func: nearstore_proto::AggFunc::Kernel,
        expr: Some(nearstore_proto::Expr::Kernel {
            name: "score".into(),
            args: vec!["x".into(), "y".into()],
            params: "1,1".into(),
        }),
        name: None,
    });
    let e = plain.query(&bad).await.unwrap_err();
    assert!(e.to_string().contains("not an aggregate kernel"), "{e}");
    let e = s
        .sql("select histogram(y, 'nonsense') from pts")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("histogram"), "{e}");

    // Bad parameters are the kernel's specific error, and the device goes on serving.
    let e = s
        .sql("select id from pts where bbox(x, y, 'not a box')")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bbox"), "{e}");
    assert_eq!(
        s.sql("select count(*) from pts").await.unwrap().num_rows(),
        1
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_bad_modules_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let mut c = dev.client().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a module".to_vec(), "\\0asm"),
        (
            nearstore_test_support::kernel::filter(
                "(i32.const 0)",
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            ),
            "wasi_snapshot_preview1.fd_write",
        ),
        (
            wat::parse_str(crate::kernels::wat_with_version(9)).unwrap(),
            "version 9",
        ),
        (
            wat::parse_str(
                r#"(module (memory (export "memory") 1)
                (func (export "nearstore_abi_version") (result i32) (i32.const 1))
                (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
                (@custom "nearstore.manifest" "abi=1\nkind=filter\n"))"#,
            )
            .unwrap(),
            "does not export `nearstore_filter`",
        ),
        (
            wat::parse_str(
                r#"(module (memory (export "memory") 1)
                (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
                (func (export "nearstore_filter") (param i32 i32 i32) (result i32) (i32.const 0))
                (@custom "nearstore.manifest" "abi=1\nkind=filter\n"))"#,
            )
            .unwrap(),
            "nearstore_abi_version",
        ),
    ];
    // Map and aggregate kernels: the manifest's output type and state size, and the exports
    // their kind needs.
    let module = |manifest: &str, exports: &str| {
        // The manifest's lines, escaped for a WAT string.
        let manifest = manifest.replace('\n', "\\n");
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
            (func (export "nearstore_abi_version") (result i32) (i32.const 1))
            (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
            {exports}
            (@custom "nearstore.manifest" "{manifest}"))"#
        ))
        .unwrap()
    };
    let f3 = |name: &str| {
        format!(r#"(func (export "{name}") (param i32 i32 i32) (result i32) (i32.const 0))"#)
    };
    let agg = format!(
        "{}{}",
        f3("nearstore_agg_update"),
        f3("nearstore_agg_finish")
    );
    let cases = cases.into_iter().chain([
        (
            module("abi=1\nkind=map\n", &f3("nearstore_map")),
            "needs output=int64 or float64",
        ),
        (
            module("abi=1\nkind=map\noutput=list_int64\n", &f3("nearstore_map")),
            "not output=list_int64",
        ),
        (
            module("abi=1\nkind=map\noutput=int64\n", &f3("nearstore_filter")),
            "does not export `nearstore_map`",
        ),
        (
            module("abi=1\nkind=aggregate\noutput=int64\n", &agg),
            "needs state_size",
        ),
        (
            module("abi=1\nkind=aggregate\noutput=int64\nstate_size=0\n", &agg),
            "state_size=0",
        ),
        (
            module(
                "abi=1\nkind=aggregate\noutput=float64\nstate_size=8\n",
                &f3("nearstore_agg_update"),
            ),
            "does not export `nearstore_agg_finish`",
        ),
        (
            module(
                "abi=1\nkind=filter\noutput=int64\n",
                &f3("nearstore_filter"),
            ),
            "no output type",
        ),
        (
            module("abi=1\nkind=reduce\n", &f3("nearstore_filter")),
            "filter, map or aggregate",
        ),
    ]);
    for (module, fix) in cases {
        let e = c.register_kernel("k", &module).await.unwrap_err();
        match e {
            Error::Device { code, message, .. } => {
                assert_eq!(code, ErrorCode::InvalidKernel, "{message}");
                assert!(message.contains(fix), "{message} lacks {fix}");
            }
            other => panic!("{other}"),
        }
    }
    assert!(c.kernels().await.unwrap().is_empty());
    let e = c.register_kernel("bad/name", b"\0asm").await.unwrap_err();
    assert!(e.to_string().contains("kernel name"), "{e}");
    dev.stop().await;
}
