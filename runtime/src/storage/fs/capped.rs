//! The real file system with a capacity: the namespace's size, as an NVMe namespace has one.
//! A write that would take the bytes under the root past the capacity fails as a full disk
//! does (`ErrorKind::StorageFull`), so the device's handling of a full disk is the same code
//! whether the disk or the capacity ran out.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Fs, FsFile, OsFs};

/// [`OsFs`] holding at most `capacity` bytes of files under its root.
#[derive(Debug, Clone)]
pub struct Capped {
    capacity: u64,
    used: Arc<AtomicU64>,
}

impl Capped {
    /// A capacity of `capacity` bytes for the files under `root`, which may already hold some.
    pub fn new(root: &Path, capacity: u64) -> io::Result<Self> {
        Ok(Capped {
            capacity,
            used: Arc::new(AtomicU64::new(bytes_under(root)?)),
        })
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of the files under the root.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn release(&self, path: &Path) {
        if let Ok(md) = std::fs::metadata(path) {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(md.len()))
                });
        }
    }
}

fn bytes_under(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    Ok(total)
}

struct CappedFile {
    inner: Box<dyn FsFile>,
    capacity: u64,
    used: Arc<AtomicU64>,
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.capacity).then_some(u + n)
            })
            .map_err(|u| {
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "the namespace's capacity of {} bytes is reached ({u} used)",
                        self.capacity
                    ),
                )
            })?;
        if let Err(e) = self.inner.write_all(buf) {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return Err(e);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FsFile for CappedFile {
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
}

impl Fs for Capped {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.release(path);
        Ok(Box::new(CappedFile {
            inner: OsFs.create(path)?,
            capacity: self.capacity,
            used: self.used.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if from != to {
            self.release(to);
        }
        OsFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        OsFs.read(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let size = std::fs::metadata(path).map(|m| m.len());
        OsFs.remove(path)?;
        if let Ok(size) = size {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(size))
                });
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        OsFs.list(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        OsFs.exists(path)
    }
    fn space(&self) -> Option<(u64, u64)> {
        Some((self.used(), self.capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_capacity_fail_as_a_full_disk_and_removal_frees_space() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), [0u8; 300]).unwrap();
        let fs = Capped::new(dir.path(), 1000).unwrap();
        assert_eq!(fs.used(), 300);
        let mut f = fs.create(&dir.path().join("a")).unwrap();
        f.write_all(&[1; 600]).unwrap();
        let e = f.write_all(&[1; 200]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        drop(f);
        fs.remove(&dir.path().join("old")).unwrap();
        assert_eq!(fs.used(), 600);
        // Creating over a file frees its bytes first.
        let mut f = fs.create(&dir.path().join("a")).unwrap();
        f.write_all(&[2; 900]).unwrap();
        assert_eq!(fs.used(), 900);
    }
}
