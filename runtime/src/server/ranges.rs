//! Range reads (`read_ranges`): the bytes of one of a table's stored Parquet objects, for a
//! host whose own Parquet reader does the work (the remote-scan baseline: what a host does
//! with the drive's file over NVMe-oF or an object store, without offload).
//!
//! A range read is tenant-scoped like a query (another tenant's table is not found, and an
//! object id that is not part of the named table is `unknown_object`), reads through the same
//! path as a scan (every 4 KiB block it touches is CRC-checked, so a corrupt block is an error
//! here too), draws on the tenant's media bandwidth, is counted in the metrics, and leaves
//! through the emulated link. It takes no query slot: a host's Parquet reader issues many
//! small reads for one query, and holding a slot for each would queue them behind each other.

use std::ops::Range;

use bytes::Bytes;
use nearstore_proto::{RANGE_CALL_BYTES_MAX, RANGE_CALL_RANGES_MAX, RANGE_CHUNK_BYTES, ReadRanges};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{BoxStream, DeviceService, Principal, link};
use crate::error::{Error, Result};

impl DeviceService {
    /// Serves a `read_ranges` call: each range's bytes in order, in messages of at most
    /// [`RANGE_CHUNK_BYTES`] (a range is never merged with the next into one message).
    pub(super) async fn read_ranges(
        &self,
        who: &Principal,
        body: &[u8],
    ) -> Result<BoxStream<arrow_flight::Result>> {
        let req: ReadRanges = serde_json::from_slice(body)
            .map_err(|e| Error::MalformedPlan(format!("read_ranges body is not valid: {e}")))?;
        let ranges = checked_ranges(&req.ranges)?;
        let stored = who.scope(&req.table)?;
        let table = self.storage().table(&stored)?;
        let object = table
            .objects
            .iter()
            .find(|o| o.id == req.object)
            .ok_or_else(|| Error::UnknownObject {
                table: req.table.clone(),
                object: req.object.clone(),
            })?;
        if let Some(r) = ranges.iter().find(|r| r.end > object.size) {
            return Err(Error::MalformedPlan(format!(
                "range {}..{} is past the end of object {} ({} bytes)",
                r.start, r.end, object.id, object.size
            )));
        }
        let tenant = who.tenant.clone().unwrap_or_default();
        let read = std::time::Instant::now();
        let (bufs, media_bytes) = object.read_ranges(&ranges).await?;
        self.metrics
            .telemetry
            .range_read(media_bytes, read.elapsed());
        self.link.round_trip().await;
        if let Some(bucket) = self.admission.media(&tenant) {
            bucket.take(media_bytes).await;
        }
        let (tx, rx) = mpsc::channel(4);
        let out = link::paced(self.link.clone(), tx);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            for buf in bufs {
                for chunk in chunks(buf) {
                    let n = chunk.len();
                    sent += n as u64;
                    if out
                        .send((Ok(arrow_flight::Result { body: chunk }), n))
                        .await
                        .is_err()
                    {
                        return; // the host is gone
                    }
                }
            }
            metrics.range_read(&tenant, media_bytes, sent);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// The request's ranges, checked: each `start <= end`, within the per-call count and byte
/// limits.
fn checked_ranges(ranges: &[[u64; 2]]) -> Result<Vec<Range<u64>>> {
    if ranges.len() > RANGE_CALL_RANGES_MAX {
        return Err(Error::MalformedPlan(format!(
            "read_ranges asks for {} ranges; at most {RANGE_CALL_RANGES_MAX} per call",
            ranges.len()
        )));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(ranges.len());
    for &[start, end] in ranges {
        if start > end {
            return Err(Error::MalformedPlan(format!(
                "range {start}..{end} ends before it starts"
            )));
        }
        total = total.saturating_add(end - start);
        out.push(start..end);
    }
    if total > RANGE_CALL_BYTES_MAX {
        return Err(Error::MalformedPlan(format!(
            "read_ranges asks for {total} bytes; at most {RANGE_CALL_BYTES_MAX} per call"
        )));
    }
    Ok(out)
}

/// `buf` in messages of at most [`RANGE_CHUNK_BYTES`] (none for an empty range).
fn chunks(buf: Bytes) -> impl Iterator<Item = Bytes> {
    let n = buf.len().div_ceil(RANGE_CHUNK_BYTES);
    (0..n).map(move |i| {
        buf.slice(i * RANGE_CHUNK_BYTES..((i + 1) * RANGE_CHUNK_BYTES).min(buf.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_and_split_into_bounded_messages() {
        assert!(checked_ranges(&[[5, 4]]).is_err());
        assert!(checked_ranges(&[[0, RANGE_CALL_BYTES_MAX + 1]]).is_err());
        assert!(checked_ranges(&vec![[0, 1]; RANGE_CALL_RANGES_MAX + 1]).is_err());
        assert_eq!(
            checked_ranges(&[[3, 3], [0, 10]]).unwrap(),
            vec![3..3, 0..10]
        );

        assert_eq!(chunks(Bytes::new()).count(), 0);
        let big = Bytes::from(vec![7u8; 2 * RANGE_CHUNK_BYTES + 3]);
        let parts: Vec<Bytes> = chunks(big.clone()).collect();
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![RANGE_CHUNK_BYTES, RANGE_CHUNK_BYTES, 3]
        );
        assert_eq!(parts.concat(), big.to_vec());
    }
}
