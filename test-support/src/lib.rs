//! Fixtures shared by the tests (`tests/`), the benches (`benches/`) and the fuzz targets
//! (`fuzz/`): hand-written Wasm kernels, well-formed and hostile, assembled from WAT; with the
//! `arrow` feature, the example kernels' generated table and result rows as text.
//!
//! A device in a child process (`nearstore serve`) is started by `nearstore::serve_process`,
//! beside the code that prints the start-up line it reads.

#![forbid(unsafe_code)]

#[cfg(feature = "arrow")]
pub mod example_data;
pub mod hostile;
pub mod kernel;
#[cfg(feature = "arrow")]
pub mod rows;
