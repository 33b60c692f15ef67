//! `nearstore kernel`: the kernel author's workflow — scaffold, build, test locally in the
//! device's sandbox, register on a device, list, remove.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use clap::{Args, Subcommand};
use nearstore_runtime::compute::wasm::{KernelCall, Sandbox, SandboxConfig};
use nearstore_runtime::plan::{KernelFn, KernelKind};

use crate::{DeviceArg, Format, print_batches};

/// `kernel` subcommands.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Scaffold a filter kernel crate (with a host test) in ./NAME.
    New(NewArgs),
    /// Build kernel crates for the device (wasm32, +simd128, release).
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
    /// Kernel (and crate) name.
    pub name: String,
    /// Directory to create the crate in [default: ./NAME].
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The `nearstore-kernel` SDK crate [default: the one this binary was built with].
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// `kernel build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A kernel crate, or a workspace of kernel crates.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Cargo target directory [default: CARGO_TARGET_DIR, else PATH/target].
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
        KernelCommand::New(a) => new(a),
        KernelCommand::Build(a) => {
            for m in tokio::task::spawn_blocking(move || build(&a.path, a.target_dir.as_deref()))
                .await??
            {
                println!("{}", m.display());
            }
            Ok(())
        }
        KernelCommand::Test(a) => tokio::task::spawn_blocking(move || test(a)).await?,
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

const TEMPLATE_LIB: &str = r#"//! `{name}`: a Nearstore filter kernel. It keeps the rows whose first argument (an int64
//! column) is greater than the number given as the parameter.
//!
//! Build: `nearstore kernel build`; try it: `nearstore kernel test target/wasm32-unknown-unknown/
//! release/{lib}.wasm --file data.parquet --args my_column --params 42`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, KernelResult, Selection, mask_block};

nearstore_kernel::export_filter!({lib});
nearstore_kernel::manifest!(b"abi=1\nkind=filter\nname={name}\nsignature=int64;params=threshold\n");

/// The kernel: one 64-row block at a time, a mask of the rows to keep.
pub fn {lib}(batch: &Batch, sel: &mut Selection) -> KernelResult {
    let text = core::str::from_utf8(batch.params()).map_err(|_| status::BAD_INPUT)?;
    let threshold: i64 = text.trim().parse().map_err(|_| status::BAD_INPUT)?;
    let col = batch.column(0)?;
    let values = col.i64s()?;
    for base in (0..batch.rows()).step_by(BLOCK) {
        let keep = mask_block(values, base, |v| v > threshold) & col.validity_block(base);
        sel.push_mask(base, keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn keeps_values_above_the_threshold() {
        let values: Vec<u8> = [5i64, 50, 42, 43].iter().flat_map(|v| v.to_le_bytes()).collect();
        let col = Column::from_parts(types::INT64, 0, &values, None, None, 4);
        let batch = Batch::from_parts(4, vec![col], b"42");
        let mut out = [0u32; 4];
        let mut sel = Selection::new(&mut out);
        {lib}(&batch, &mut sel).unwrap();
        let n = sel.len();
        assert_eq!(&out[..n], &[1, 3]);
    }
}
"#;

fn new(a: NewArgs) -> Result<()> {
    let valid = !a.name.is_empty()
        && a.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && a.name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !valid {
        bail!(
            "kernel name '{}' must start with a letter and use [A-Za-z0-9_-]",
            a.name
        );
    }
    let dir = a.path.unwrap_or_else(|| PathBuf::from(&a.name));
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let sdk = match a.sdk {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the nearstore-kernel SDK is not at {} (pass --sdk PATH to its crate)",
            sdk.display()
        )
    })?;
    let lib = a.name.replace('-', "_");
    std::fs::create_dir_all(dir.join("src"))?;
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\nnearstore-kernel = {{ path = {sdk:?} }}\n\n\
         [profile.release]\nopt-level = 3\npanic = \"abort\"\nlto = true\ncodegen-units = 1\n\n\
         # A workspace of its own: built for wasm32 by `nearstore kernel build`.\n[workspace]\n",
        name = a.name,
        sdk = sdk.display().to_string(),
    );
    std::fs::write(dir.join("Cargo.toml"), cargo)?;
    std::fs::write(
        dir.join("src/lib.rs"),
        TEMPLATE_LIB
            .replace("{name}", &a.name)
            .replace("{lib}", &lib),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!(
        "created kernel crate {} (test on the host: cargo test; build for the device: \
         nearstore kernel build {})",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Builds the kernel crate(s) at `path` for wasm32 (+simd128, release); returns the modules.
pub fn build(path: &Path, target_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {} (is this a kernel crate?)", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let package_name = |doc: &toml::Table| -> Option<String> {
        doc.get("package")?
            .get("name")?
            .as_str()
            .map(str::to_string)
    };
    let mut libs = Vec::new();
    if let Some(n) = package_name(&doc) {
        libs.push(n);
    } else if let Some(members) = doc
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
    {
        for m in members.iter().filter_map(|m| m.as_str()) {
            let p = path.join(m).join("Cargo.toml");
            let t: toml::Table = toml::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("parsing {}", p.display()))?;
            libs.push(package_name(&t).with_context(|| format!("{} has no package", p.display()))?);
        }
    } else {
        bail!(
            "{} has neither a package nor workspace members",
            manifest.display()
        );
    }

    ensure_wasm_target()?;
    let target_dir = match target_dir {
        Some(t) => t.to_path_buf(),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| path.join("target")),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(path)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build of the kernel failed ({status}); its messages are above");
    }
    let out = target_dir.join("wasm32-unknown-unknown").join("release");
    libs.iter()
        .map(|l| {
            let m = out.join(format!("{}.wasm", l.replace('-', "_")));
            if m.exists() {
                Ok(m)
            } else {
                bail!(
                    "{} was not produced: is the crate's crate-type \"cdylib\"?",
                    m.display()
                )
            }
        })
        .collect()
}

/// Installs the wasm32 target with rustup when it is missing.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown") => Ok(()),
        Ok(_) => {
            eprintln!("installing the wasm32-unknown-unknown target with rustup");
            let s = Command::new("rustup")
                .args(["target", "add", "wasm32-unknown-unknown"])
                .status()
                .context("running rustup")?;
            if !s.success() {
                bail!("rustup target add wasm32-unknown-unknown failed");
            }
            Ok(())
        }
        // No rustup: let cargo say whether the target is there.
        Err(_) => Ok(()),
    }
}

/// Counters of a local kernel run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TestRun {
    /// Rows read from the file.
    pub rows: u64,
    /// Batches handed to the kernel.
    pub batches: u64,
    /// The kernel's kind (`filter`, `map`, `aggregate`).
    pub kind: String,
    /// Rows the kernel selected (a filter), non-NULL values it mapped (a map), or values in
    /// its result (an aggregate over the whole file, one group).
    pub selected: u64,
    /// Time in the kernel (marshalling included).
    pub kernel_time: Duration,
    /// The first selected rows.
    pub sample: Vec<RecordBatch>,
}

/// Runs `module` over `file` in a sandbox configured as the device's.
pub fn run_local(
    module: &[u8],
    file: &Path,
    args: &[String],
    params: &str,
    limit: usize,
) -> Result<(String, TestRun)> {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
    let program = sandbox
        .load(module)
        .map_err(|e| anyhow::anyhow!("the device would refuse this module: {e}"))?;
    let label = format!("{} (sha256 {})", program.name, &program.id[..16]);
    let name = program.name.clone();
    let kind = program.kind;
    let call = KernelCall::new(&name, program, sandbox, params, None);
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a readable Parquet file", file.display()))?
        .with_batch_size(8192)
        .build()?;
    let mut run = TestRun {
        kind: kind.as_str().to_string(),
        ..Default::default()
    };
    let mut shown = 0usize;
    for batch in reader {
        let batch = batch?;
        let cols = args
            .iter()
            .map(|a| {
                batch.column_by_name(a).cloned().with_context(|| {
                    let have: Vec<String> = batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    format!("the file has no column '{a}' (it has {})", have.join(", "))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        run.rows += batch.num_rows() as u64;
        run.batches += 1;
        match kind {
            KernelKind::Filter => {
                let mask = call.eval(batch.num_rows(), &cols)?;
                run.kernel_time += t.elapsed();
                let mask = mask.as_boolean();
                run.selected += mask.true_count() as u64;
                if shown < limit {
                    let kept = arrow::compute::filter_record_batch(&batch, mask)?;
                    let take = kept.num_rows().min(limit - shown);
                    shown += take;
                    run.sample.push(kept.slice(0, take));
                }
            }
            KernelKind::Map => {
                let values = call.eval(batch.num_rows(), &cols)?;
                run.kernel_time += t.elapsed();
                run.selected += (values.len() - values.null_count()) as u64;
                if shown < limit {
                    let mut fields: Vec<(String, ArrayRef)> =
                        args.iter().cloned().zip(cols.iter().cloned()).collect();
                    fields.push((name.clone(), values));
                    let out = RecordBatch::try_from_iter(fields)?;
                    let take = out.num_rows().min(limit - shown);
                    shown += take;
                    run.sample.push(out.slice(0, take));
                }
            }
            KernelKind::Aggregate => {
                call.update_groups(batch.num_rows(), None, 1, &cols)?;
                run.kernel_time += t.elapsed();
            }
        }
    }
    if kind == KernelKind::Aggregate {
        let t = Instant::now();
        let result = call.finish_groups(1)?;
        run.kernel_time += t.elapsed();
        run.selected = match result.as_list_opt::<i32>() {
            Some(l) => l.value(0).len() as u64,
            None => (result.len() - result.null_count()) as u64,
        };
        run.sample
            .push(RecordBatch::try_from_iter([(name.clone(), result)])?);
    }
    Ok((label, run))
}

fn test(a: TestArgs) -> Result<()> {
    let module =
        std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let (label, run) = run_local(&module, &a.file, &a.args, &a.params, a.limit)?;
    if let Some(first) = run.sample.first() {
        print_batches(&run.sample, &first.schema(), a.format)?;
    }
    let what = match run.kind.as_str() {
        "filter" => format!("{} of {} rows selected", run.selected, run.rows),
        "map" => format!("{} non-NULL values for {} rows", run.selected, run.rows),
        _ => format!(
            "{} rows aggregated into one group ({} values)",
            run.rows, run.selected
        ),
    };
    eprintln!(
        "kernel {label}: {what} in {} batches; {:.2} ms in the kernel (sandbox limits as on \
         the device)",
        run.batches,
        run.kernel_time.as_secs_f64() * 1e3
    );
    Ok(())
}
