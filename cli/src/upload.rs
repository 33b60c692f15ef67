//! Uploads: `nearstore put` (a Parquet file becomes a table) and `nearstore tpch` (TPC-H
//! tables generated on this host, streamed to the device).

use anyhow::{Context, Result};
use nearstore_proto::PutMode;

use crate::{ModeArg, PutArgs, TpchArgs, human_bytes, progress_bar};

pub(crate) async fn put(args: PutArgs) -> Result<()> {
    let bytes = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut client = args.device.connect().await?;
    let bar = progress_bar(bytes.len() as u64, "uploading", "{bytes}/{total_bytes}");
    let b = bar.clone();
    let mode = match args.mode {
        ModeArg::Create => PutMode::Create,
        ModeArg::Append => PutMode::Append,
        ModeArg::Replace => PutMode::Replace,
    };
    let summary = client
        .put_parquet(&args.table, mode, bytes.into(), move |n| b.set_position(n))
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    println!(
        "stored table {}: {} rows, {} bytes (object {})",
        summary.table, summary.rows, summary.bytes, summary.object
    );
    Ok(())
}

pub(crate) async fn tpch(args: TpchArgs) -> Result<()> {
    let tables: Vec<String> = if args.tables.is_empty() {
        nearstore_runtime::demo::TPCH_TABLES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.tables.clone()
    };
    let mut client = args.device.connect().await?;
    for t in tables {
        let total = nearstore_runtime::demo::approx_rows(&t, args.scale);
        let bar = progress_bar(total, &format!("uploading {t}"), "{pos}/{len} rows");
        let batches = nearstore_runtime::demo::tpch_batches(&t, args.scale)?;
        let b = bar.clone();
        // Generation is CPU work: run it on a blocking thread, feeding the upload stream.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let producer = tokio::task::spawn_blocking(move || -> Result<()> {
            for batch in batches {
                let batch = batch?;
                b.inc(batch.num_rows() as u64);
                if tx.blocking_send(batch).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let summary = client.put_stream(&t, PutMode::Replace, stream).await;
        producer.await??;
        bar.finish_and_clear();
        let summary = summary?;
        println!(
            "stored {t}: {} rows, {}",
            summary.rows,
            human_bytes(summary.bytes)
        );
    }
    Ok(())
}
