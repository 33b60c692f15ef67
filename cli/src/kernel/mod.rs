//! `nearstore kernel`: the kernel author's workflow — scaffold (Rust, C or AssemblyScript;
//! filter, map or aggregate), build, test locally in the device's sandbox, register on a
//! device, list, remove.
//!
//! | file | what |
//! |---|---|
//! | `scaffold.rs` | `kernel new`: a kernel from `templates/`, with the SDK beside it |
//! | `sdk.rs` | the SDK sources this binary carries, and their agreement with the ABI |
//! | `compile.rs` | `kernel build`: cargo, clang or the AssemblyScript compiler, then a check |
//! | `local.rs` | `kernel test`: a module run on a Parquet file in a local sandbox |

mod compile;
mod local;
mod scaffold;
pub mod sdk;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::{DeviceArg, Format};

pub use compile::build;
pub use local::{TestRun, run_local};

/// `kernel` subcommands.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Scaffold a kernel (filter, map or aggregate; Rust, C or AssemblyScript) in ./NAME,
    /// with this binary's SDK beside it.
    New(NewArgs),
    /// Build kernels for the device (wasm32, +simd128, optimised): a Rust crate or workspace,
    /// a C or AssemblyScript file, or a directory of them.
    Build(BuildArgs),
    /// Run a kernel on a Parquet file in the device's sandbox, with the device's limits.
    Test(TestArgs),
    /// Register a kernel module on a device under a name.
    Register(RegisterArgs),
    /// List the kernels registered on a device.
    List(DeviceArg),
    /// Remove a kernel name from a device.
    Remove(RemoveArgs),
}

/// `kernel new` arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Kernel name.
    pub name: String,
    /// What the kernel computes: a row filter, one value per row, or a per-group aggregate.
    #[arg(long, value_enum, default_value_t = KernelKindArg::Filter)]
    pub kind: KernelKindArg,
    /// The language it is written in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Directory to create the kernel in [default: ./NAME].
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// A Rust kernel: depend on this `nearstore-kernel` crate instead of writing the SDK this
    /// binary carries beside the kernel.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// A kernel's kind, for `kernel new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelKindArg {
    /// Keeps rows (`WHERE name(col, 'params')`).
    Filter,
    /// One value per row (`SELECT name(col, 'params')`).
    Map,
    /// One value per group (`SELECT g, name(col) … GROUP BY g`).
    Aggregate,
}

/// A kernel's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust crate on the `nearstore-kernel` SDK (cargo, the wasm32 target).
    Rust,
    /// One C file on `nearstore_kernel.h` (clang and lld).
    C,
    /// One AssemblyScript file on `nearstore.ts` (the AssemblyScript compiler, via npm).
    #[value(alias = "as")]
    Assemblyscript,
}

/// `kernel build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A kernel crate or workspace of crates, a `.c` or `.ts` kernel file, or a directory of
    /// such files.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Where modules go [default: CARGO_TARGET_DIR for Rust, else PATH/target]; C and
    /// AssemblyScript modules go to TARGET/wasm32/NAME.wasm.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
}

/// `kernel test` arguments.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The kernel module (.wasm).
    pub module: PathBuf,
    /// Parquet file to run it on.
    #[arg(long)]
    pub file: PathBuf,
    /// Columns handed to the kernel, in order (comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub args: Vec<String>,
    /// Parameters handed to the kernel (text).
    #[arg(long, default_value = "")]
    pub params: String,
    /// Selected rows to print at most.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Output format of the rows.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `kernel register` arguments.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The kernel module (.wasm).
    pub module: PathBuf,
    /// Name to register it under [default: the file name without .wasm].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `kernel remove` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Kernel name.
    pub name: String,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Runs a `kernel` subcommand.
pub async fn run(cmd: KernelCommand) -> Result<()> {
    match cmd {
        KernelCommand::New(a) => scaffold::new(a),
        KernelCommand::Build(a) => {
            for m in tokio::task::spawn_blocking(move || build(&a.path, a.target_dir.as_deref()))
                .await??
            {
                println!("{}", m.display());
            }
            Ok(())
        }
        KernelCommand::Test(a) => tokio::task::spawn_blocking(move || local::test(a)).await?,
        KernelCommand::Register(a) => {
            let bytes = std::fs::read(&a.module)
                .with_context(|| format!("reading {}", a.module.display()))?;
            let name = match a.name {
                Some(n) => n,
                None => a
                    .module
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("the module's file name is not UTF-8; pass --name")?
                    .to_string(),
            };
            let mut c = a.device.connect().await?;
            let info = c.register_kernel(&name, &bytes).await?;
            println!(
                "registered kernel {} ({}, {} bytes, sha256 {})",
                info.name, info.kind, info.bytes, info.sha256
            );
            Ok(())
        }
        KernelCommand::List(d) => {
            let mut c = d.connect().await?;
            for k in c.kernels().await? {
                println!("{}\t{}\t{}\t{}", k.name, k.kind, k.bytes, k.sha256);
            }
            Ok(())
        }
        KernelCommand::Remove(a) => {
            let mut c = a.device.connect().await?;
            c.remove_kernel(&a.name).await?;
            println!("removed kernel {}", a.name);
            Ok(())
        }
    }
}
