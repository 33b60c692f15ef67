//! The offload-vs-transfer gate: passes on honest results, fails on a wrong result (injected
//! through the harness's test hook) and on a missed threshold.

use nearstore::compare::{CompareArgs, run};

fn args() -> CompareArgs {
    CompareArgs {
        device: None,
        scale: 0.01,
        runs: 1,
        out: std::env::temp_dir(),
        check: true,
        min_q6_reduction: 100.0,
        baseline: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_passes_then_fails_on_a_wrong_result_and_a_missed_threshold() {
    let honest = run(&args(), None).await.unwrap();
    assert!(honest.failures.is_empty(), "{:?}", honest.failures);
    assert!(honest.queries.iter().all(|q| q.equal));
    let q6 = honest.queries.iter().find(|q| q.name == "tpch_q6").unwrap();
    assert!(q6.reduction > 1000.0, "{q6:?}");

    // A wrong offload result: one row dropped from a sweep query.
    let tamper = |name: &str, r: &mut nearstore_sdk::SqlResult| {
        if name == "sweep_narrow_0.01" {
            let b = r.batches.remove(0);
            r.batches.insert(0, b.slice(0, b.num_rows() - 1));
        }
    };
    let wrong = run(&args(), Some(&tamper)).await.unwrap();
    assert_eq!(wrong.failures.len(), 1, "{:?}", wrong.failures);
    assert!(wrong.failures[0].contains("sweep_narrow_0.01: results differ"));

    // A threshold nobody meets, and a baseline that the run regresses against.
    let mut strict = args();
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
