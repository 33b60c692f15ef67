//! `nearstore sql`: SQL over the device's tables (DataFusion on the host, pushdown to one or
//! more devices), its rows and, on request, each scan's statistics.

use std::time::Duration;

use anyhow::{Context, Result};
use nearstore_sdk::ClientOptions;

use crate::connect::read_ca;
use crate::{SqlArgs, format_stats, human_bytes, print_batches};

pub(crate) async fn sql(args: SqlArgs) -> Result<()> {
    let opts = ClientOptions {
        token: args.token.clone(),
        request_timeout: Duration::from_secs(args.timeout_secs),
        tls_ca_pem: read_ca(&args.tls_ca)?,
        compression: args.compression,
        ..Default::default()
    };
    if let Some(url) = &args.ballista {
        return on_cluster(url, &args, &opts).await;
    }
    let session = nearstore_sdk::SqlSession::connect_many(&args.devices, opts, args.mode)
        .await
        .with_context(|| format!("connecting to {}", args.devices.join(", ")))?;
    if args.explain {
        if args.mode == nearstore_sdk::Mode::Auto {
            let (m, why) = session.decide(&args.query).await?;
            println!("auto mode chooses {}: {why}", m.as_str());
        }
        println!("{}", session.explain(&args.query).await?);
        return Ok(());
    }
    let r = session.sql(&args.query).await?;
    print_batches(&r.batches, &r.schema, args.format)?;
    if args.stats {
        for (plan, s) in &r.scans {
            eprintln!("-- scan of {}: {}", plan.table, format_stats(s));
        }
        if r.mode == nearstore_sdk::Mode::RemoteScan {
            eprintln!(
                "-- {} rows; {} moved from the device in {} range reads of {} ranges (remote mode: \
                 the host's Parquet reader read the stored objects; {})",
                r.num_rows(),
                human_bytes(r.bytes_moved()),
                r.remote.calls,
                r.remote.ranges,
                r.reason
            );
        } else {
            eprintln!(
                "-- {} rows; {} moved from the device in {} scans ({} mode: {})",
                r.num_rows(),
                human_bytes(r.bytes_moved()),
                r.scans.len(),
                r.mode.as_str(),
                r.reason
            );
        }
    }
    Ok(())
}

/// The query run by a Ballista cluster over the devices' tables.
async fn on_cluster(url: &str, args: &SqlArgs, opts: &ClientOptions) -> Result<()> {
    if args.mode != nearstore_sdk::Mode::Offload {
        anyhow::bail!(
            "--ballista runs offload mode only (not {})",
            args.mode.as_str()
        );
    }
    let ctx = nearstore_ballista::connect(url, &args.devices, opts).await?;
    let query = if args.explain {
        format!("EXPLAIN {}", args.query)
    } else {
        args.query.clone()
    };
    let df = ctx.sql(&query).await.context("planning the query")?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .context("running the query on the cluster")?;
    print_batches(&batches, &schema, args.format)?;
    if args.stats {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        eprintln!(
            "-- {rows} rows from the Ballista cluster at {url} (the devices' scan statistics \
             are in their own counters: nearstore info)"
        );
    }
    Ok(())
}
