//! The namespace's file operations, behind a small trait so that a simulated disk can stand in
//! for the real one: [`Fs`] (create, write, fsync, rename, directory fsync, read, remove, list)
//! with [`OsFs`], the real file system, [`Capped`], the real file system with a capacity, and
//! [`sim::SimFs`], a disk in memory that can lose power. On top of them: writing a file
//! durably, making a rename durable, and the two together to replace a file atomically.
//!
//! Everything the namespace writes goes through [`Fs`]: objects and their sidecars, the
//! catalog, the kernel map and kernel modules. Reads of object data take the read path
//! (`reader`, io_uring or pread on real file descriptors) instead.

mod capped;
pub mod sim;

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use capped::Capped;

use crate::error::{Error, Result};

/// A file being written: bytes go to the end; [`FsFile::sync`] makes them durable.
pub trait FsFile: Write + Send {
    /// Makes what was written durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// File operations of the namespace. Paths are absolute or relative to the process's working
/// directory, as with `std::fs`.
pub trait Fs: Send + Sync + Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or truncates) the file `path` for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable: creations, renames and removals in it.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The paths of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Bytes used and the capacity, when the file system has a capacity of its own.
    fn space(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

struct OsFile(File);

impl Write for OsFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FsFile for OsFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(OsFile(File::create(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Replaces `dst` with `bytes`, atomically and durably: writes `tmp` and fsyncs it, renames it
/// over `dst`, then fsyncs `dst`'s directory. A crash leaves either the old `dst` or the new
/// one; a failure before the rename removes `tmp`. `renaming` is the context of a failed
/// rename. The catalog, the kernel map and kernel modules are all written this way.
pub(crate) fn replace_durable(
    fs: &dyn Fs,
    tmp: &Path,
    dst: &Path,
    bytes: &[u8],
    renaming: &str,
) -> Result<()> {
    if let Err(e) = write_durable(fs, tmp, bytes)
        .and_then(|()| fs.rename(tmp, dst).map_err(|e| Error::io(renaming, e)))
    {
        let _ = fs.remove(tmp);
        return Err(e);
    }
    fsync_dir(
        fs,
        dst.parent()
            .expect("a file in the namespace has a directory"),
    )
}

/// Writes `bytes` to `path` and fsyncs the file.
pub(crate) fn write_durable(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Fsyncs `dir`, making the renames into it durable.
pub(crate) fn fsync_dir(fs: &dyn Fs, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))
}

/// The paths of the entries of `dir`.
pub(super) fn read_dir(fs: &dyn Fs, dir: &Path) -> Result<Vec<PathBuf>> {
    fs.list(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))
}
