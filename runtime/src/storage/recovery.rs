//! Opening the namespace after a clean stop or a crash: directories created, `tmp/` emptied
//! (uploads in progress are lost), the catalog loaded, and the files of uploads that never
//! committed (in `objects/` but not in the catalog) removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use super::fs::{Fs, OsFs, read_dir};
use super::reader::Reader;
use super::{Storage, WriteConfig, catalog, kernels};
use crate::error::{Error, Result};

impl Storage {
    /// Opens (creating if needed) the namespace in `root`: empties `tmp/`, loads the catalog,
    /// and removes objects the catalog does not name (left by a crash before commit).
    pub fn open(root: impl Into<PathBuf>, reader: Reader, write: WriteConfig) -> Result<Self> {
        Self::open_on(Arc::new(OsFs), root, reader, write)
    }

    /// Like [`Storage::open`], with the namespace's files written through `fs`.
    pub fn open_on(
        fs: Arc<dyn Fs>,
        root: impl Into<PathBuf>,
        reader: Reader,
        write: WriteConfig,
    ) -> Result<Self> {
        let root = root.into();
        for d in [root.clone(), root.join("objects"), root.join("tmp")] {
            fs.create_dir_all(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let tmp = root.join("tmp");
        for entry in read_dir(&*fs, &tmp)? {
            let _ = fs.remove(&entry);
        }
        let catalog = catalog::load(&*fs, &root)?;
        let live: std::collections::HashSet<String> = catalog
            .tables
            .values()
            .flat_map(|t| t.objects.iter().map(|o| o.id.clone()))
            .collect();
        let mut removed = 0;
        for path in read_dir(&*fs, &root.join("objects"))? {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !live.contains(&stem) {
                let _ = fs.remove(&path);
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
            kernels: kernels::KernelStore::open_on(fs.clone(), &root_for_kernels)?,
            fs,
            hot: Arc::default(),
        })
    }
}
