//! Connecting to a device from the command line's arguments: the client options of
//! [`DeviceArg`] and the certificate authority file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nearstore_sdk::{Client, ClientOptions};

use crate::DeviceArg;

/// Reads a CA file for the client options.
pub(crate) fn read_ca(p: &Option<PathBuf>) -> Result<Option<Vec<u8>>> {
    p.as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

impl DeviceArg {
    /// A client for the device.
    pub async fn connect(&self) -> Result<Client> {
        let opts = ClientOptions {
            token: self.token.clone(),
            request_timeout: Duration::from_secs(self.timeout_secs),
            tls_ca_pem: read_ca(&self.tls_ca)?,
            ..Default::default()
        };
        Client::connect_with(&self.device, opts)
            .await
            .with_context(|| format!("connecting to the device at {}", self.device))
    }
}
