//! The Flight SQL gateway's overhead: TPC-H Q6 and a 1 %-selective scan (TPC-H lineitem at
//! scale factor 0.1 on a device in this process) through `nearstore gateway` (Flight SQL:
//! `GetFlightInfo` runs the statement, `DoGet` fetches it) against the SDK's SQL session
//! directly, as `nearstore sql` runs it (a session opened per statement in both). Medians of 5,
//! the two alternating; each timer is the client's wall time from the statement to its last
//! batch.
//!
//! `cargo bench -p nearstore-benches --bench gateway` (release profile; not part of CI).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use nearstore::gateway::Gateway;
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let device = Device::open(&DeviceConfig::new(dir.path()))?;
        let d = device.clone();
        tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.1, &|_, _| {})).await??;
        let server = device.serve_local().await?;
        let url = server.url.clone();

        let gateway = Gateway::new(
            vec![url.clone()],
            Mode::Offload,
            ClientOptions::default(),
            HashMap::new(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(nearstore::gateway::serve(
            gateway,
            listener,
            None,
            std::future::pending(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut flight_sql = FlightSqlServiceClient::new(channel);

        // 1 % of the orders: the harness's sweep at that selectivity.
        let max_key: i64 = {
            let s = SqlSession::connect(&url, ClientOptions::default(), Mode::Offload).await?;
            let r = s.sql("select max(l_orderkey) as k from lineitem").await?;
            arrow::util::display::array_value_to_string(r.batches[0].column(0), 0)?.parse()?
        };
        let queries = [
            (
                "tpch_q6",
                "select sum(l_extendedprice * l_discount) as revenue from lineitem where \
                 l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01' and \
                 l_discount between 0.05 and 0.07 and l_quantity < 24"
                    .to_string(),
            ),
            (
                "scan_1pct",
                format!(
                    "select l_orderkey, l_quantity from lineitem where l_orderkey <= {}",
                    max_key / 100
                ),
            ),
        ];
        println!("query | nearstore sql ms | gateway ms | overhead");
        for (name, sql) in &queries {
            let (mut direct, mut through) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let t = Instant::now();
                let s = SqlSession::connect(&url, ClientOptions::default(), Mode::Offload).await?;
                let rows_direct = s.sql(sql).await?.num_rows();
                direct.push(t.elapsed());

                let t = Instant::now();
                let info = flight_sql.execute(sql.clone(), None).await?;
                let mut rows_gateway = 0;
                for endpoint in info.endpoint {
                    let ticket = endpoint.ticket.expect("a ticket");
                    let batches: Vec<_> = flight_sql.do_get(ticket).await?.try_collect().await?;
                    rows_gateway += batches.iter().map(|b| b.num_rows()).sum::<usize>();
                }
                through.push(t.elapsed());
                anyhow::ensure!(rows_direct == rows_gateway, "{name}: the row counts differ");
            }
            let (a, b) = (median(direct), median(through));
            println!("{name} | {a:.1} | {b:.1} | {:.2}x", b / a);
        }
        server.stop().await?;
        Ok(())
    })
}
