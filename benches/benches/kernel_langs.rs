//! The example kernels in each language against their Rust twins on the same data: C `grep`
//! and `histogram`, AssemblyScript `bbox`. Each module runs over one Parquet file of the
//! generated example table in a local sandbox configured as the device's
//! (`nearstore::kernel::run_local`, what `nearstore kernel test` runs), the two languages
//! alternating, several runs each; the report gives the median time in the kernel (the calls,
//! with copying each batch into the sandbox and checking its output; not the Parquet decoding)
//! and the ratio to Rust, and checks both selected the same number of rows or values.
//!
//! `cargo bench -p nearstore-benches --bench kernel_langs [-- ROWS]` (release; not part of CI;
//! default 1 000 000 rows; needs clang, lld and Node.js, as `scripts/setup.sh` installs).

use std::path::{Path, PathBuf};

use nearstore_benches::median;
use nearstore_test_support::example_data::example_rows;

const RUNS: usize = 5;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("nearstore-bench"))
        .join("kernel-bench");
    eprintln!("building the example kernels in Rust, C and AssemblyScript");
    let mut modules = std::collections::BTreeMap::new();
    for (dir, lang) in [
        ("examples", "rust"),
        ("c/examples", "c"),
        ("assemblyscript/examples", "assemblyscript"),
    ] {
        let built = nearstore::kernel::build(&kernels.join(dir), Some(&target.join(lang)))
            .expect("examples build");
        for m in built {
            let name = m.file_stem().unwrap().to_str().unwrap().to_string();
            modules.insert((name, lang), std::fs::read(&m).unwrap());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pts.parquet");
    let first = example_rows(0, n.min(100_000));
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        first.schema(),
        None,
    )
    .unwrap();
    w.write(&first).unwrap();
    for from in (100_000..n).step_by(100_000) {
        w.write(&example_rows(from, (from + 100_000).min(n)))
            .unwrap();
    }
    w.close().unwrap();

    let cases: [(&str, &str, &[&str], &str); 3] = [
        ("grep", "c", &["s"], "special re"),
        ("histogram", "c", &["y"], "-100,100,20"),
        ("bbox", "assemblyscript", &["x", "y"], "-10,-20.5,30,0"),
    ];
    println!(
        "{n} rows, {RUNS} runs each, alternating; median ms in the kernel (calls, copies into \
         the sandbox and output checks; not decoding)"
    );
    println!(
        "{:<10} {:<15} {:>10} {:>10} {:>8}",
        "kernel", "language", "ms", "rust ms", "x rust"
    );
    for (name, lang, args, params) in cases {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (mut ours, mut rust) = (Vec::new(), Vec::new());
        let (mut a_sel, mut r_sel) = (0, 0);
        for _ in 0..RUNS {
            for (l, times, sel) in [
                (lang, &mut ours, &mut a_sel),
                ("rust", &mut rust, &mut r_sel),
            ] {
                let module = &modules[&(name.to_string(), l)];
                let (_, run) = nearstore::kernel::run_local(module, &file, &args, params, 0)
                    .unwrap_or_else(|e| panic!("{name} in {l}: {e:#}"));
                times.push(run.kernel_time.as_secs_f64() * 1e3);
                *sel = run.selected;
            }
        }
        assert_eq!(a_sel, r_sel, "{name}: {lang} and rust disagree");
        let (m, r) = (median(&ours).unwrap(), median(&rust).unwrap());
        println!("{name:<10} {lang:<15} {m:>10.2} {r:>10.2} {:>7.2}x", m / r);
    }
}
