//! The emulated NVMe namespace: a data directory of objects (Parquet files) and a catalog of
//! tables.
//!
//! Layout of the data directory:
//!
//! ```text
//! catalog.json         the catalog, replaced atomically (write temp, fsync, rename, fsync dir)
//! objects/<id>.parquet object bytes, immutable once visible
//! objects/<id>.pi      block checksums of the object (see `pi`)
//! tmp/                 uploads in progress; emptied at start-up
//! ```
//!
//! Invariants: an object becomes visible only through the catalog, and the catalog names an
//! object only after the object and its sidecar are durable (fsynced and renamed into
//! `objects/`, directory fsynced). A crash therefore leaves either the old catalog (the upload
//! is lost, its files are garbage collected at the next start) or the new one (the upload is
//! complete). An upload is acknowledged only after the catalog commit is durable.

pub mod kernels;
pub mod media;
pub mod pi;
pub mod reader;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use nearstore_proto::{ColumnInfo, ObjectInfo, PutMode, PutSummary, ScrubReport, TableInfo};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use pi::{BlockSums, SummingWriter};
use reader::{BLOCK_BYTES, ReadOp, Reader};

const CATALOG_FILE: &str = "catalog.json";
const CATALOG_VERSION: u32 = 1;

/// How the device writes Parquet objects.
#[derive(Debug, Clone, Copy)]
pub struct WriteConfig {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Rows per data page at most (the page index's granularity).
    pub page_rows: usize,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            row_group_rows: 128 * 1024,
            page_rows: 8 * 1024,
        }
    }
}

/// Catalog document, `catalog.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CatalogDoc {
    version: u32,
    tables: BTreeMap<String, TableEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableEntry {
    name: String,
    columns: Vec<ColumnInfo>,
    objects: Vec<ObjectEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ObjectEntry {
    id: String,
    rows: u64,
    bytes: u64,
    row_groups: u64,
    sha256: String,
}

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

/// The namespace: data directory, catalog and open objects.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    reader: Reader,
    write: WriteConfig,
    catalog: RwLock<CatalogDoc>,
    /// Serialises catalog commits.
    commit: tokio::sync::Mutex<()>,
    open: Mutex<HashMap<String, Arc<Object>>>,
    next_tmp: AtomicU64,
    kernels: kernels::KernelStore,
}

impl Storage {
    /// Opens (creating if needed) the namespace in `root`: empties `tmp/`, loads the catalog,
    /// and removes objects the catalog does not name (left by a crash before commit).
    pub fn open(root: impl Into<PathBuf>, reader: Reader, write: WriteConfig) -> Result<Self> {
        let root = root.into();
        for d in [root.clone(), root.join("objects"), root.join("tmp")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let tmp = root.join("tmp");
        for entry in read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry);
        }
        let catalog_path = root.join(CATALOG_FILE);
        let catalog = match std::fs::read(&catalog_path) {
            Ok(bytes) => {
                let doc: CatalogDoc = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Internal(format!(
                        "catalog {} is unreadable: {e}",
                        catalog_path.display()
                    ))
                })?;
                if doc.version != CATALOG_VERSION {
                    return Err(Error::Internal(format!(
                        "catalog version {} is not supported",
                        doc.version
                    )));
                }
                doc
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogDoc {
                version: CATALOG_VERSION,
                tables: BTreeMap::new(),
            },
            Err(e) => return Err(Error::io("reading the catalog", e)),
        };
        let live: std::collections::HashSet<String> = catalog
            .tables
            .values()
            .flat_map(|t| t.objects.iter().map(|o| o.id.clone()))
            .collect();
        let mut removed = 0;
        for path in read_dir(&root.join("objects"))? {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !live.contains(&stem) {
                let _ = std::fs::remove_file(&path);
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed files of uploads that never committed"
            );
        }
        tracing::info!(
            root = %root.display(),
            tables = catalog.tables.len(),
            "namespace opened"
        );
        let root_for_kernels = root.clone();
        Ok(Storage {
            root,
            reader,
            write,
            catalog: RwLock::new(catalog),
            commit: tokio::sync::Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            next_tmp: AtomicU64::new(0),
            kernels: kernels::KernelStore::open(&root_for_kernels)?,
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registered kernels.
    pub fn kernels(&self) -> &kernels::KernelStore {
        &self.kernels
    }

    /// The read path.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Path of an object's Parquet file.
    pub fn object_path(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(format!("{id}.parquet"))
    }

    fn sums_path(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(format!("{id}.pi"))
    }

    /// Table names.
    pub fn table_names(&self) -> Vec<String> {
        self.catalog
            .read()
            .expect("catalog lock")
            .tables
            .keys()
            .cloned()
            .collect()
    }

    /// Describes a table.
    pub fn describe(&self, name: &str) -> Result<TableInfo> {
        let cat = self.catalog.read().expect("catalog lock");
        let t = cat
            .tables
            .get(name)
            .ok_or_else(|| Error::UnknownTable(name.to_string()))?;
        Ok(TableInfo {
            name: t.name.clone(),
            columns: t.columns.clone(),
            rows: t.objects.iter().map(|o| o.rows).sum(),
            bytes: t.objects.iter().map(|o| o.bytes).sum(),
            objects: t
                .objects
                .iter()
                .map(|o| ObjectInfo {
                    id: o.id.clone(),
                    rows: o.rows,
                    bytes: o.bytes,
                    row_groups: o.row_groups,
                    sha256: o.sha256.clone(),
                })
                .collect(),
        })
    }

    /// Opens a table's objects for reading.
    pub fn table(&self, name: &str) -> Result<TableHandle> {
        let entries: Vec<ObjectEntry> = {
            let cat = self.catalog.read().expect("catalog lock");
            cat.tables
                .get(name)
                .ok_or_else(|| Error::UnknownTable(name.to_string()))?
                .objects
                .clone()
        };
        let objects = entries
            .iter()
            .map(|e| self.open_object(e))
            .collect::<Result<_>>()?;
        Ok(TableHandle {
            name: name.to_string(),
            objects,
        })
    }

    fn open_object(&self, entry: &ObjectEntry) -> Result<Arc<Object>> {
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
        let sums_bytes = std::fs::read(&sums_path)
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
        });
        self.open
            .lock()
            .expect("open lock")
            .insert(entry.id.clone(), obj.clone());
        Ok(obj)
    }

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
            schema: None,
            rows: 0,
        })
    }

    /// Drops a table. Its objects are deleted after the catalog commit.
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let _guard = self.commit.lock().await;
        let mut doc = self.catalog.read().expect("catalog lock").clone();
        let entry = doc
            .tables
            .remove(name)
            .ok_or_else(|| Error::UnknownTable(name.to_string()))?;
        self.write_catalog(&doc)?;
        *self.catalog.write().expect("catalog lock") = doc;
        self.delete_objects(&entry.objects);
        Ok(())
    }

    fn delete_objects(&self, objects: &[ObjectEntry]) {
        let mut open = self.open.lock().expect("open lock");
        for o in objects {
            open.remove(&o.id);
            let _ = std::fs::remove_file(self.object_path(&o.id));
            let _ = std::fs::remove_file(self.sums_path(&o.id));
        }
    }

    /// Verifies the SHA-256 of every object, reading through the configured read path.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let tables: Vec<(String, Vec<ObjectEntry>)> = self
            .catalog
            .read()
            .expect("catalog lock")
            .tables
            .values()
            .map(|t| (t.name.clone(), t.objects.clone()))
            .collect();
        let mut report = ScrubReport::default();
        for (table, objects) in tables {
            for entry in objects {
                report.objects_checked += 1;
                match self.verify_object(&entry).await {
                    Ok(bytes) => report.bytes_checked += bytes,
                    Err(e) => report
                        .corrupt
                        .push((table.clone(), entry.id.clone(), e.to_string())),
                }
            }
        }
        Ok(report)
    }

    async fn verify_object(&self, entry: &ObjectEntry) -> Result<u64> {
        let obj = self.open_object(entry)?;
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let chunk = 8 << 20;
        let mut off = 0u64;
        while off < obj.size {
            let end = (off + chunk).min(obj.size);
            let (bytes, _) = obj.read_ranges(&[off..end]).await?;
            sha2::Digest::update(&mut sha, &bytes[0]);
            off = end;
        }
        let got = hex::encode(sha2::Digest::finalize(sha));
        if got != entry.sha256 {
            return Err(Error::CorruptObject {
                object: entry.id.clone(),
                detail: format!("SHA-256 is {got}, the catalog recorded {}", entry.sha256),
            });
        }
        Ok(obj.size)
    }

    /// Writes the catalog durably: temp file, fsync, rename, fsync of the directory.
    fn write_catalog(&self, doc: &CatalogDoc) -> Result<()> {
        let tmp = self.root.join("tmp").join("catalog.json.tmp");
        let bytes = serde_json::to_vec_pretty(doc).expect("catalog serialises");
        write_durable(&tmp, &bytes)?;
        let dst = self.root.join(CATALOG_FILE);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io("renaming the catalog", e))?;
        fsync_dir(&self.root)
    }

    fn writer_properties(&self) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
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
    writer: Option<ArrowWriter<SummingWriter<File>>>,
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
            let file = File::create(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            let w = ArrowWriter::try_new(
                SummingWriter::new(file),
                batch.schema(),
                Some(self.storage.writer_properties()),
            )?;
            self.writer = Some(w);
            self.schema = Some(batch.schema());
        }
        let w = self.writer.as_mut().expect("writer created");
        let first = self.schema.as_ref().expect("schema set with the writer");
        if first != &batch.schema() {
            return Err(Error::InvalidUpload(format!(
                "batch schema {} differs from the upload's first batch {first}",
                batch.schema(),
            )));
        }
        w.write(batch)?;
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
        let summing = writer.into_inner()?;
        let (file, sha256, sums) = summing.finish();
        file.sync_all()
            .map_err(|e| Error::io("fsync of the uploaded object", e))?;
        let bytes = file
            .metadata()
            .map_err(|e| Error::io("stat of the uploaded object", e))?
            .len();
        drop(file);
        let md = parquet::file::reader::FileReader::metadata(
            &parquet::file::serialized_reader::SerializedFileReader::new(
                File::open(self.tmp_path("parquet"))
                    .map_err(|e| Error::io("reopening the uploaded object", e))?,
            )?,
        )
        .clone();
        let row_groups = md.num_row_groups() as u64;

        let sums_tmp = self.tmp_path("pi");
        write_durable(&sums_tmp, &sums.encode())?;
        let st = &self.storage;
        std::fs::rename(&sums_tmp, st.sums_path(&self.id))
            .map_err(|e| Error::io("moving the checksum sidecar into place", e))?;
        std::fs::rename(self.tmp_path("parquet"), st.object_path(&self.id))
            .map_err(|e| Error::io("moving the object into place", e))?;
        fsync_dir(&st.root.join("objects"))?;

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
        let _ = std::fs::remove_file(self.storage.object_path(&self.id));
        let _ = std::fs::remove_file(self.storage.sums_path(&self.id));
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(self.tmp_path("parquet"));
        }
    }
}

fn describe_columns(cols: &[ColumnInfo]) -> String {
    cols.iter()
        .map(|c| format!("{} {}", c.name, c.data_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table name: `[tenant/]name`, each part 1-128 characters of `[A-Za-z0-9_.-]` (the server
/// adds the tenant part; callers never send it).
fn validate_table_name(name: &str) -> Result<()> {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 128
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    let ok = match name.split_once('/') {
        Some((tenant, table)) => part(tenant) && part(table),
        None => part(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidUpload(format!(
            "table name '{name}' must be 1-128 characters of [A-Za-z0-9_.-]"
        )))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

/// Writes `bytes` to `path` and fsyncs the file.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))
}
