//! Uploads: batches are written as Parquet into `tmp/`, summed on the way (SHA-256 and block
//! checksums), then committed: object and sidecar made durable and moved into `objects/`, and
//! only then named by a new catalog. An upload dropped before its commit leaves nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use nearstore_proto::{ColumnInfo, PutMode, PutSummary};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::catalog::{ObjectEntry, TableEntry, describe_columns, validate_table_name};
use super::fs::{FsFile, fsync_dir, write_durable};
use super::pi::SummingWriter;
use super::{PageCodec, Storage};
use crate::error::{Error, Result};

impl Storage {
    /// Starts an upload into `table`. Nothing is visible until [`Upload::commit`] returns.
    pub fn begin_upload(self: &Arc<Self>, table: &str, mode: PutMode) -> Result<Upload> {
        validate_table_name(table)?;
        if mode == PutMode::Create
            && self
                .catalog
                .read()
                .expect("catalog lock")
                .tables
                .contains_key(table)
        {
            return Err(Error::TableExists(table.to_string()));
        }
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}-{}-{n}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
            std::process::id()
        );
        Ok(Upload {
            storage: self.clone(),
            table: table.to_string(),
            mode,
            id,
            writer: None,
            full: Arc::default(),
            schema: None,
            rows: 0,
        })
    }

    fn writer_properties(&self) -> WriterProperties {
        let compression = match self.write.codec {
            PageCodec::Snappy => Compression::SNAPPY,
            PageCodec::Lz4 => Compression::LZ4_RAW,
            PageCodec::Zstd => Compression::ZSTD(ZstdLevel::default()),
            PageCodec::None => Compression::UNCOMPRESSED,
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.write.row_group_rows))
            .set_data_page_row_count_limit(self.write.page_rows)
            .build()
    }
}

/// An upload in progress. Dropping it without [`Upload::commit`] discards it.
pub struct Upload {
    storage: Arc<Storage>,
    table: String,
    mode: PutMode,
    id: String,
    writer: Option<ArrowWriter<SummingWriter<Watched>>>,
    /// Set when the disk filled under the writer.
    full: Arc<AtomicBool>,
    schema: Option<SchemaRef>,
    rows: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("table", &self.table)
            .field("id", &self.id)
            .field("rows", &self.rows)
            .finish()
    }
}

impl Upload {
    fn tmp_path(&self, ext: &str) -> PathBuf {
        self.storage
            .root
            .join("tmp")
            .join(format!("{}.{ext}", self.id))
    }

    /// Appends a batch (blocking: call from a blocking context).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let path = self.tmp_path("parquet");
            let file = self
                .storage
                .fs
                .create(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            let file = Watched {
                file,
                full: self.full.clone(),
            };
            let w = ArrowWriter::try_new(
                SummingWriter::new(file),
                batch.schema(),
                Some(self.storage.writer_properties()),
            )?;
            self.writer = Some(w);
            self.schema = Some(batch.schema());
        }
        let full = self.full.clone();
        let w = self.writer.as_mut().expect("writer created");
        let first = self.schema.as_ref().expect("schema set with the writer");
        if first != &batch.schema() {
            return Err(Error::InvalidUpload(format!(
                "batch schema {} differs from the upload's first batch {first}",
                batch.schema(),
            )));
        }
        w.write(batch).map_err(|e| writing(&full, e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Makes the upload durable and visible (blocking). Returns what was stored.
    pub fn commit(mut self) -> Result<PutSummary> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::InvalidUpload(
                "the upload carried no record batches".into(),
            ));
        };
        let schema: SchemaRef = self.schema.clone().expect("schema set with the writer");
        let mut writer = writer;
        let full = self.full.clone();
        writer.flush().map_err(|e| writing(&full, e))?;
        let row_groups = writer.flushed_row_groups().len() as u64;
        let summing = writer.into_inner().map_err(|e| writing(&full, e))?;
        let bytes = summing.written();
        let (mut file, sha256, sums) = summing.finish();
        file.file
            .sync()
            .map_err(|e| Error::io("fsync of the uploaded object", e))?;
        drop(file);

        // The durable-write steps of `fs::replace_durable`, for two files: both renames into
        // `objects/` are made durable by one fsync of the directory.
        let sums_tmp = self.tmp_path("pi");
        let st = &self.storage;
        let fs = &*st.fs;
        let placed = write_durable(fs, &sums_tmp, &sums.encode())
            .and_then(|()| {
                fs.rename(&sums_tmp, &st.sums_path(&self.id))
                    .map_err(|e| Error::io("moving the checksum sidecar into place", e))
            })
            .and_then(|()| {
                fs.rename(&self.tmp_path("parquet"), &st.object_path(&self.id))
                    .map_err(|e| Error::io("moving the object into place", e))
            })
            .and_then(|()| fsync_dir(fs, &st.root.join("objects")));
        if let Err(e) = placed {
            // What reached `objects/` goes; `Drop` removes what is left in `tmp/`.
            self.discard_committed_files();
            return Err(e);
        }

        let entry = ObjectEntry {
            id: self.id.clone(),
            rows: self.rows,
            bytes,
            row_groups,
            sha256,
        };
        let columns: Vec<ColumnInfo> = schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();

        // Commit: the catalog lock is async; this runs on a blocking thread, so block on it.
        let guard = st.commit.blocking_lock();
        let mut doc = st.catalog.read().expect("catalog lock").clone();
        let mut replaced = Vec::new();
        match (self.mode, doc.tables.get_mut(&self.table)) {
            (PutMode::Create, Some(_)) => {
                self.discard_committed_files();
                return Err(Error::TableExists(self.table.clone()));
            }
            (PutMode::Append, Some(t)) => {
                if t.columns != columns {
                    self.discard_committed_files();
                    return Err(Error::InvalidUpload(format!(
                        "appended schema differs from table '{}' ({})",
                        self.table,
                        describe_columns(&t.columns)
                    )));
                }
                t.objects.push(entry);
            }
            (PutMode::Replace, Some(t)) => {
                replaced = std::mem::replace(&mut t.objects, vec![entry]);
                t.columns = columns;
            }
            (_, None) => {
                doc.tables.insert(
                    self.table.clone(),
                    TableEntry {
                        name: self.table.clone(),
                        columns,
                        objects: vec![entry],
                    },
                );
            }
        }
        if let Err(e) = st.write_catalog(&doc) {
            self.discard_committed_files();
            return Err(e);
        }
        *st.catalog.write().expect("catalog lock") = doc;
        drop(guard);
        st.delete_objects(&replaced);
        tracing::info!(table = %self.table, object = %self.id, rows = self.rows, bytes, "upload committed");
        Ok(PutSummary {
            table: self.table.clone(),
            rows: self.rows,
            bytes,
            object: self.id.clone(),
        })
    }

    fn discard_committed_files(&self) {
        let fs = &self.storage.fs;
        let _ = fs.remove(&self.storage.object_path(&self.id));
        let _ = fs.remove(&self.storage.sums_path(&self.id));
    }
}

impl Drop for Upload {
    /// Removes what the upload left in `tmp/`: all of it when it was dropped or failed before
    /// its commit moved the files into `objects/`, nothing after.
    fn drop(&mut self) {
        for ext in ["parquet", "pi"] {
            let _ = self.storage.fs.remove(&self.tmp_path(ext));
        }
    }
}

/// A Parquet writer's error: a full disk under it (`full` set) is the device's storage being
/// full, which [`Error::io`] reports as such; any other is the writer's own.
fn writing(full: &AtomicBool, e: parquet::errors::ParquetError) -> Error {
    if full.load(Ordering::Relaxed) {
        return Error::io(
            "writing the uploaded object",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
    }
    e.into()
}

/// The object file under the Parquet writer, noting whether the disk filled: the writer's
/// own buffering may report that error without its kind.
struct Watched {
    file: Box<dyn FsFile>,
    full: Arc<AtomicBool>,
}

impl Watched {
    fn note<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::StorageFull
        {
            self.full.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl std::io::Write for Watched {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.file.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.file.flush();
        self.note(r)
    }
}
