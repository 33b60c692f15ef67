//! The catalog, `catalog.json`: which tables exist, their columns and their objects. Loaded
//! at start-up; a change (an upload's commit, a drop) writes the new document durably and only
//! then makes it current. Also the naming rule for tables.

use std::collections::BTreeMap;
use std::path::Path;

use nearstore_proto::{ColumnInfo, ObjectInfo, TableInfo};
use serde::{Deserialize, Serialize};

use super::Storage;
use super::fs::{Fs, replace_durable};
use crate::error::{Error, Result};

const CATALOG_FILE: &str = "catalog.json";
const CATALOG_VERSION: u32 = 1;

/// Catalog document, `catalog.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct CatalogDoc {
    pub(super) version: u32,
    pub(super) tables: BTreeMap<String, TableEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TableEntry {
    pub(super) name: String,
    pub(super) columns: Vec<ColumnInfo>,
    pub(super) objects: Vec<ObjectEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ObjectEntry {
    pub(super) id: String,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) row_groups: u64,
    pub(super) sha256: String,
}

/// Reads the catalog of the namespace in `root`; a namespace without one has no tables yet.
pub(super) fn load(fs: &dyn Fs, root: &Path) -> Result<CatalogDoc> {
    let catalog_path = root.join(CATALOG_FILE);
    let catalog = match fs.read(&catalog_path) {
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
    Ok(catalog)
}

impl Storage {
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

    /// Writes the catalog durably: temp file, fsync, rename, fsync of the directory.
    pub(super) fn write_catalog(&self, doc: &CatalogDoc) -> Result<()> {
        let tmp = self.root.join("tmp").join("catalog.json.tmp");
        let bytes = serde_json::to_vec_pretty(doc).expect("catalog serialises");
        let dst = self.root.join(CATALOG_FILE);
        replace_durable(&*self.fs, &tmp, &dst, &bytes, "renaming the catalog")
    }
}

pub(super) fn describe_columns(cols: &[ColumnInfo]) -> String {
    cols.iter()
        .map(|c| format!("{} {}", c.name, c.data_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `part` is a valid name or name part: 1-128 characters of `[A-Za-z0-9_.-]`. Table
/// names (each of their two parts) and kernel names follow this rule.
pub(crate) fn is_valid_name(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 128
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// A table name: `[tenant/]name`, each part 1-128 characters of `[A-Za-z0-9_.-]` (the server
/// adds the tenant part; callers never send it).
pub(super) fn validate_table_name(name: &str) -> Result<()> {
    let ok = match name.split_once('/') {
        Some((tenant, table)) => is_valid_name(tenant) && is_valid_name(table),
        None => is_valid_name(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidUpload(format!(
            "table name '{name}' must be 1-128 characters of [A-Za-z0-9_.-]"
        )))
    }
}
