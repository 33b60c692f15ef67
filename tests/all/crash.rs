//! Crash safety under a loop of SIGKILLs: the device is killed at a random moment while it
//! takes uploads (new tables and appends) and serves queries, then restarted, 50 times. After
//! every restart each acknowledged upload is intact (rows and content), an unacknowledged one is
//! either wholly there or wholly absent, scrub finds every checksum good, and no file outside
//! the catalog survives.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use nearstore_proto::{Plan, PutMode};
use nearstore_sdk::Client;

use crate::support::{DeviceProcess, connect_retry, make_batch, sum_ids};

const ITERATIONS: u32 = 50;

/// What a table must hold: its row count and the sum of its ids, or one of several
/// possibilities while an append's fate is unknown.
#[derive(Debug, Clone)]
struct Expect {
    options: Vec<(u64, i64)>,
}

async fn content(c: &mut Client, table: &str) -> (u64, i64) {
    let r = c.query(&Plan::scan(table)).await.unwrap();
    (r.num_rows() as u64, sum_ids(&r.batches))
}

async fn verify(c: &mut Client, dir: &std::path::Path, want: &mut BTreeMap<String, Expect>) {
    let tables = c.tables().await.unwrap();
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    for (name, exp) in want.iter_mut() {
        let got = if names.contains(name) {
            content(c, name).await
        } else {
            (0, 0)
        };
        assert!(
            exp.options.contains(&got),
            "table {name}: holds {got:?}, expected one of {:?}",
            exp.options
        );
        // Its fate is known now.
        exp.options = vec![got];
    }
    for n in &names {
        assert!(want.contains_key(n), "table {n} appeared from nowhere");
    }
    let scrub = c.scrub().await.unwrap();
    assert!(scrub.corrupt.is_empty(), "{:?}", scrub.corrupt);
    // Every object file belongs to a table; the temp directory was emptied at start-up.
    let objects: u64 = tables.iter().map(|t| t.objects.len() as u64).sum();
    let files = std::fs::read_dir(dir.join("objects")).unwrap().count() as u64;
    assert_eq!(files, 2 * objects, "object files outside the catalog");
    assert_eq!(scrub.objects_checked, objects);
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_fifty_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let mut want: BTreeMap<String, Expect> = BTreeMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut acknowledged = 0;
    let mut next_id = 0i64;
    for i in 0..ITERATIONS {
        let p = DeviceProcess::start(dir.path(), &[]);
        let mut c = connect_retry(&p.url, Duration::from_secs(30)).await;
        verify(&mut c, dir.path(), &mut want).await;

        // An upload of a new table and an append to `log`, each a few slow batches, and a
        // query loop, all racing the kill.
        let rows = 1_000 + next(20_000) as usize;
        let table = format!("t{i}");
        let batches: Vec<_> = (0..rows.div_ceil(4_000))
            .map(|k| {
                let n = 4_000.min(rows - k * 4_000);
                make_batch(next_id + (k * 4_000) as i64, n, i as u64)
            })
            .collect();
        next_id += rows as i64;
        let add = (rows as u64, sum_ids(&batches));
        want.insert(
            table.clone(),
            Expect {
                options: vec![(0, 0), add],
            },
        );
        let append = make_batch(next_id, 500, 99);
        next_id += 500;
        let before = want.get("log").map(|e| e.options[0]).unwrap_or((0, 0));
        let after = (
            before.0 + 500,
            before.1 + sum_ids(std::slice::from_ref(&append)),
        );
        want.insert(
            "log".into(),
            Expect {
                options: vec![before, after],
            },
        );

        let url = p.url.clone();
        let t = table.clone();
        let upload = tokio::spawn(async move {
            let mut c = connect_retry(&url, Duration::from_secs(5)).await;
            let slow = futures::stream::iter(batches).then(|b| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                b
            });
            c.put_stream(&t, PutMode::Create, slow).await
        });
        let url = p.url.clone();
        let appender = tokio::spawn(async move {
            let mut c = connect_retry(&url, Duration::from_secs(5)).await;
            c.put_batches("log", PutMode::Append, vec![append]).await
        });
        let url = p.url.clone();
        let reader = tokio::spawn(async move {
            let mut c = connect_retry(&url, Duration::from_secs(5)).await;
            for _ in 0..20 {
                if c.query(&Plan::scan("log")).await.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(next(120))).await;
        p.kill9();
        reader.await.unwrap();
        if upload.await.unwrap().is_ok() {
            want.get_mut(&table).unwrap().options = vec![add];
            acknowledged += 1;
        }
        if appender.await.unwrap().is_ok() {
            want.get_mut("log").unwrap().options = vec![after];
            acknowledged += 1;
        }
    }
    let p = DeviceProcess::start(dir.path(), &[]);
    let mut c = connect_retry(&p.url, Duration::from_secs(30)).await;
    verify(&mut c, dir.path(), &mut want).await;
    let present = want.values().filter(|e| e.options[0].0 > 0).count();
    eprintln!(
        "crash loop: {ITERATIONS} SIGKILLs survived; {acknowledged} uploads acknowledged, {present} tables present"
    );
    // The kills landed at different points: some uploads finished, some did not.
    assert!(acknowledged > 0, "no upload was ever acknowledged");
    assert!(
        acknowledged < 2 * ITERATIONS as usize,
        "no kill ever interrupted an upload"
    );
    assert!(p.terminate().success());
}
