//! Registered kernels: `kernels/<sha256>.wasm` modules and `kernels.json`, a map from names
//! (scoped to their tenant, like tables) to module hashes. Registration writes the module
//! durably (temp file, fsync, rename) before the map, and the map the same way, so a crash
//! leaves either the old or the new registration. A name is an alias: registering a new module
//! under it replaces the alias; a module no name refers to any more is deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use nearstore_proto::KernelInfo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fs::{Fs, OsFs, read_dir, replace_durable};
use crate::error::{Error, Result};

const MAP_FILE: &str = "kernels.json";
const MAP_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    sha256: String,
    kind: String,
    /// Output type of map and aggregate kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MapDoc {
    version: u32,
    kernels: BTreeMap<String, Entry>,
}

/// The device's registered kernels.
#[derive(Debug)]
pub struct KernelStore {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    map: RwLock<BTreeMap<String, Entry>>,
}

fn module_name(sha: &str) -> String {
    format!("{sha}.wasm")
}

impl KernelStore {
    /// Opens (or creates) the kernel store under the namespace `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_on(Arc::new(OsFs), root)
    }

    /// Like [`KernelStore::open`], with its files written through `fs`.
    pub fn open_on(fs: Arc<dyn Fs>, root: &Path) -> Result<Self> {
        let dir = root.join("kernels");
        fs.create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = root.join(MAP_FILE);
        let map = match fs.read(&path) {
            Ok(bytes) => {
                let doc: MapDoc = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Internal(format!("{} is unreadable: {e}", path.display()))
                })?;
                if doc.version != MAP_VERSION {
                    return Err(Error::Internal(format!(
                        "{} has version {}, this device reads {MAP_VERSION}",
                        path.display(),
                        doc.version
                    )));
                }
                doc.kernels
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io("reading the kernel map", e)),
        };
        let store = KernelStore {
            fs,
            root: root.to_path_buf(),
            map: RwLock::new(map),
        };
        store.collect_garbage(&store.map.read().expect("kernel map"))?;
        Ok(store)
    }

    /// Deletes module files `map` (the current map, its lock held by the caller, so no
    /// registration runs meanwhile) does not refer to: left by a crash or a failure between
    /// storing a module and naming it, or by a name moved elsewhere.
    fn collect_garbage(&self, map: &BTreeMap<String, Entry>) -> Result<()> {
        let live: std::collections::HashSet<String> =
            map.values().map(|e| module_name(&e.sha256)).collect();
        for path in read_dir(&*self.fs, &self.root.join("kernels"))? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !live.contains(&name) {
                let _ = self.fs.remove(&path);
            }
        }
        Ok(())
    }

    fn write_map(&self, map: &BTreeMap<String, Entry>) -> Result<()> {
        let doc = MapDoc {
            version: MAP_VERSION,
            kernels: map.clone(),
        };
        let tmp = self.root.join("tmp").join("kernels.json.tmp");
        replace_durable(
            &*self.fs,
            &tmp,
            &self.root.join(MAP_FILE),
            &serde_json::to_vec_pretty(&doc).expect("map serialises"),
            "renaming the kernel map",
        )
    }

    /// Registers `module` (already validated by the sandbox) under `name`, replacing what the
    /// name referred to.
    pub fn register(
        &self,
        name: &str,
        module: &[u8],
        kind: &str,
        output: Option<&str>,
    ) -> Result<KernelInfo> {
        let sha = hex::encode(Sha256::digest(module));
        let dst = self.root.join("kernels").join(module_name(&sha));
        // Held from storing the module to naming it, so garbage collection never sees one
        // without the other.
        let mut map = self.map.write().expect("kernel map");
        if !self.fs.exists(&dst) {
            let tmp = self.root.join("tmp").join(format!("{sha}.wasm.tmp"));
            if let Err(e) =
                replace_durable(&*self.fs, &tmp, &dst, module, "storing the kernel module")
            {
                // The rename may have happened before a failed directory fsync.
                let _ = self.collect_garbage(&map);
                return Err(e);
            }
        }
        let mut next = map.clone();
        next.insert(
            name.to_string(),
            Entry {
                sha256: sha.clone(),
                kind: kind.to_string(),
                output: output.map(str::to_string),
                bytes: module.len() as u64,
            },
        );
        if let Err(e) = self.write_map(&next) {
            // The module stored above is named by nothing.
            let _ = self.collect_garbage(&map);
            return Err(e);
        }
        *map = next;
        self.collect_garbage(&map)?;
        Ok(KernelInfo {
            name: name.to_string(),
            sha256: sha,
            kind: kind.to_string(),
            output: output.map(str::to_string),
            bytes: module.len() as u64,
        })
    }

    /// Removes the name `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut map = self.map.write().expect("kernel map");
        if !map.contains_key(name) {
            return Err(Error::UnknownKernel(name.to_string()));
        }
        let mut next = map.clone();
        next.remove(name);
        self.write_map(&next)?;
        *map = next;
        self.collect_garbage(&map)
    }

    /// Registered kernels, by name.
    pub fn list(&self) -> Vec<KernelInfo> {
        self.map
            .read()
            .expect("kernel map")
            .iter()
            .map(|(name, e)| KernelInfo {
                name: name.clone(),
                sha256: e.sha256.clone(),
                kind: e.kind.clone(),
                output: e.output.clone(),
                bytes: e.bytes,
            })
            .collect()
    }

    /// The module `name` refers to, checked against its hash.
    pub fn module(&self, name: &str) -> Result<Vec<u8>> {
        let sha = self
            .map
            .read()
            .expect("kernel map")
            .get(name)
            .map(|e| e.sha256.clone())
            .ok_or_else(|| Error::UnknownKernel(name.to_string()))?;
        let path = self.root.join("kernels").join(module_name(&sha));
        let bytes = self
            .fs
            .read(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if hex::encode(Sha256::digest(&bytes)) != sha {
            return Err(Error::CorruptObject {
                object: module_name(&sha),
                detail: "the kernel module no longer matches its SHA-256".into(),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_alias_modules_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let s = KernelStore::open(dir.path()).unwrap();
        let a = s
            .register("t/grep", b"\0asm module a", "filter", None)
            .unwrap();
        s.register("t/grep2", b"\0asm module a", "filter", None)
            .unwrap();
        assert_eq!(s.module("t/grep").unwrap(), b"\0asm module a");
        // Re-registering a name points it at the new module; the old one stays for grep2.
        let b = s
            .register("t/grep", b"\0asm module b", "filter", None)
            .unwrap();
        assert_ne!(a.sha256, b.sha256);
        let files = || {
            std::fs::read_dir(dir.path().join("kernels"))
                .unwrap()
                .count()
        };
        assert_eq!(files(), 2);
        s.remove("t/grep2").unwrap();
        assert_eq!(files(), 1, "module a is no longer referred to");
        assert!(matches!(s.remove("t/nope"), Err(Error::UnknownKernel(_))));
        drop(s);
        let s = KernelStore::open(dir.path()).unwrap();
        assert_eq!(s.list().len(), 1);
        assert_eq!(s.module("t/grep").unwrap(), b"\0asm module b");
    }
}
