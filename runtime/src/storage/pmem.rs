//! The file-backed tier (`--pmem-dir`): the hot-column tier's chunks written through to a
//! directory that stands in for persistent memory, one file per chunk, and memory-mapped when
//! read back, so a restarted device starts with the chunks it had kept instead of an empty tier.
//!
//! A chunk file (`<object>.<row group>.<column>.chunk`):
//!
//! ```text
//! header   magic "NSPMEM01", header length (u32), payload length (u64), payload CRC-32C (u32),
//!          row group (u32), column (u32), object id length (u32) and bytes, the header's own
//!          CRC-32C (u32); zero-padded to 64 bytes
//! payload  the array as an Arrow IPC stream of one column, buffers aligned to 64 bytes, so it
//!          decodes in place from the mapping
//! ```
//!
//! - **Written at admission** to a temporary name and renamed. There is no fsync: a file torn by
//!   a crash fails its checksum at the next start and is deleted, and the chunk is read from the
//!   media as it would be without the tier.
//! - **Removed** when the memory tier evicts the chunk or its object is deleted (drop, replace).
//!   The write happens outside the memory tier's lock, so an eviction or a drop that races
//!   with it can leave a file whose chunk memory no longer holds: its data is still right, and
//!   a start-up restores it within the budget, or deletes it when its object is gone.
//! - **Verified before use**, at start-up, whole: both checksums, a key that matches the file's
//!   name, an object the namespace still holds and a row group it has, and an Arrow stream of
//!   exactly one batch of one column. A file that fails any check is deleted and counted as
//!   rejected (`CacheInfo::pmem_rejected_chunks`), with the reason in the log.
//!
//! The directory holds what the memory tier holds, so at most its budget, and belongs to one
//! device: a start-up deletes the files of objects that device's namespace does not hold.
//!
//! A mapped chunk is private and read-only; the tier never writes into a file it has mapped
//! (a rewrite goes to a new file that replaces the name), so a mapping stays valid after its
//! file is removed or replaced.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::ArrayRef;
use arrow::buffer::Buffer;
use arrow::datatypes::{Field, Schema};
use arrow::ipc::MetadataVersion;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::record_batch::RecordBatch;

use super::hot::Key;

const MAGIC: &[u8; 8] = b"NSPMEM01";
/// Alignment of the payload in the file and of the buffers in the payload.
const ALIGN: usize = 64;
const SUFFIX: &str = ".chunk";
const TMP_SUFFIX: &str = ".tmp";

/// The directory of chunk files.
#[derive(Debug)]
pub(super) struct Pmem {
    dir: PathBuf,
    next_tmp: AtomicU64,
}

/// What a start-up found in the directory.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// Chunks that passed every check.
    pub chunks: Vec<(Key, ArrayRef)>,
    /// Files deleted, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
}

impl Pmem {
    /// Opens (creating it if needed) the directory, and deletes the temporary files of writes
    /// a crash cut short.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Pmem {
            dir: dir.to_path_buf(),
            next_tmp: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}{SUFFIX}", stem(key)))
    }

    /// Writes `array` as the chunk `key`, replacing any file of that key.
    pub fn store(&self, key: &Key, array: &ArrayRef) -> Result<(), String> {
        let payload = encode(array).map_err(|e| format!("encoding the chunk: {e}"))?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{}.{n}{TMP_SUFFIX}", stem(key)));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&header(key, &payload))?;
            f.write_all(&payload)?;
            std::fs::rename(&tmp, self.path(key))
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing {}: {e}", tmp.display())
        })
    }

    /// Deletes the chunk `key`'s file, if there is one.
    pub fn remove(&self, key: &Key) {
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Every chunk file in the directory, verified against `live` (object id → its number of
    /// row groups); files that fail are deleted.
    pub fn restore(&self, live: &HashMap<String, u64>) -> std::io::Result<Restored> {
        let mut out = Restored::default();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            match verify(&path, stem, live) {
                Ok(chunk) => out.chunks.push(chunk),
                Err(why) => {
                    let _ = std::fs::remove_file(&path);
                    out.rejected.push((path, why));
                }
            }
        }
        Ok(out)
    }
}

/// A chunk file's name without its suffix: `<object>.<row group>.<column>`.
fn stem(key: &Key) -> String {
    format!("{}.{}.{}", key.0, key.1, key.2)
}

/// The array as an Arrow IPC stream of one nullable column named "c".
fn encode(array: &ArrayRef) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "c",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![array.clone()])?;
    let options = IpcWriteOptions::try_new(ALIGN, false, MetadataVersion::V5)?;
    let mut w = StreamWriter::try_new_with_options(Vec::new(), &schema, options)?;
    w.write(&batch)?;
    w.into_inner()
}

fn header(key: &Key, payload: &[u8]) -> Vec<u8> {
    let id = key.0.as_bytes();
    let body = 8 + 4 + 8 + 4 + 4 + 4 + 4 + id.len();
    let len = (body + 4).div_ceil(ALIGN) * ALIGN;
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h.extend_from_slice(&key.1.to_le_bytes());
    h.extend_from_slice(&key.2.to_le_bytes());
    h.extend_from_slice(&(id.len() as u32).to_le_bytes());
    h.extend_from_slice(id);
    h.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
    h.resize(len, 0);
    h
}

/// Reads little-endian fields off the front of a slice.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the header is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// One chunk file, checked whole; `named` is its name without the suffix.
fn verify(
    path: &Path,
    named: &str,
    live: &HashMap<String, u64>,
) -> Result<(Key, ArrayRef), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mapped = map(&file).map_err(|e| format!("cannot map: {e}"))?;
    let bytes = mapped.as_slice();
    let mut f = Fields(bytes);
    if f.take(MAGIC.len())? != MAGIC {
        return Err("not a chunk file (bad magic)".into());
    }
    let header_len = f.u32()? as usize;
    let payload_len = f.u64()?;
    let payload_crc = f.u32()?;
    let row_group = f.u32()?;
    let column = f.u32()?;
    let id_len = f.u32()? as usize;
    let id = f.take(id_len)?;
    let covered = bytes.len() - f.0.len();
    if f.u32()? != crc32c::crc32c(&bytes[..covered]) {
        return Err("header checksum mismatch".into());
    }
    let id = std::str::from_utf8(id).map_err(|_| "object id is not UTF-8".to_string())?;
    let key: Key = (id.to_string(), row_group, column);
    if stem(&key) != named {
        return Err(format!("the header names chunk {key:?}, not the file's"));
    }
    match live.get(id) {
        None => return Err(format!("object {id} is no longer in the namespace")),
        Some(&groups) if u64::from(row_group) >= groups => {
            return Err(format!(
                "object {id} has {groups} row groups, not {row_group}"
            ));
        }
        Some(_) => {}
    }
    if !header_len.is_multiple_of(ALIGN)
        || (header_len as u64).checked_add(payload_len) != Some(bytes.len() as u64)
    {
        return Err(format!(
            "{} bytes, but the header says {header_len} + {payload_len}",
            bytes.len()
        ));
    }
    let payload = &bytes[header_len..];
    if crc32c::crc32c(payload) != payload_crc {
        return Err("payload checksum mismatch".into());
    }
    let mut buffer = mapped.slice(header_len);
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(b) = decoder
            .decode(&mut buffer)
            .map_err(|e| format!("payload: {e}"))?
        {
            batches.push(b);
        }
    }
    decoder.finish().map_err(|e| format!("payload: {e}"))?;
    match batches.as_slice() {
        [b] if b.num_columns() == 1 => Ok((key, b.column(0).clone())),
        _ => Err(format!(
            "payload holds {} batches, not one of one column",
            batches.len()
        )),
    }
}

/// A read-only private mapping of a whole file.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; it is unmapped once, on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Mapping {}
impl std::panic::RefUnwindSafe for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those `mmap` returned, unmapped nowhere else.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The file's bytes as an Arrow buffer over a mapping of it.
fn map(file: &File) -> std::io::Result<Buffer> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Err(std::io::Error::other("the file is empty"));
    }
    // SAFETY: a fresh private read-only mapping of `len` bytes of an open file.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap succeeded");
    let owner = Arc::new(Mapping { ptr, len });
    // SAFETY: the mapping holds `len` readable bytes for as long as `owner` lives, and the
    // buffer keeps `owner`.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, owner) })
}

#[cfg(test)]
mod tests {
    use arrow::array::{DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;

    use super::*;

    fn key(o: &str, rg: u32, c: u32) -> Key {
        (o.to_string(), rg, c)
    }

    fn live(objects: &[(&str, u64)]) -> HashMap<String, u64> {
        objects.iter().map(|&(o, n)| (o.to_string(), n)).collect()
    }

    #[test]
    fn chunks_come_back_as_written_and_bad_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pmem::open(dir.path()).unwrap();
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)]));
        let dict: ArrayRef = Arc::new(
            StringArray::from(vec![Some("A"), None, Some("R"), Some("A")])
                .iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        p.store(&key("o1-2-3", 0, 4), &ints).unwrap();
        p.store(&key("o1-2-3", 1, 0), &dict).unwrap();
        p.store(&key("gone", 0, 0), &ints).unwrap();
        p.store(&key("o1-2-3", 9, 0), &ints).unwrap();
        p.store(&key("o2", 0, 0), &ints).unwrap();
        // A torn write: the file cut short.
        let torn = p.path(&key("o2", 0, 0));
        let bytes = std::fs::read(&torn).unwrap();
        std::fs::write(&torn, &bytes[..bytes.len() - 8]).unwrap();
        // A flipped bit in the payload of a copy under another name.
        p.store(&key("o2", 1, 0), &ints).unwrap();
        let flipped = p.path(&key("o2", 1, 0));
        let mut bytes = std::fs::read(&flipped).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&flipped, &bytes).unwrap();
        // A chunk file renamed to another key's name.
        let moved = p.path(&key("o2", 2, 0));
        std::fs::copy(p.path(&key("o1-2-3", 0, 4)), &moved).unwrap();
        std::fs::write(dir.path().join("x.0.0.5.tmp"), b"partial").unwrap();

        let p = Pmem::open(dir.path()).unwrap();
        assert!(!dir.path().join("x.0.0.5.tmp").exists());
        let mut r = p.restore(&live(&[("o1-2-3", 2), ("o2", 3)])).unwrap();
        r.chunks.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<&Key> = r.chunks.iter().map(|c| &c.0).collect();
        assert_eq!(keys, [&key("o1-2-3", 0, 4), &key("o1-2-3", 1, 0)]);
        assert_eq!(&r.chunks[0].1, &ints);
        assert_eq!(&r.chunks[1].1, &dict);
        let why: HashMap<String, &str> = r
            .rejected
            .iter()
            .map(|(p, w)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    w.as_str(),
                )
            })
            .collect();
        for (name, expect) in [
            (
                "gone.0.0.chunk",
                "object gone is no longer in the namespace",
            ),
            ("o1-2-3.9.0.chunk", "object o1-2-3 has 2 row groups, not 9"),
            ("o2.0.0.chunk", "bytes, but the header says"),
            ("o2.1.0.chunk", "payload checksum mismatch"),
            ("o2.2.0.chunk", "not the file's"),
        ] {
            let got = why.get(name);
            assert!(got.is_some_and(|w| w.contains(expect)), "{name}: {got:?}");
        }
        assert_eq!(why.len(), 5, "{why:?}");
        for (path, _) in &r.rejected {
            assert!(!path.exists(), "{} was not deleted", path.display());
        }
        // What passed is still there for the next start.
        assert_eq!(p.restore(&live(&[("o1-2-3", 2)])).unwrap().chunks.len(), 2);
    }
}
