//! File-system steps of the namespace: writing a file durably (write, fsync), making a rename
//! durable (fsync of the directory), the two together to replace a file atomically, and
//! listing a directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Replaces `dst` with `bytes`, atomically and durably: writes `tmp` and fsyncs it, renames it
/// over `dst`, then fsyncs `dst`'s directory. A crash leaves either the old `dst` or the new
/// one. `renaming` is the context of a failed rename. The catalog, the kernel map and kernel
/// modules are all written this way.
pub(crate) fn replace_durable(tmp: &Path, dst: &Path, bytes: &[u8], renaming: &str) -> Result<()> {
    write_durable(tmp, bytes)?;
    std::fs::rename(tmp, dst).map_err(|e| Error::io(renaming, e))?;
    fsync_dir(
        dst.parent()
            .expect("a file in the namespace has a directory"),
    )
}

/// Writes `bytes` to `path` and fsyncs the file.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Fsyncs `dir`, making the renames into it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))
}

/// The paths of the entries of `dir`.
pub(super) fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}
