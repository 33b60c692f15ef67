//! Wasm filter, aggregate and computed-column kernels against the native backend on the same
//! decoded batches (epoch interruption on, as on the device), the cost of setting up a kernel
//! for a query, and the emulated FPGA's modelled against measured time.
//!
//! `cargo bench -p nearstore-benches --bench kernels` (release profile; not part of CI).

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nearstore_proto::Expr;
use nearstore_runtime::compute::fpga::{FpgaBackend, TimingModel};
use nearstore_runtime::compute::native::NativeBackend;
use nearstore_runtime::compute::wasm::{SandboxConfig, WasmBackend};
use nearstore_runtime::compute::{ComputeBackend, ComputeSession};
use nearstore_runtime::plan::{Binder, PhysExpr};

const ROWS: usize = 8192;
const BATCHES: usize = 32;

fn batches() -> Vec<RecordBatch> {
    let mut next = nearstore_benches::xorshift(0x9E37_79B9_7F4A_7C15u64);
    (0..BATCHES)
        .map(|_| {
            let ship: Date32Array = (0..ROWS)
                .map(|_| Some(8035 + (next() % 2526) as i32))
                .collect();
            let disc = (0..ROWS)
                .map(|_| Some((next() % 11) as i128))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap();
            let qty = (0..ROWS)
                .map(|_| Some(100 * (1 + (next() % 50)) as i128))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap();
            let k: Int64Array = (0..ROWS).map(|_| Some((next() % 10_000) as i64)).collect();
            let f: Float64Array = (0..ROWS).map(|_| Some((next() % 10_000) as f64)).collect();
            let wide: Int64Array = (0..ROWS).map(|_| Some((next() % 200_000) as i64)).collect();
            // Values over the whole 64-bit range: nothing to narrow.
            let full: Int64Array = (0..ROWS).map(|_| Some(next() as i64)).collect();
            RecordBatch::try_from_iter(vec![
                ("l_shipdate", Arc::new(ship) as ArrayRef),
                ("l_discount", Arc::new(disc) as ArrayRef),
                ("l_quantity", Arc::new(qty) as ArrayRef),
                ("k", Arc::new(k) as ArrayRef),
                ("f", Arc::new(f) as ArrayRef),
                ("g", Arc::new(wide) as ArrayRef),
                ("w", Arc::new(full) as ArrayRef),
            ])
            .unwrap()
        })
        .collect()
}

/// Whether the printed (non-criterion) part `name` runs: with no filter on the command line, or
/// a filter that `name` contains (`cargo bench … -- paired`), as criterion selects its own.
fn selected(name: &str) -> bool {
    // Criterion's options that take a value; any other argument not starting with `-` is a
    // filter.
    const WITH_VALUE: [&str; 14] = [
        "--profile-time",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
        "--nresamples",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with('-') && (*i == 0 || !WITH_VALUE.contains(&args[i - 1].as_str()))
        })
        .map(|(_, a)| a)
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn bind(batch: &RecordBatch, text: &str) -> PhysExpr {
    let schema = batch.schema();
    Binder::new("bench", &schema)
        .bind_bool(&Expr::parse(text).unwrap())
        .unwrap()
}

/// The benchmarked filters.
const FILTERS: [(&str, &str); 5] = [
    (
        "q6",
        "l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
    ),
    ("int64_lt_1pct", "k < 100"),
    ("int64_lt_50pct", "k < 5000"),
    ("int64_full_range_lt_50pct", "w < 0"),
    ("float64_gt_50pct", "f > 4999.5"),
];

/// The benchmarked aggregations: name and group column.
const AGGREGATIONS: [(&str, Option<&str>); 3] = [
    ("ungrouped", None),
    ("grouped_10k", Some("k")),
    ("grouped_200k", Some("g")),
];

fn filters(c: &mut Criterion) {
    let data = batches();
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    for (name, text) in FILTERS {
        let pred = bind(&data[0], text);
        let mut g = c.benchmark_group(format!("filter/{name}"));
        g.throughput(Throughput::Elements((ROWS * BATCHES) as u64));
        let backends: [(&str, &dyn ComputeBackend); 2] =
            [("native", &NativeBackend), ("wasm", &wasm)];
        for (label, backend) in backends {
            let mut session: Box<dyn ComputeSession> = backend.open().unwrap();
            g.bench_function(label, |b| {
                b.iter(|| {
                    let mut selected = 0;
                    for batch in &data {
                        selected += session.filter(&pred, batch).unwrap().true_count();
                    }
                    black_box(selected)
                })
            });
        }
        g.finish();
    }
}

/// The emulated FPGA: its modelled time (timing model) against the host time the emulation
/// takes, one pass over the batches per filter. Printed, not a criterion measurement: the
/// modelled figure is what a real device of those parameters would need.
fn fpga_model(_c: &mut Criterion) {
    if !selected("fpga_model") {
        return;
    }
    let data = batches();
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let fpga = FpgaBackend::new(TimingModel::default(), wasm).unwrap();
    println!(
        "\nemulated FPGA ({:?}), {} rows per pass:",
        TimingModel::default(),
        ROWS * BATCHES
    );
    println!("| filter | modelled µs | emulation µs (host) |\n|---|---:|---:|");
    for (name, text) in [
        (
            "q6",
            "l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
        ),
        ("int64_lt_50pct", "k < 5000"),
    ] {
        let pred = bind(&data[0], text);
        let mut samples = Vec::new();
        let mut modelled = 0.0;
        for _ in 0..5 {
            let mut s = fpga.open().unwrap();
            let t = std::time::Instant::now();
            for batch in &data {
                black_box(s.filter(&pred, batch).unwrap());
            }
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            modelled = s.report().modelled_us;
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "| {name} | {modelled:.0} | {:.0} |",
            samples[samples.len() / 2]
        );
    }
    // The aggregate engine: sum, max and count(*), without groups and over 10 000 groups.
    use nearstore_runtime::exec::aggregate::HashAggregator;
    let schema = data[0].schema();
    let binder = Binder::new("bench", &schema);
    let aggs = bench_aggregates(&binder);
    let eval = |e: &PhysExpr, b: &RecordBatch| NativeBackend.open().unwrap().evaluate(e, b);
    println!("| aggregate | modelled µs | emulation µs (host) | fell back |\n|---|---:|---:|---|");
    for (name, group_by) in [
        ("ungrouped", vec![]),
        ("grouped_10k", vec![binder.column("k").unwrap()]),
    ] {
        let mut samples = Vec::new();
        let (mut modelled, mut fallbacks) = (0.0, 0);
        for _ in 0..5 {
            let session = Arc::new(std::sync::Mutex::new(fpga.open().unwrap()));
            let mut h = HashAggregator::new(group_by.clone(), aggs.clone()).unwrap();
            h.offload_to(session.clone());
            let t = std::time::Instant::now();
            for batch in &data {
                h.update(batch, None, &eval).unwrap();
            }
            black_box(h.finish().unwrap());
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            let report = session.lock().unwrap().report();
            modelled = report.modelled_us;
            fallbacks = report.fallbacks;
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "| {name} | {modelled:.0} | {:.0} | {} |",
            samples[samples.len() / 2],
            if fallbacks > 0 {
                "yes (more groups than accumulators)"
            } else {
                "no"
            }
        );
    }
}

/// The aggregates both aggregate benchmarks compute: sum of a decimal, max of a float,
/// count(*).
fn bench_aggregates(binder: &Binder) -> Vec<nearstore_runtime::plan::AggSpec> {
    use nearstore_proto::AggFunc;
    use nearstore_runtime::plan::AggSpec;
    vec![
        AggSpec {
            func: AggFunc::Sum,
            input: Some(binder.column("l_quantity").unwrap()),
            name: "s".into(),
        },
        AggSpec {
            func: AggFunc::Max,
            input: Some(binder.column("f").unwrap()),
            name: "m".into(),
        },
        AggSpec {
            func: AggFunc::CountStar,
            input: None,
            name: "n".into(),
        },
    ]
}

/// One aggregation over all of `data`: native accumulators, or offloaded to a fresh session of
/// `offload` (group ids are computed on the host in both cases).
fn aggregate_pass(
    group_by: &[PhysExpr],
    aggs: &[nearstore_runtime::plan::AggSpec],
    data: &[RecordBatch],
    offload: Option<&WasmBackend>,
) {
    use nearstore_runtime::exec::aggregate::HashAggregator;
    let eval = |e: &PhysExpr, b: &RecordBatch| NativeBackend.open().unwrap().evaluate(e, b);
    let mut h = HashAggregator::new(group_by.to_vec(), aggs.to_vec()).unwrap();
    if let Some(wasm) = offload {
        h.offload_to(Arc::new(std::sync::Mutex::new(wasm.open().unwrap())));
    }
    for batch in data {
        h.update(batch, None, &eval).unwrap();
    }
    black_box(h.finish().unwrap());
}

/// Aggregation: native accumulators against the Wasm kernel (group ids are computed on the
/// host in both cases).
fn aggregates(c: &mut Criterion) {
    let data = batches();
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let schema = data[0].schema();
    let binder = Binder::new("bench", &schema);
    let aggs = bench_aggregates(&binder);
    for (name, group) in AGGREGATIONS {
        let group_by: Vec<PhysExpr> = group
            .map(|g| binder.column(g).unwrap())
            .into_iter()
            .collect();
        let mut g = c.benchmark_group(format!("aggregate/{name}"));
        g.throughput(Throughput::Elements((ROWS * BATCHES) as u64));
        for (label, offload) in [("native", None), ("wasm", Some(&wasm))] {
            g.bench_function(label, |b| {
                b.iter(|| aggregate_pass(&group_by, &aggs, &data, offload))
            });
        }
        g.finish();
    }
}

/// The benchmarked computed columns.
const PROJECTIONS: [(&str, &str); 3] = [
    ("decimal_q1", "l_quantity * (1 - l_discount)"),
    ("int64", "k * 3 - k"),
    ("float64", "f * 2.5 - f"),
];

/// Computed columns: the native backend's Arrow arithmetic against the Wasm kernel's
/// expression program, on the same batches.
fn projections(c: &mut Criterion) {
    let data = batches();
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let schema = data[0].schema();
    let binder = Binder::new("bench", &schema);
    for (name, text) in PROJECTIONS {
        let e = binder.bind(&Expr::parse(text).unwrap()).unwrap();
        let mut g = c.benchmark_group(format!("project/{name}"));
        g.throughput(Throughput::Elements((ROWS * BATCHES) as u64));
        g.bench_function("native", |b| {
            let mut s = NativeBackend.open().unwrap();
            b.iter(|| {
                for batch in &data {
                    black_box(s.evaluate(&e, batch).unwrap());
                }
            })
        });
        g.bench_function("wasm", |b| {
            let mut s = wasm.open().unwrap();
            b.iter(|| {
                for batch in &data {
                    black_box(s.evaluate(&e, batch).unwrap());
                }
            })
        });
        g.finish();
    }
}

/// Wasm against native throughput, measured in alternation (native pass, Wasm pass, 15
/// rounds) so that drift on a shared machine falls on both alike: the median of the rounds'
/// ratios, printed as a table. Criterion's figures above time one side after the other.
fn paired_ratios(_c: &mut Criterion) {
    if !selected("paired_ratios") {
        return;
    }
    const ROUNDS: usize = 15;
    let data = batches();
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let schema = data[0].schema();
    let binder = Binder::new("bench", &schema);
    let aggs = bench_aggregates(&binder);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Seconds for `reps` passes of `pass`.
    let time = |reps: usize, pass: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            pass();
        }
        t.elapsed().as_secs_f64()
    };
    let report = |name: &str, native: Vec<f64>, wasm: Vec<f64>| {
        let ratios = native.iter().zip(&wasm).map(|(n, w)| n / w).collect();
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x |",
            median(native) * 1e6,
            median(wasm) * 1e6,
            median(ratios)
        );
    };
    println!(
        "\nWasm / native throughput, alternating, median of {ROUNDS} rounds (>1: Wasm faster):"
    );
    println!("| case | native µs | wasm µs | wasm/native throughput |\n|---|---:|---:|---:|");
    // Seconds per pass of `op` over the batches, native then Wasm each round (a pass timed
    // over ten).
    let alternate = |op: &dyn Fn(&mut dyn ComputeSession, &RecordBatch)| {
        let mut sessions = [NativeBackend.open().unwrap(), wasm.open().unwrap()];
        let mut samples = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (s, out) in sessions.iter_mut().zip(samples.iter_mut()) {
                out.push(
                    time(10, &mut || {
                        for batch in &data {
                            op(&mut **s, batch);
                        }
                    }) / 10.0,
                );
            }
        }
        samples
    };
    for (name, text) in FILTERS {
        let pred = bind(&data[0], text);
        let [n, w] = alternate(&|s, batch| {
            black_box(s.filter(&pred, batch).unwrap());
        });
        report(&format!("filter/{name}"), n, w);
    }
    for (name, group) in AGGREGATIONS {
        let group_by: Vec<PhysExpr> = group
            .map(|g| binder.column(g).unwrap())
            .into_iter()
            .collect();
        let mut samples = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (offload, out) in [None, Some(&wasm)].into_iter().zip(samples.iter_mut()) {
                out.push(time(1, &mut || {
                    aggregate_pass(&group_by, &aggs, &data, offload)
                }));
            }
        }
        let [n, w] = samples;
        report(&format!("aggregate/{name}"), n, w);
    }
    for (name, text) in PROJECTIONS {
        let e = binder.bind(&Expr::parse(text).unwrap()).unwrap();
        let [n, w] = alternate(&|s, batch| {
            black_box(s.evaluate(&e, batch).unwrap());
        });
        report(&format!("project/{name}"), n, w);
    }
}

fn setup(c: &mut Criterion) {
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    c.bench_function("kernel_setup/wasm_session_cached_module", |b| {
        b.iter(|| black_box(wasm.open().unwrap()))
    });
}

criterion_group!(
    benches,
    filters,
    aggregates,
    projections,
    setup,
    fpga_model,
    paired_ratios
);
criterion_main!(benches);
