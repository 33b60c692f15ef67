//! The Flight service of one device: what it holds (executor, link, authentication,
//! admission, metrics, counters), and how a call authenticates and how a failure is counted,
//! logged and turned into a status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;

use super::{Auth, Link, Principal, metrics, qos, status};
use crate::error::Error;
use crate::exec::Executor;
use crate::storage::Storage;

/// The Flight service of one device.
#[derive(Debug, Clone)]
pub struct DeviceService {
    pub(super) executor: Arc<Executor>,
    pub(super) link: Arc<Link>,
    pub(super) auth: Arc<Auth>,
    pub(super) admission: Arc<qos::Admission>,
    pub(super) metrics: Arc<metrics::Metrics>,
    pub(super) queries: Arc<AtomicU64>,
    pub(super) errors: Arc<AtomicU64>,
    pub(super) active: Arc<AtomicU64>,
    /// Held while a registration checks the tenant's kernel count and stores the kernel, so
    /// registrations in flight together cannot pass the limit.
    pub(super) registering: Arc<tokio::sync::Mutex<()>>,
}

/// Counts a query as running until dropped.
pub(super) struct Active(Arc<AtomicU64>);

impl Active {
    pub(super) fn new(n: &Arc<AtomicU64>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DeviceService {
    /// A service over `executor` whose results leave through `link`, authenticating callers
    /// with `auth`.
    pub fn new(
        executor: Arc<Executor>,
        link: Arc<Link>,
        auth: Arc<Auth>,
        admission: Arc<qos::Admission>,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        DeviceService {
            executor,
            link,
            auth,
            admission,
            metrics,
            queries: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            active: Arc::new(AtomicU64::new(0)),
            registering: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub(super) fn authenticate(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> std::result::Result<Principal, Status> {
        self.auth.authenticate(md).map_err(|e| self.fail(e))
    }

    pub(super) fn storage(&self) -> &Arc<Storage> {
        self.executor.storage()
    }

    /// Records a failed call of `who` in the metrics, then converts it.
    pub(super) fn fail_for(&self, who: &Principal, e: Error) -> Status {
        self.metrics
            .failed(who.tenant.as_deref().unwrap_or(""), e.code().as_str());
        self.fail(who.visible(e))
    }

    pub(super) fn fail(&self, e: Error) -> Status {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::info!(code = e.code().as_str(), error = %e, "request failed");
        status(&e)
    }
}
