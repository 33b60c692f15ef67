//! Uploads (`DoPut`): the first message's descriptor names the table and the format; Arrow
//! batches are decoded from the stream, raw Parquet is spooled to a file and decoded; either
//! way the batches go to a storage upload on a blocking thread, committed at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use nearstore_proto::{PutCommand, PutFormat};
use tonic::Streaming;

use super::{DeviceService, Principal, UPLOAD_BYTES_MAX};
use crate::error::{Error, Result};
use crate::storage::Storage;

impl DeviceService {
    pub(super) async fn put(
        &self,
        who: &Principal,
        mut input: Streaming<FlightData>,
    ) -> Result<nearstore_proto::PutSummary> {
        let first = input
            .message()
            .await
            .map_err(|s| Error::InvalidUpload(format!("upload stream failed: {}", s.message())))?
            .ok_or_else(|| Error::InvalidUpload("empty upload stream".into()))?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Error::InvalidUpload("the first message carries no descriptor".into())
        })?;
        let cmd: PutCommand = serde_json::from_slice(&descriptor.cmd).map_err(|e| {
            Error::InvalidUpload(format!("descriptor command is not a put command: {e}"))
        })?;
        if cmd.table.contains('/') {
            return Err(Error::InvalidUpload(format!(
                "table name '{}' must be 1-128 characters of [A-Za-z0-9_.-]",
                cmd.table
            )));
        }
        let upload = self
            .storage()
            .begin_upload(&who.scope(&cmd.table)?, cmd.mode)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
        let writer = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut upload = upload;
            for batch in rx {
                upload.write(&batch)?;
            }
            Ok(upload)
        });

        let fed = match cmd.format {
            PutFormat::Arrow => feed_arrow(first, input, &tx).await,
            PutFormat::Parquet => feed_parquet(first, input, &tx, self.storage()).await,
        };
        drop(tx);
        let upload = writer
            .await
            .map_err(|e| Error::Internal(format!("upload writer panicked: {e}")))?;
        // A writer error explains a failed feed better than the closed channel it caused.
        let upload = match (fed, upload) {
            (_, Err(e)) => return Err(e),
            (Err(e), _) => return Err(e),
            (Ok(()), Ok(u)) => u,
        };
        tokio::task::spawn_blocking(move || upload.commit())
            .await
            .map_err(|e| Error::Internal(format!("upload commit panicked: {e}")))?
    }
}

async fn feed_arrow(
    first: FlightData,
    rest: Streaming<FlightData>,
    tx: &std::sync::mpsc::SyncSender<RecordBatch>,
) -> Result<()> {
    let all = futures::stream::once(async { Ok(first) })
        .chain(rest.map_err(|s| FlightError::Tonic(Box::new(s))));
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(all);
    while let Some(b) = batches.next().await {
        let b = b.map_err(|e| Error::InvalidUpload(format!("bad Arrow data in upload: {e}")))?;
        let tx = tx.clone();
        // The writer thread applies back-pressure; wait for it off the async runtime.
        let sent = tokio::task::spawn_blocking(move || tx.send(b).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            return Err(Error::InvalidUpload("upload writer stopped".into()));
        }
    }
    Ok(())
}

/// Receives raw Parquet bytes into a temporary file, then validates them by decoding every
/// batch (a truncated or corrupt file fails here) and feeds the batches to the writer.
async fn feed_parquet(
    first: FlightData,
    mut rest: Streaming<FlightData>,
    tx: &std::sync::mpsc::SyncSender<RecordBatch>,
    storage: &Arc<Storage>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let path = storage.root().join("tmp").join(format!(
        "raw-{}-{}.parquet",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TempFile(path.clone());
    let mut f = tokio::fs::File::create(&path)
        .await
        .map_err(|e| Error::io("creating upload spool file", e))?;
    let mut total = 0u64;
    let mut msg = Some(first);
    loop {
        let Some(m) = msg.take() else { break };
        total += m.data_body.len() as u64;
        if total > UPLOAD_BYTES_MAX {
            return Err(Error::InvalidUpload(format!(
                "upload exceeds {UPLOAD_BYTES_MAX} bytes"
            )));
        }
        f.write_all(&m.data_body)
            .await
            .map_err(|e| Error::io("spooling upload", e))?;
        msg = rest
            .message()
            .await
            .map_err(|s| Error::InvalidUpload(format!("upload stream failed: {}", s.message())))?;
    }
    f.flush()
        .await
        .map_err(|e| Error::io("spooling upload", e))?;
    drop(f);
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let _guard = guard;
        let file = std::fs::File::open(&path).map_err(|e| Error::io("reopening upload", e))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(crate::exec::BATCH_ROWS).build())
            .map_err(|e| Error::InvalidUpload(format!("not a valid Parquet file: {e}")))?;
        for batch in reader {
            let batch = batch
                .map_err(|e| Error::InvalidUpload(format!("Parquet data does not decode: {e}")))?;
            if tx.send(batch).is_err() {
                return Err(Error::InvalidUpload("upload writer stopped".into()));
            }
        }
        Ok(())
    })
    .await
    // The decoder panics on some damaged footers (an unknown logical type, say): for bytes a
    // client sent, that is an invalid upload, not a device fault.
    .map_err(|e| Error::InvalidUpload(format!("the Parquet decoder failed on this file: {e}")))?
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
