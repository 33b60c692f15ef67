//! Queries over devices distributed by Apache DataFusion Ballista: a scheduler and two
//! executors, each its own `nearstore cluster` process, and three device processes with the
//! TPC-H tables dealt over them. The 22 TPC-H queries equal the single-host answers; a scan
//! reaches each device exactly once (the devices' query counters) even when Ballista packs
//! several of a scan's partitions into one task; both executors ran tasks, and each device's
//! scans ran on the executor that declared the device near it (the executors' logs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use nearstore_proto::PutMode;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::support::{DeviceProcess, cli_bin, connect_retry, free_port, rows, tpch_slices};

/// A `nearstore cluster …` process, killed when dropped.
struct ClusterProcess(Child);

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> ClusterProcess {
    let log = std::fs::File::create(log).unwrap();
    ClusterProcess(
        Command::new(cli_bin())
            .args(args)
            // The SDK logs each device scan (with the devices it reaches) at debug level; the
            // scheduler each executor's registration at info level.
            .env(
                "NEARSTORE_LOG",
                "warn,nearstore_sdk=debug,ballista_scheduler::scheduler_server::grpc=info",
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A scheduler and one executor of `tasks` slots per entry of `near` (the devices near it);
/// their logs and work directories under `dir`. A scan task waits for its device's executor
/// as long as the test runs, so placement is never traded for a free slot here.
struct Cluster {
    url: String,
    work_dirs: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    scheduler_log: PathBuf,
    _procs: Vec<ClusterProcess>,
}

impl Cluster {
    fn start(dir: &Path, near: &[Vec<String>], tasks: usize) -> Cluster {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let scheduler_log = dir.join("scheduler.log");
        let mut procs = vec![spawn(
            &[
                "cluster",
                "scheduler",
                "--listen",
                &listen,
                "--locality-wait-ms",
                "3600000",
            ],
            &scheduler_log,
        )];
        // The executors retry until the scheduler listens.
        let (mut work_dirs, mut logs) = (Vec::new(), Vec::new());
        for (i, devices) in near.iter().enumerate() {
            let work = dir.join(format!("executor-{i}"));
            let (flight, grpc) = (free_port().to_string(), free_port().to_string());
            let tasks = tasks.to_string();
            let id = format!("executor-{i}");
            let mut args = vec![
                "cluster",
                "executor",
                "--scheduler",
                &listen,
                "--flight-port",
                &flight,
                "--grpc-port",
                &grpc,
                "--tasks",
                &tasks,
                "--id",
                &id,
                "--work-dir",
                work.to_str().unwrap(),
            ];
            for d in devices {
                args.extend(["--near-device", d.as_str()]);
            }
            let log = dir.join(format!("executor-{i}.log"));
            procs.push(spawn(&args, &log));
            work_dirs.push(work);
            logs.push(log);
        }
        Cluster {
            url: format!("df://{listen}"),
            work_dirs,
            logs,
            scheduler_log,
            _procs: procs,
        }
    }

    /// Waits (up to 60 s) until every executor has registered with the scheduler. Until then
    /// a scan whose near executor is not live goes to any executor, as placement means it to
    /// (a query run while one executor was still starting, on a loaded machine, put a device's
    /// scan on the other and failed the placement check below).
    async fn registered(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.scheduler_log).unwrap_or_default();
            let n = text.matches("Received register executor request").count();
            if n >= self.logs.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} of {} executors registered in 60 s:\n{text}",
                self.logs.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { files(&p) } else { 1 }
        })
        .sum()
}

/// Three devices with every TPC-H table at SF 0.01 dealt over them in 5 000-row batches
/// (round robin; a small table lands on the first device only).
async fn dealt_tpch(devices: &[DeviceProcess]) {
    for t in nearstore_runtime::demo::TPCH_TABLES {
        let batches = tpch_slices(t, 0.01, 5000);
        for (k, d) in devices.iter().enumerate() {
            let mine: Vec<RecordBatch> = batches
                .iter()
                .skip(k)
                .step_by(devices.len())
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut c = connect_retry(&d.url, Duration::from_secs(30)).await;
            c.put_batches(t, PutMode::Create, mine).await.unwrap();
        }
    }
}

/// Each device's query counter.
async fn queries(devices: &[DeviceProcess]) -> Vec<u64> {
    let mut out = Vec::new();
    for d in devices {
        let mut c = connect_retry(&d.url, Duration::from_secs(10)).await;
        out.push(c.device_info().await.unwrap().queries);
    }
    out
}

/// Runs `q` on the cluster, retrying while the executors register (up to 60 s).
async fn on_cluster(ctx: &datafusion::prelude::SessionContext, q: &str) -> Vec<RecordBatch> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match async { ctx.sql(q).await?.collect().await }.await {
            Ok(b) => return b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not ready ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{q}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_on_a_ballista_cluster_equals_one_host() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let devices: Vec<DeviceProcess> = dirs
        .iter()
        .map(|d| DeviceProcess::start(d.path(), &[]))
        .collect();
    let urls: Vec<String> = devices.iter().map(|d| d.url.clone()).collect();
    dealt_tpch(&devices).await;
    let work = tempfile::tempdir().unwrap();
    // Executor 0 is near the first two devices, executor 1 near the third.
    let near = vec![urls[..2].to_vec(), urls[2..].to_vec()];
    let cluster = Cluster::start(work.path(), &near, 2);
    cluster.registered().await;
    let ctx = nearstore_ballista::connect(&cluster.url, &urls, &ClientOptions::default())
        .await
        .unwrap();
    let host = SqlSession::connect_many(&urls, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();

    // A plain scan of a table on three devices, with Ballista packing two of its three
    // partitions into one task: every row once, and each device asked once.
    let total = host.sql("select count(*) from lineitem").await.unwrap();
    let total = rows(&total.batches)[0].clone();
    on_cluster(&ctx, "set ballista.scheduler.max_partitions_per_task = 2").await;
    let before = queries(&devices).await;
    let scanned = on_cluster(&ctx, "select l_orderkey, l_linenumber from lineitem").await;
    let after = queries(&devices).await;
    let n: usize = scanned.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        n.to_string(),
        total,
        "rows of a plain scan over three devices"
    );
    let asked: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    assert_eq!(asked, vec![1, 1, 1], "queries each device ran for one scan");
    // The same for a pushed aggregate (one partition merging the three devices' partials).
    let before = queries(&devices).await;
    let counted = on_cluster(&ctx, "select count(*) from lineitem").await;
    let after = queries(&devices).await;
    assert_eq!(rows(&counted), vec![total.clone()]);
    let asked: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    assert_eq!(
        asked,
        vec![1, 1, 1],
        "queries each device ran for one pushed count"
    );
    on_cluster(&ctx, "set ballista.scheduler.max_partitions_per_task = 0").await;

    // The 22 queries: the cluster's answers are the single host's.
    let mut problems = Vec::new();
    for (name, q) in crate::sql::QUERIES {
        let want = rows(&host.sql(q).await.unwrap().batches);
        let got = match async { ctx.sql(q).await?.collect().await }.await {
            Ok(b) => rows(&b),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if got != want {
            problems.push(format!(
                "{name}: cluster {} rows, host {} rows; first cluster rows {:?}, host {:?}",
                got.len(),
                want.len(),
                got.iter().take(3).collect::<Vec<_>>(),
                want.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Both executors ran tasks (each task leaves its shuffle output in its work directory).
    for d in &cluster.work_dirs {
        assert!(files(d) > 0, "{} ran no task", d.display());
    }
    // Every partition of a scan of lineitem or orders (the tables on all three devices) ran
    // on the executor near its device, and each executor ran some. Not checked: a pushed
    // plan's scan (one partition reaching every device, run anywhere) and the build side of a
    // broadcast join (the small tables, on the first device only: DataFusion's collect-left
    // join runs it inside every task of the join's stage, on whichever executor the stage's
    // own partitions went to).
    for (log, mine) in cluster.logs.iter().zip(&near) {
        let text = std::fs::read_to_string(log).unwrap();
        let single = single_device_scans(&text, &urls);
        assert!(
            !single.is_empty(),
            "{} ran no single-device scan",
            log.display()
        );
        let elsewhere: Vec<&str> = single
            .iter()
            .filter(|(u, _)| !mine.contains(u))
            .map(|(_, line)| line.as_str())
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{} scanned devices it is not near: {elsewhere:?} (near {mine:?})",
            log.display()
        );
    }
}

/// The device of each scan of lineitem or orders in an executor's log that reached exactly
/// one of `urls`, with its log line.
fn single_device_scans(log: &str, urls: &[String]) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| {
            l.contains("device scan")
                && (l.contains("table=lineitem ") || l.contains("table=orders "))
        })
        .filter_map(|l| {
            let named: Vec<&String> = urls
                .iter()
                .filter(|u| l.contains(&format!("\"{u}\"")))
                .collect();
            match named.as_slice() {
                [one] => Some(((*one).clone(), l.to_string())),
                _ => None,
            }
        })
        .collect()
}
