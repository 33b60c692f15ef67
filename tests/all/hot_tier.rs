//! The hot-column tier (decoded column chunks in memory) answers exactly as the media does:
//! the same rows whether a row group comes from the decoder, is admitted on its second touch,
//! is served from memory, or was evicted for room; and after a replace, an append or a drop
//! no chunk of a deleted object stays behind (nor could one be served: chunks are keyed by
//! immutable object ids).

use arrow::array::RecordBatch;
use nearstore_proto::{AggFunc, BackendKind, CacheInfo, PutMode};
use nearstore_sdk::{Client, Query};

use crate::parallel::plans;
use crate::support::{TestDevice, rows, table_batches};

async fn cache(c: &mut Client) -> CacheInfo {
    c.device_info().await.unwrap().cache
}

/// Puts `batches` as table `t` on every client.
async fn put_on<const N: usize>(clients: [&mut Client; N], mode: PutMode, batches: &[RecordBatch]) {
    for c in clients {
        c.put_batches("t", mode, batches.to_vec()).await.unwrap();
    }
}

/// The parallel test's plans, and one whose filter ends inside row groups: the page index's
/// selection keeps part of them.
fn tier_plans(backend: BackendKind) -> Vec<(&'static str, nearstore_proto::Plan)> {
    let mut all = plans(backend);
    let pages = Query::table("t")
        .backend(backend)
        .filter("id >= 12345 AND id < 23456")
        .unwrap()
        .select(["id", "cat", "price"])
        .build();
    all.push(("page selection", pages));
    all
}

/// Every plan on `hot` three times (first touch, admission, hits) and once on `cold` (no
/// tier): the same rows each time. The third runs read nothing from the media when `warm`.
async fn agree(cold: &mut Client, hot: &mut Client, what: &str, warm: bool) {
    for backend in [BackendKind::Wasm, BackendKind::Native] {
        for (name, plan) in tier_plans(backend) {
            let want = cold.query(&plan).await.unwrap();
            assert_eq!(want.stats.cache_hit_bytes + want.stats.cache_miss_bytes, 0);
            for round in 0..3 {
                let got = hot.query(&plan).await.unwrap();
                let ctx = format!("{what}: {name} on {backend:?}, round {round}");
                assert!(
                    rows(&got.batches) == rows(&want.batches),
                    "{ctx}: rows differ"
                );
                assert_eq!(got.stats.rows_selected, want.stats.rows_selected, "{ctx}");
                // The page index's selection applies from memory too.
                assert_eq!(got.stats.rows_scanned, want.stats.rows_scanned, "{ctx}");
                let s = &got.stats;
                if round == 2 && warm && name != "LIMIT alone" && s.rows_total > 0 {
                    assert_eq!(s.cache_miss_bytes, 0, "{ctx}");
                    assert!(s.cache_hit_bytes > 0, "{ctx}");
                    assert_eq!(s.bytes_read_media, 0, "{ctx}: served from memory");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hot_tier_answers_as_the_media_and_keeps_nothing_of_deleted_objects() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cold = TestDevice::start_with(dirs[0].path(), |c| c.cache_mb = Some(0)).await;
    let hot = TestDevice::start_with(dirs[1].path(), |c| c.cache_mb = Some(256)).await;
    // 1 MiB holds a fraction of the table's chunks: admissions evict others all along.
    let tiny = TestDevice::start_with(dirs[2].path(), |c| c.cache_mb = Some(1)).await;
    let (mut c0, mut c1, mut c2) = (cold.client().await, hot.client().await, tiny.client().await);
    assert_eq!(cache(&mut c0).await, CacheInfo::default());
    // 125 000 rows in row groups of 10 000.
    let data = table_batches(125_000, 25_000, 21);
    put_on([&mut c0, &mut c1, &mut c2], PutMode::Create, &data).await;
    agree(&mut c0, &mut c1, "first load", true).await;
    agree(&mut c0, &mut c2, "1 MiB tier", false).await;
    let (h, t) = (cache(&mut c1).await, cache(&mut c2).await);
    assert!(
        h.chunks > 0 && h.hit_bytes > 0 && h.evicted_bytes == 0,
        "{h:?}"
    );
    // The metrics say what device_info does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _metrics = hot.device.serve_metrics(listener);
    let text = crate::tenants::http_get(addr, "/metrics").await;
    for (series, value) in [
        ("nearstore_cache_hit_bytes_total", h.hit_bytes),
        ("nearstore_cache_miss_bytes_total", h.miss_bytes),
        ("nearstore_cache_used_bytes", h.used_bytes),
        ("nearstore_cache_budget_bytes", 256 << 20),
    ] {
        assert_eq!(
            crate::tenants::metric(&text, series),
            value as f64,
            "{series}"
        );
    }
    assert!(t.evicted_bytes > 0 && t.used_bytes <= 1 << 20, "{t:?}");

    // Replace: the old objects' chunks leave with them; the new rows are served.
    let other = table_batches(90_000, 30_000, 22);
    put_on([&mut c0, &mut c1], PutMode::Replace, &other).await;
    let after = cache(&mut c1).await;
    assert_eq!((after.chunks, after.used_bytes), (0, 0), "{after:?}");
    agree(&mut c0, &mut c1, "after replace", true).await;

    // Append: the kept chunks stay valid and are used; the appended rows are read.
    let before = cache(&mut c1).await;
    let more = table_batches(20_000, 20_000, 23);
    put_on([&mut c0, &mut c1], PutMode::Append, &more).await;
    assert_eq!(cache(&mut c1).await.chunks, before.chunks);
    let count = Query::table("t")
        .filter("val >= 0")
        .unwrap()
        .aggregate(AggFunc::CountStar, None, "n")
        .unwrap()
        .build();
    let got = c1.query(&count).await.unwrap();
    assert_eq!(
        rows(&got.batches),
        rows(&c0.query(&count).await.unwrap().batches)
    );
    assert!(got.stats.cache_hit_bytes > 0 && got.stats.cache_miss_bytes > 0);
    agree(&mut c0, &mut c1, "after append", true).await;

    // Drop: nothing is kept; a new table of the same name is read afresh.
    c1.drop_table("t").await.unwrap();
    let dropped = cache(&mut c1).await;
    assert_eq!((dropped.chunks, dropped.used_bytes), (0, 0), "{dropped:?}");
    c0.drop_table("t").await.unwrap();
    let again = table_batches(40_000, 40_000, 24);
    put_on([&mut c0, &mut c1], PutMode::Create, &again).await;
    agree(&mut c0, &mut c1, "after drop and create", true).await;
    for d in [cold, hot, tiny] {
        d.stop().await;
    }
}

/// Row groups as large as the device writes by default (131 072 rows) with long strings in
/// view columns: a warm scan sends what a cold one does. (Slices of a kept row group's
/// arrays once made Flight split each batch by the whole row group's buffer sizes, and Arrow
/// IPC sent the strings' buffers again with every piece: 2.3x the bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_scan_sends_what_a_cold_one_does() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.write = nearstore_runtime::storage::WriteConfig::default();
        c.cache_mb = Some(256);
    })
    .await;
    // Twelve integer columns besides, and a view column whose strings all live in the views
    // (as TPC-H's flags): their slices' whole buffers make Flight split batches.
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("a", DataType::Utf8View, false),
        Field::new("b", DataType::Utf8View, false),
        Field::new("flag", DataType::Utf8View, false),
    ];
    fields.extend((0..12).map(|n| Field::new(format!("n{n}"), DataType::Int64, false)));
    let schema = Arc::new(Schema::new(fields));
    let batches: Vec<RecordBatch> = (0..4i64)
        .map(|k| {
            let ids: Vec<i64> = (k * 50_000..(k + 1) * 50_000).collect();
            let text = |tag: &str| -> ArrayRef {
                Arc::new(StringViewArray::from_iter_values(
                    ids.iter()
                        .map(|i| format!("{tag} row {i:>12} of the table, padded")),
                ))
            };
            let flags = ids.iter().map(|i| ["A", "N", "R"][(i % 3) as usize]);
            let mut cols = vec![
                Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                text("a"),
                text("b"),
                Arc::new(StringViewArray::from_iter_values(flags)),
            ];
            cols.extend((0..12).map(|n| {
                Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * n))) as ArrayRef
            }));
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        })
        .collect();
    let mut c = dev.client().await;
    c.put_batches("wide", PutMode::Create, batches)
        .await
        .unwrap();
    for plan in [
        Query::table("wide").build(),
        Query::table("wide").filter("id >= 0").unwrap().build(),
        Query::table("wide").filter("id < 150000").unwrap().build(),
    ] {
        let cold = c.query(&plan).await.unwrap();
        c.query(&plan).await.unwrap();
        let warm = c.query(&plan).await.unwrap();
        assert!(warm.stats.cache_hit_bytes > 0 && warm.stats.cache_miss_bytes == 0);
        assert_eq!(rows(&warm.batches), rows(&cold.batches));
        let (w, k) = (warm.stats.bytes_sent, cold.stats.bytes_sent);
        assert!(w <= k + k / 20 + 65_536, "warm sent {w} B, cold {k} B");
    }
    dev.stop().await;
}

/// 40 000 rows for [`warm_aggregates_leave_out_the_rows_the_predicate_rejects`]: `flag` a
/// string of three values and nulls (read as a dictionary when only grouped by), `g` five
/// integers, `v` null every 11th row, `small` from -40 to 56, `price` a nullable decimal, `f`
/// halves (sums exact in any order), `huge` a 38-digit decimal, 2·10^19 every tenth row (its
/// square leaves the type) and small otherwise.
fn skip_batch(start: i64, n: i64) -> arrow::array::RecordBatch {
    use arrow::array::{
        ArrayRef, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    };
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let ids: Vec<i64> = (start..start + n).collect();
    let flags = ["A", "N", "R"];
    let flag: StringArray = ids
        .iter()
        .map(|i| (i % 13 != 5).then(|| flags[(i * 7 % 3) as usize]))
        .collect();
    let v: Int64Array = ids
        .iter()
        .map(|i| (i % 11 != 0).then_some(i * 31 % 1000 - 500))
        .collect();
    let price = ids
        .iter()
        .map(|i| (i % 17 != 2).then_some(i128::from(i * 7 % 100_000)))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(12, 2)
        .unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("flag", DataType::Utf8, true),
        Field::new("g", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("small", DataType::Int32, false),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new("f", DataType::Float64, false),
        Field::new("huge", DataType::Decimal128(38, 0), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(flag),
        Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 5))),
        Arc::new(v),
        Arc::new(Int32Array::from_iter_values(
            ids.iter().map(|i| (i % 97) as i32 - 40),
        )),
        Arc::new(price),
        Arc::new(Float64Array::from_iter_values(
            ids.iter().map(|i| (i % 100) as f64 * 0.5),
        )),
        Arc::new(
            Decimal128Array::from_iter_values(ids.iter().map(|i| match i % 10 {
                3 => 20_000_000_000_000_000_000,
                _ => i128::from(i % 1000),
            }))
            .with_precision_and_scale(38, 0)
            .unwrap(),
        ),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

/// An aggregate served from the tier takes a batch most of whose rows pass unfiltered, the
/// rejected rows marked to be left out (`small < 40` keeps 80 of every 97): the answers equal
/// the host's (full transfer) grouped by a dictionary key, by two keys, by an integer key, and
/// without groups; with nulls, counts, sums, averages, minima and maxima, float sums and a
/// computed input. A computed input that overflows only on rejected rows (`huge < 1000`) still answers (the
/// kernel evaluates it on every row; the batch is then aggregated again on the kept rows
/// alone), while one that overflows on a kept row fails, served from the tier or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_aggregates_leave_out_the_rows_the_predicate_rejects() {
    let batches = (0..4).map(|i| skip_batch(i * 10_000, 10_000)).collect();
    let t = crate::support::OffloadAndHost::with_table_on("t", batches, |c| c.cache_mb = Some(256))
        .await;
    let queries = [
        "select flag, count(*) as n, count(v) as nv, sum(v) as sv, \
         avg(price) as ap, min(v) as lo, max(small) as hi, sum(f) as sf \
         from t where small < 40 group by flag order by flag",
        "select flag, g, count(*) as n, sum(price) as sp, count(price) as np \
         from t where small < 40 group by flag, g order by flag, g",
        "select g, count(*) as n, sum(price * 2) as sp, max(v) as hi from t \
         where small < 40 group by g order by g",
        "select count(*) as n, sum(v) as sv, min(price) as lo, sum(f) as sf from t \
         where small < 40",
        "select flag, sum(huge * huge) as s, count(*) as n from t \
         where huge < 1000 group by flag order by flag",
    ];
    for q in queries {
        // First touch, admission, then served from memory.
        for round in 0..3 {
            let r = t.agree(q, round).await;
            let st = &r.scans[0].1;
            assert!(st.placement.contains("aggregate=wasm"), "{q}: {st:?}");
            if round == 2 {
                assert_eq!(st.bytes_read_media, 0, "{q}: served from memory");
                assert!(st.rows_left_out > 0, "{q}: {st:?}");
                assert_eq!(
                    st.rows_scanned - st.rows_selected,
                    st.rows_left_out,
                    "{q}: every rejected row was left out, none filtered"
                );
            }
        }
    }
    // (2·10^19)^2 leaves Decimal128: a kept row that overflows fails the query, warm too.
    let q = "select flag, sum(huge * huge) as s from t \
             where huge < 30000000000000000000 group by flag";
    for round in 0..3 {
        let e = t.offload.sql(q).await.unwrap_err().to_string();
        assert!(
            e.to_lowercase().contains("overflow"),
            "{q} (round {round}): {e}"
        );
    }
    t.stop().await;
}

/// Chunk files in the file-backed tier's directory.
fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "chunk"))
        .collect();
    files.sort();
    files
}

/// The file-backed tier (`--pmem-dir`): a restarted device starts with the chunks it had
/// kept and serves its first queries from them, reading nothing from the media, with the same
/// rows as a device without a tier; a corrupted chunk file is rejected at start-up and its
/// chunk read from the media; a drop deletes the dropped table's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_file_backed_tier_survives_a_restart_and_serves_only_verified_chunks() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (data, pmem) = (dirs[1].path(), dirs[2].path());
    let start = || {
        TestDevice::start_with(data, |c| {
            c.cache_mb = Some(256);
            c.pmem_dir = Some(pmem.to_path_buf());
        })
    };
    let cold = TestDevice::start_with(dirs[0].path(), |c| c.cache_mb = Some(0)).await;
    let mut c0 = cold.client().await;
    let dev = start().await;
    let mut c1 = dev.client().await;
    let table = table_batches(125_000, 25_000, 31);
    put_on([&mut c0, &mut c1], PutMode::Create, &table).await;
    agree(&mut c0, &mut c1, "before the restart", true).await;
    let kept = cache(&mut c1).await;
    assert!(kept.chunks > 1, "{kept:?}");
    assert_eq!(
        chunk_files(pmem).len() as u64,
        kept.chunks,
        "one file a chunk"
    );
    drop(c1);
    dev.stop().await;

    // Restarted: every kept chunk is back, and the first run of every plan is served from them.
    let dev = start().await;
    let mut c1 = dev.client().await;
    let back = cache(&mut c1).await;
    assert_eq!(
        (
            back.chunks,
            back.pmem_restored_chunks,
            back.pmem_rejected_chunks
        ),
        (kept.chunks, kept.chunks, 0),
        "{back:?}"
    );
    for backend in [BackendKind::Wasm, BackendKind::Native] {
        for (name, plan) in tier_plans(backend) {
            let want = c0.query(&plan).await.unwrap();
            let got = c1.query(&plan).await.unwrap();
            let ctx = format!("after the restart: {name} on {backend:?}");
            assert!(
                rows(&got.batches) == rows(&want.batches),
                "{ctx}: rows differ"
            );
            let s = &got.stats;
            if name != "LIMIT alone" && s.rows_total > 0 {
                assert_eq!((s.cache_miss_bytes, s.bytes_read_media), (0, 0), "{ctx}");
            }
        }
    }
    drop(c1);
    dev.stop().await;

    // A bit flipped in one file's payload: that chunk is rejected and read from the media.
    let files = chunk_files(pmem);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    let dev = start().await;
    let mut c1 = dev.client().await;
    let back = cache(&mut c1).await;
    assert_eq!(
        (back.pmem_restored_chunks, back.pmem_rejected_chunks),
        (kept.chunks - 1, 1),
        "{back:?}"
    );
    assert!(!files[0].exists());
    agree(&mut c0, &mut c1, "after a corrupt chunk file", true).await;

    // A drop deletes the table's chunk files with its objects.
    c1.drop_table("t").await.unwrap();
    assert_eq!(chunk_files(pmem), Vec::<std::path::PathBuf>::new());
    drop(c1);
    dev.stop().await;
    cold.stop().await;

    // Without a memory tier there is nothing to write through: the device does not start.
    let mut config = nearstore_runtime::DeviceConfig::new(data);
    config.cache_mb = Some(0);
    config.pmem_dir = Some(pmem.to_path_buf());
    let err = nearstore_runtime::Device::open(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs --cache-mb above 0"), "{err}");
}
