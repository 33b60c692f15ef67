//! The offload-vs-transfer harness: passes on honest results, fails on a wrong result
//! (injected through the harness's test hook) and on a missed threshold; shapes the link it
//! says it shapes; writes the JSON, the Markdown, the charts and the page.

use nearstore::compare::{CompareArgs, ReferenceChoice, render, run};

use crate::support::cli_bin;

fn args(links: Vec<f64>) -> CompareArgs {
    let mut a = CompareArgs::new(0.01, std::env::temp_dir());
    a.runs = 1;
    a.check = true;
    a.link_gbps = Some(links);
    // Reference engines only where the virtual environment already has them.
    a.reference = ReferenceChoice::Auto;
    a.device_bin = Some(cli_bin());
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_fails_when_a_reference_engine_disagrees_on_a_value() {
    // The pinned engines: installed by the CI gate before the tests run, or installed here.
    let mut a = args(vec![]);
    a.reference = ReferenceChoice::Install;
    // Q6's revenue 1 % too high: same row count, a different value.
    let tamper = |name: &str, r: &mut nearstore_sdk::SqlResult| {
        use arrow::array::AsArray;
        if name != "tpch_q6" {
            return;
        }
        let b = &r.batches[0];
        let col = b
            .column(0)
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        let (p, s) = (col.precision(), col.scale());
        let bumped = col
            .unary::<_, arrow::datatypes::Decimal128Type>(|v| v + v / 100)
            .with_precision_and_scale(p, s)
            .unwrap();
        r.batches[0] =
            arrow::array::RecordBatch::try_new(b.schema(), vec![std::sync::Arc::new(bumped)])
                .unwrap();
    };
    let report = run(&a, Some(&tamper)).await.unwrap();
    for engine in ["duckdb", "datafusion"] {
        assert!(
            report.engines.contains_key(engine),
            "{engine} did not run: {:?}",
            report.reference_note
        );
    }
    for q in &report.queries {
        for (engine, e) in &q.reference {
            let want = q.name != "tpch_q6";
            assert_eq!(e.values_equal, Some(want), "{} by {engine}", q.name);
            assert!(e.cold_ms > 0.0 && e.ms > 0.0, "{} by {engine}", q.name);
        }
    }
    // DuckDB timed alternately with a device of its own, each query; the DuckDB targets
    // read those figures.
    let side = report.versus.as_ref().unwrap_or_else(|| {
        panic!(
            "DuckDB did not run side by side: {:?}",
            report.reference_note
        )
    });
    assert_eq!(side.queries.len(), report.queries.len());
    for (w, q) in side.queries.iter().zip(&report.queries) {
        assert_eq!(w.name, q.name);
        assert!(w.a_ms > 0.0 && w.b_ms > 0.0, "{}: {w:?}", w.name);
        assert_eq!(w.equal, q.name != "tpch_q6", "{}", w.name);
    }
    // And at 1 thread and 1 worker when the device has more: four targets at each count.
    let counts = if report.workers > 1 {
        let single = report.versus_single.as_ref().expect("a 1-thread section");
        assert_eq!(single.queries.len(), report.queries.len());
        assert!(single.queries.iter().all(|w| w.a_ms > 0.0 && w.b_ms > 0.0));
        2
    } else {
        assert!(report.versus_single.is_none());
        1
    };
    let duck_targets: Vec<_> = report
        .targets
        .iter()
        .filter(|t| t.target.contains("at most DuckDB's"))
        .collect();
    assert_eq!(duck_targets.len(), 4 * counts, "{:?}", report.targets);
    if counts == 2 {
        assert!(
            duck_targets
                .iter()
                .any(|t| t.target.contains(", 1 thread, ")),
            "{duck_targets:?}"
        );
    }
    assert!(
        duck_targets.iter().all(|t| t.met.is_some()),
        "{duck_targets:?}"
    );
    assert!(render::markdown(&report).contains("## DuckDB against the device, side by side"));
    for engine in ["duckdb", "datafusion"] {
        let needle = format!("tpch_q6: {engine}'s values differ");
        assert!(
            report.failures.iter().any(|f| f.starts_with(&needle)),
            "{:?}",
            report.failures
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_passes_then_fails_on_a_wrong_result_and_a_missed_threshold() {
    let honest = run(&args(vec![10.0]), None).await.unwrap();
    assert!(honest.failures.is_empty(), "{:?}", honest.failures);
    assert!(honest.queries.iter().all(|q| q.equal));
    let q6 = honest.queries.iter().find(|q| q.name == "tpch_q6").unwrap();
    assert!(q6.reduction > 1000.0, "{q6:?}");
    assert_eq!(honest.table_rows, 60175);

    // Over the emulated 10 Gb/s link no query can finish before its bytes could have crossed
    // it: a lower bound that holds however noisy the machine.
    for q in &honest.queries {
        let s = &q.shaped[0];
        assert_eq!(s.link_gbps, 10.0);
        assert!(s.equal, "{}", q.name);
        let floor_ms = |bytes: u64| bytes as f64 * 8.0 / 10e9 * 1e3;
        assert!(
            s.transfer_ms >= floor_ms(q.transfer.bytes_moved),
            "{}: {} ms for {} B",
            q.name,
            s.transfer_ms,
            q.transfer.bytes_moved
        );
        assert!(
            s.offload_ms >= floor_ms(q.offload.bytes_moved),
            "{}",
            q.name
        );
        // The remote scan (the host's Parquet reader on the device's file) read byte ranges,
        // sent no plan, and could not beat its own bytes over the link either.
        assert!(q.remote.calls > 0 && q.remote.bytes_moved > 0, "{}", q.name);
        assert!(s.remote_ms >= floor_ms(q.remote.bytes_moved), "{}", q.name);
        assert!(q.offload.min_ms <= q.offload.wall_ms && q.offload.wall_ms <= q.offload.max_ms);
        // The device's time for the call contains the executor's.
        assert!(
            q.offload.device_ms >= q.offload.executor_ms && q.offload.executor_ms > 0.0,
            "{}: {:?}",
            q.name,
            q.offload
        );
        assert!(!q.crossover.is_empty(), "{}", q.name);
        // The result size the data-movement target is measured against.
        assert!(q.result_ipc_bytes > 0 || q.rows == 0, "{}", q.name);
        assert!(q.offload.host_cpu_ms >= 0.0 && q.offload.device_cpu_ms.is_some());
    }
    // Auto ran every query on every link (its answers equal the others', in `equal`); its
    // first run decided, and paid for it.
    for q in &honest.queries {
        let choices = std::iter::once(&q.auto).chain(q.shaped.iter().map(|s| &s.auto));
        for a in choices {
            let a = a
                .as_ref()
                .unwrap_or_else(|| panic!("{}: no Auto choice", q.name));
            assert!(
                ["offload", "remote", "transfer"].contains(&a.mode.as_str()),
                "{a:?}"
            );
            assert!(
                a.regret > 0.0 && a.first_regret > 0.0 && a.decide_ms > 0.0,
                "{}: {a:?}",
                q.name
            );
            assert!(a.reason.contains("predicted offload"), "{a:?}");
        }
    }
    let wide = honest
        .queries
        .iter()
        .find(|q| q.name == "sweep_wide_1")
        .unwrap();
    assert!(wide.shaped[0].transfer_ms >= 10.0, "{wide:?}"); // 12.6 MB at 10 Gb/s

    // The outputs a person reads.
    let out = tempfile::tempdir().unwrap();
    render::write_all(&honest, out.path()).unwrap();
    let back: nearstore::compare::Report =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    // Same content (floats round-trip through JSON text to within a unit in the last place).
    assert_eq!(back.version, nearstore::compare::REPORT_VERSION);
    assert_eq!(back.queries.len(), honest.queries.len());
    for (a, b) in back.queries.iter().zip(&honest.queries) {
        assert_eq!((&a.name, a.rows, a.equal), (&b.name, b.rows, b.equal));
        assert_eq!(a.offload.bytes_moved, b.offload.bytes_moved);
        assert_eq!(a.shaped.len(), b.shaped.len());
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains(&format!(
            "| tpch_q6 | 1 | yes | {} | {} |",
            q6.offload.bytes_moved, q6.remote.bytes_moved
        )),
        "{md}"
    );
    assert!(md.contains("speedup @10 Gb/s"));
    assert!(md.contains("## Offload vs remote scan"));
    assert!(md.contains("## Auto's choices") && md.contains("Worst regret: "));
    assert!(md.contains("winner @10 Gb/s"));
    let series = [
        (
            "crossover.svg",
            ["tpch_q6", "tpch_q1", "top_k", "equal time"],
        ),
        (
            "bytes_moved.svg",
            [
                "offload, narrow projection",
                "full transfer, narrow projection",
                "offload, wide projection",
                "full transfer, wide projection",
            ],
        ),
        (
            "time_narrow.svg",
            [
                "offload, loopback",
                "full transfer, loopback",
                "offload, 10 Gb/s link",
                "full transfer, 10 Gb/s link",
            ],
        ),
    ];
    for chart in render::CHARTS {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
        for (name, labels) in &series {
            if *name == chart {
                for l in labels {
                    assert!(svg.contains(l), "{chart} lacks the series {l}");
                }
            }
        }
    }
    let page = std::fs::read_to_string(out.path().join("index.html")).unwrap();
    for chart in render::CHARTS {
        assert!(page.contains(&format!("<img src=\"{chart}\"")));
    }
    assert!(page.contains("TPC-H Q6 offloaded moved "), "{page}");
    assert!(page.contains("Against a remote scan"), "{page}");

    // A wrong offload result: one row dropped from a sweep query.
    let tamper = |name: &str, r: &mut nearstore_sdk::SqlResult| {
        if name == "sweep_narrow_0.01" {
            let b = r.batches.remove(0);
            r.batches.insert(0, b.slice(0, b.num_rows() - 1));
        }
    };
    let mut no_refs = args(vec![]);
    no_refs.reference = ReferenceChoice::Off;
    let wrong = run(&no_refs, Some(&tamper)).await.unwrap();
    assert_eq!(wrong.failures.len(), 1, "{:?}", wrong.failures);
    assert!(wrong.failures[0].contains("sweep_narrow_0.01: results differ"));

    // A threshold nobody meets, and a baseline that the run regresses against.
    let mut strict = no_refs.clone();
    strict.min_q6_reduction = 1e12;
    let dir = tempfile::tempdir().unwrap();
    let mut base = honest.clone();
    for q in &mut base.queries {
        q.reduction *= 10.0;
    }
    let base_path = dir.path().join("baseline.json");
    std::fs::write(&base_path, serde_json::to_vec(&base).unwrap()).unwrap();
    strict.baseline = Some(base_path);
    let missed = run(&strict, None).await.unwrap();
    assert!(
        missed
            .failures
            .iter()
            .any(|f| f.contains("below the threshold")),
        "{:?}",
        missed.failures
    );
    assert!(
        missed.failures.iter().any(|f| f.contains("regressed")),
        "{:?}",
        missed.failures
    );
}

#[tokio::test]
async fn link_shaping_needs_a_started_device_and_positive_rates() {
    let mut a = args(vec![1.0]);
    a.device = Some("grpc://127.0.0.1:1".into());
    let e = run(&a, None).await.unwrap_err().to_string();
    assert!(
        e.contains("--link-gbps needs the device the harness starts"),
        "{e}"
    );
    let e = run(&args(vec![0.0]), None).await.unwrap_err().to_string();
    assert!(e.contains("positive rates"), "{e}");
}
