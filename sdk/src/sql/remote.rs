//! Remote scan ([`Mode::RemoteScan`](super::Mode::RemoteScan)): what a host does without
//! offload when it can reach the drive's files (NVMe-oF, an object store). The host's own
//! Parquet reader — DataFusion's, with row-group and page-index pruning and the filter pushed
//! into the decoder — runs over the objects the device stores, fetching only the byte ranges
//! it needs, compressed, with the device's `read_ranges` action.
//!
//! [`DeviceStore`] is that access as an [`ObjectStore`]: one store for all of a session's
//! devices, each table's objects at `d<device>/<table>/<object id>.parquet`, read-only. It
//! counts the calls and bytes it receives, which is what a remote scan moves.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::{Client, Error};

/// The URL the session registers the store under; table paths are below it.
pub(super) const STORE_URL: &str = "nearstore://devices";

/// What a remote scan moved: `read_ranges` calls, ranges and bytes received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemoteReads {
    /// `read_ranges` calls (one per `get_ranges` / `get_opts` of the Parquet reader).
    pub calls: u64,
    /// Byte ranges asked for.
    pub ranges: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Wall time during which at least one `read_ranges` call was in flight, µs: the part of
    /// a remote scan spent waiting on the devices and the link.
    pub fetch_us: u64,
}

/// The devices' stored objects as a read-only object store.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One client per device, in the session's order (`d0`, `d1`, …).
    devices: Vec<Client>,
    /// Objects listed so far, by path (their size is needed to answer suffix reads).
    objects: Mutex<HashMap<Path, ObjectMeta>>,
    reads: Mutex<RemoteReads>,
    /// Calls in flight, and since when at least one has been.
    in_flight: Mutex<(u32, Option<std::time::Instant>)>,
}

/// Counts a `read_ranges` call as in flight until dropped (a cancelled call included).
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        let mut f = inner.in_flight.lock().expect("calls in flight");
        if f.0 == 0 {
            f.1 = Some(std::time::Instant::now());
        }
        f.0 += 1;
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut f = self.0.in_flight.lock().expect("calls in flight");
        f.0 -= 1;
        if f.0 == 0
            && let Some(since) = f.1.take()
        {
            self.0.reads.lock().expect("remote reads").fetch_us +=
                since.elapsed().as_micros() as u64;
        }
    }
}

/// Where a path points: device index, table, object id.
#[derive(Debug)]
struct Located {
    device: usize,
    table: String,
    object: String,
}

impl fmt::Display for DeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.inner.devices.iter().map(Client::url).collect();
        write!(f, "DeviceStore({})", urls.join(", "))
    }
}

/// The path of `table`'s objects on device `device`, below [`STORE_URL`].
pub(super) fn table_dir(device: usize, table: &str) -> String {
    format!("d{device}/{table}/")
}

fn store_err(e: Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "nearstore",
        source: Box::new(e),
    }
}

fn read_only(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what}: a device's objects are read-only to a remote scan").into(),
    }
}

impl DeviceStore {
    /// A store over `devices` (device `i` is `d<i>` in paths).
    pub fn new(devices: Vec<Client>) -> Self {
        DeviceStore {
            inner: Arc::new(Inner {
                devices,
                objects: Mutex::default(),
                reads: Mutex::default(),
                in_flight: Mutex::default(),
            }),
        }
    }

    /// What was read since the last call, and the count reset.
    pub fn take_reads(&self) -> RemoteReads {
        std::mem::take(&mut *self.inner.reads.lock().expect("remote reads"))
    }
}

impl Inner {
    fn locate(&self, location: &Path) -> object_store::Result<Located> {
        let not_found = || object_store::Error::NotFound {
            path: location.to_string(),
            source: "not a device object path (d<device>/<table>/<object>.parquet)".into(),
        };
        let parts: Vec<String> = location.parts().map(|p| p.as_ref().to_string()).collect();
        let [device, table, file] = parts.as_slice() else {
            return Err(not_found());
        };
        let device: usize = device
            .strip_prefix('d')
            .and_then(|d| d.parse().ok())
            .filter(|d| *d < self.devices.len())
            .ok_or_else(not_found)?;
        let object = file.strip_suffix(".parquet").ok_or_else(not_found)?;
        Ok(Located {
            device,
            table: table.clone(),
            object: object.to_string(),
        })
    }

    /// The objects of `table` on `device`, remembered for later size look-ups.
    async fn list_table(
        &self,
        device: usize,
        table: &str,
    ) -> object_store::Result<Vec<ObjectMeta>> {
        let mut client = self.devices[device].clone();
        let info = client.describe(table).await.map_err(store_err)?;
        let metas: Vec<ObjectMeta> = info
            .objects
            .iter()
            .map(|o| ObjectMeta {
                location: Path::from(format!("{}{}.parquet", table_dir(device, table), o.id)),
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size: o.bytes,
                // Objects are immutable: a replaced table gets new object ids.
                e_tag: Some(o.sha256.clone()),
                version: None,
            })
            .collect();
        let mut known = self.objects.lock().expect("object list");
        for m in &metas {
            known.insert(m.location.clone(), m.clone());
        }
        Ok(metas)
    }

    /// Every object under `prefix`.
    async fn list_under(&self, prefix: Option<&Path>) -> object_store::Result<Vec<ObjectMeta>> {
        let parts: Vec<String> = prefix
            .map(|p| p.parts().map(|s| s.as_ref().to_string()).collect())
            .unwrap_or_default();
        let devices: Vec<usize> = match parts.first() {
            None => (0..self.devices.len()).collect(),
            Some(d) => match d.strip_prefix('d').and_then(|d| d.parse().ok()) {
                Some(d) if d < self.devices.len() => vec![d],
                _ => return Ok(Vec::new()),
            },
        };
        let mut out = Vec::new();
        for device in devices {
            let tables = match parts.get(1) {
                Some(t) => vec![t.clone()],
                None => {
                    let mut client = self.devices[device].clone();
                    let tables = client.tables().await.map_err(store_err)?;
                    tables.into_iter().map(|t| t.name).collect()
                }
            };
            for table in tables {
                out.extend(self.list_table(device, &table).await?);
            }
        }
        if let Some(p) = prefix {
            out.retain(|m| m.location.prefix_matches(p));
        }
        Ok(out)
    }

    /// An object's metadata: from the listing, or listed now.
    async fn meta(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        if let Some(m) = self.objects.lock().expect("object list").get(location) {
            return Ok(m.clone());
        }
        let at = self.locate(location)?;
        self.list_table(at.device, &at.table)
            .await?
            .into_iter()
            .find(|m| &m.location == location)
            .ok_or_else(|| object_store::Error::NotFound {
                path: location.to_string(),
                source: format!("table '{}' has no object '{}'", at.table, at.object).into(),
            })
    }

    /// One `read_ranges` call.
    async fn fetch(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let at = self.locate(location)?;
        let mut client = self.devices[at.device].clone();
        let in_flight = InFlight::new(self);
        let (bytes, received) = client
            .read_ranges(&at.table, &at.object, ranges)
            .await
            .map_err(store_err)?;
        drop(in_flight);
        let mut reads = self.reads.lock().expect("remote reads");
        reads.calls += 1;
        reads.ranges += ranges.len() as u64;
        reads.bytes += received;
        Ok(bytes)
    }
}

#[async_trait]
impl ObjectStore for DeviceStore {
    async fn put_opts(
        &self,
        location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only(&format!("put {location}")))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only(&format!("put {location}")))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let meta = self.inner.meta(location).await?;
        let range = match &options.range {
            Some(r) => r
                .as_range(meta.size)
                .map_err(|e| object_store::Error::Generic {
                    store: "nearstore",
                    source: Box::new(e),
                })?,
            None => 0..meta.size,
        };
        let body = if options.head {
            Bytes::new()
        } else {
            let mut got = self
                .inner
                .fetch(location, std::slice::from_ref(&range))
                .await?;
            got.pop().unwrap_or_default()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        // All of a decoder step's ranges in one call: one round trip, as a reader over
        // NVMe-oF would queue them together.
        self.inner.fetch(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations
            .map(|p| p.and_then(|p| Err(read_only(&format!("delete {p}")))))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        stream::once(async move { inner.list_under(prefix.as_ref()).await })
            .flat_map(|r| match r {
                Ok(metas) => stream::iter(metas.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let depth = prefix.map_or(0, |p| p.parts().count());
        let mut common_prefixes: Vec<Path> = Vec::new();
        let mut objects = Vec::new();
        for m in self.inner.list_under(prefix).await? {
            let parts: Vec<_> = m.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(m);
            } else {
                let dir = Path::from_iter(parts.into_iter().take(depth + 1));
                if !common_prefixes.contains(&dir) {
                    common_prefixes.push(dir);
                }
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only(&format!("copy {from} to {to}")))
    }
}
