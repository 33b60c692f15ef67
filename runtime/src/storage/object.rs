//! Objects opened for reading: an object's file, size and block checksums, and batched reads
//! of byte ranges that verify every block they touch. Opened objects are shared (one per id)
//! until their table drops or replaces them.

use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;

use super::Storage;
use super::catalog::ObjectEntry;
use super::pi::BlockSums;
use super::reader::{BLOCK_BYTES, ReadOp, Reader};
use crate::error::{Error, Result};

/// An object opened for reading: file handle, size and block checksums.
#[derive(Debug)]
pub struct Object {
    /// Object id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    file: Arc<File>,
    sums: BlockSums,
    reader: Reader,
    metadata: Mutex<Option<Arc<ParquetMetaData>>>,
    hot: Arc<super::hot::HotTier>,
}

impl Object {
    /// Reads `ranges` as one batch, verifying every block touched. Returns the bytes of each
    /// range and the number of bytes read from the media (whole aligned blocks).
    pub async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<(Vec<Bytes>, u64)> {
        // Align, then merge overlapping or touching aligned ranges into one read each.
        let mut aligned: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| {
                if r.start > r.end || r.end > self.size {
                    return Err(Error::Internal(format!(
                        "read {r:?} outside object {} of {} bytes",
                        self.id, self.size
                    )));
                }
                let b = BLOCK_BYTES as u64;
                Ok((r.start / b) * b..r.end.div_ceil(b) * b)
            })
            .collect::<Result<_>>()?;
        aligned.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in aligned {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let ops: Vec<ReadOp> = merged
            .iter()
            .map(|r| ReadOp {
                offset: r.start,
                len: (r.end - r.start) as usize,
            })
            .collect();
        let bufs = self
            .reader
            .read(self.file.clone(), ops)
            .await
            .map_err(|e| Error::io(format!("reading object {}", self.id), e))?;
        let mut read_bytes = 0u64;
        let mut frozen = Vec::with_capacity(bufs.len());
        for (r, buf) in merged.iter().zip(bufs) {
            let expect = (r.end.min(self.size) - r.start) as usize;
            if buf.len() != expect {
                return Err(Error::CorruptObject {
                    object: self.id.clone(),
                    detail: format!(
                        "short read at offset {}: {} of {expect} bytes (object truncated?)",
                        r.start,
                        buf.len()
                    ),
                });
            }
            self.sums
                .verify((r.start / BLOCK_BYTES as u64) as usize, buf.as_ref())
                .map_err(|block| Error::CorruptObject {
                    object: self.id.clone(),
                    detail: format!(
                        "block {block} (bytes {}..{}) fails its checksum",
                        block * BLOCK_BYTES,
                        (block + 1) * BLOCK_BYTES
                    ),
                })?;
            read_bytes += buf.len() as u64;
            frozen.push((r.start, buf.into_bytes()));
        }
        let out = ranges
            .iter()
            .map(|r| {
                let (start, bytes) = frozen
                    .iter()
                    .rev()
                    .find(|(s, b)| *s <= r.start && r.end <= *s + b.len() as u64)
                    .expect("every range lies inside one merged read");
                bytes.slice((r.start - start) as usize..(r.end - start) as usize)
            })
            .collect();
        Ok((out, read_bytes))
    }

    /// Cached Parquet metadata (footer and page index), if loaded.
    pub fn cached_metadata(&self) -> Option<Arc<ParquetMetaData>> {
        self.metadata.lock().expect("metadata lock").clone()
    }

    /// The namespace's hot-column tier.
    pub fn hot(&self) -> &super::hot::HotTier {
        &self.hot
    }

    /// Caches the Parquet metadata.
    pub fn cache_metadata(&self, md: Arc<ParquetMetaData>) {
        *self.metadata.lock().expect("metadata lock") = Some(md);
    }
}

/// A table as the scan sees it: schema (from the catalog) and objects.
#[derive(Debug, Clone)]
pub struct TableHandle {
    /// Name.
    pub name: String,
    /// Objects, opened.
    pub objects: Vec<Arc<Object>>,
}

impl Storage {
    /// Opens a table's objects for reading.
    pub fn table(&self, name: &str) -> Result<TableHandle> {
        let entries = |name: &str| -> Result<Vec<ObjectEntry>> {
            let cat = self.catalog.read().expect("catalog lock");
            Ok(cat
                .tables
                .get(name)
                .ok_or_else(|| Error::UnknownTable(name.to_string()))?
                .objects
                .clone())
        };
        let mut listed = entries(name)?;
        for attempt in 1.. {
            match listed.iter().map(|e| self.open_object(e)).collect() {
                Ok(objects) => {
                    return Ok(TableHandle {
                        name: name.to_string(),
                        objects,
                    });
                }
                // A replace or drop committed after the listing and deleted an object it
                // named: list again (the error stands if the catalog still names it, or
                // after 8 listings that each lost such a race).
                Err(e) => {
                    let now = entries(name)?;
                    let same = now.iter().map(|o| &o.id).eq(listed.iter().map(|o| &o.id));
                    if same || attempt == 8 {
                        return Err(e);
                    }
                    listed = now;
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub(super) fn open_object(&self, entry: &ObjectEntry) -> Result<Arc<Object>> {
        if let Some(o) = self.open.lock().expect("open lock").get(&entry.id) {
            return Ok(o.clone());
        }
        let corrupt = |detail: String| Error::CorruptObject {
            object: entry.id.clone(),
            detail,
        };
        let path = self.object_path(&entry.id);
        let file = self
            .reader
            .open(&path)
            .map_err(|e| corrupt(format!("cannot open {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        if size != entry.bytes {
            return Err(corrupt(format!(
                "size is {size} bytes, the catalog recorded {}",
                entry.bytes
            )));
        }
        let sums_path = self.sums_path(&entry.id);
        let sums_bytes = self
            .fs
            .read(&sums_path)
            .map_err(|e| corrupt(format!("cannot read {}: {e}", sums_path.display())))?;
        let sums = BlockSums::decode(&sums_bytes).map_err(corrupt)?;
        if sums.blocks() as u64 != entry.bytes.div_ceil(BLOCK_BYTES as u64) {
            return Err(corrupt(
                "checksum sidecar covers the wrong number of blocks".into(),
            ));
        }
        let obj = Arc::new(Object {
            id: entry.id.clone(),
            size,
            file: Arc::new(file),
            sums,
            reader: self.reader.clone(),
            metadata: Mutex::new(None),
            hot: self.hot.clone(),
        });
        self.open
            .lock()
            .expect("open lock")
            .insert(entry.id.clone(), obj.clone());
        Ok(obj)
    }

    /// Forgets `objects` and deletes their files (after a commit that no longer names them).
    pub(super) fn delete_objects(&self, objects: &[ObjectEntry]) {
        self.hot.invalidate(objects.iter().map(|o| o.id.as_str()));
        let mut open = self.open.lock().expect("open lock");
        for o in objects {
            open.remove(&o.id);
            let _ = self.fs.remove(&self.object_path(&o.id));
            let _ = self.fs.remove(&self.sums_path(&o.id));
        }
    }
}
