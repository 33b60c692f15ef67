//! Builds the built-in kernels (`kernels/builtin`) for `wasm32-unknown-unknown` with `+simd128`
//! and hands the module to the runtime (`include_bytes!` of `$OUT_DIR/builtin.wasm`), as
//! wasmtime's test-programs artifacts do. The kernels are a workspace of their own, built into a
//! target directory under `OUT_DIR` so the nested cargo never waits on the outer build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernels = manifest.join("..").join("kernels");
    for dir in [
        "builtin/src",
        "builtin/Cargo.toml",
        "sdk/src",
        "sdk/Cargo.toml",
        "abi/src",
    ] {
        println!("cargo:rerun-if-changed={}", kernels.join(dir).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = out.join("kernels-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(kernels.join("builtin"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--quiet",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("running cargo for the built-in kernels");
    if !status.success() {
        panic!(
            "building the built-in Wasm kernels failed; is the target installed? \
             Run `rustup target add wasm32-unknown-unknown` (scripts/setup.sh does)."
        );
    }
    let wasm = target_dir
        .join("wasm32-unknown-unknown")
        .join("release")
        .join("nearstore_builtin_kernels.wasm");
    std::fs::copy(&wasm, out.join("builtin.wasm")).expect("copying the built-in kernel module");
}
