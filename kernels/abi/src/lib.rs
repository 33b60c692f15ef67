//! The Nearstore kernel ABI shared by the device (host) and kernels (guest).
//!
//! This leaf crate is `no_std` so guest kernels compiled for `wasm32-unknown-unknown` can use
//! it. It fixes the ABI version and the names of the exports the device looks for.
#![no_std]

/// ABI version spoken by this build. A kernel exports it as the value of [`EXPORT_ABI_VERSION`].
pub const ABI_VERSION: u32 = 1;

/// Exported function returning the kernel's ABI version.
pub const EXPORT_ABI_VERSION: &str = "nearstore_abi_version";

/// Name of the custom section holding the kernel manifest.
pub const MANIFEST_SECTION: &str = "nearstore.manifest";
