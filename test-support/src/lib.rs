//! Fixtures shared by the tests (`tests/`), the benches (`benches/`) and the fuzz targets
//! (`fuzz/`): hand-written Wasm kernels, well-formed and hostile, assembled from WAT.
//!
//! A device in a child process (`nearstore serve`) is started by `nearstore::serve_process`,
//! beside the code that prints the start-up line it reads.

#![forbid(unsafe_code)]

pub mod hostile;
pub mod kernel;
