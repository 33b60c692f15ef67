//! `kernel new`: a kernel of a kind (filter, map, aggregate) in a language (Rust, C,
//! AssemblyScript) from `templates/`, with the SDK this binary carries written beside it, so
//! it builds anywhere with the `nearstore` binary alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{KernelKindArg, Lang, NewArgs, sdk};

/// The template of a kernel of `kind` in `lang`.
fn template(lang: Lang, kind: KernelKindArg) -> &'static str {
    use KernelKindArg::*;
    match (lang, kind) {
        (Lang::Rust, Filter) => include_str!("templates/filter.rs"),
        (Lang::Rust, Map) => include_str!("templates/map.rs"),
        (Lang::Rust, Aggregate) => include_str!("templates/aggregate.rs"),
        (Lang::C, Filter) => include_str!("templates/filter.c"),
        (Lang::C, Map) => include_str!("templates/map.c"),
        (Lang::C, Aggregate) => include_str!("templates/aggregate.c"),
        (Lang::Assemblyscript, Filter) => include_str!("templates/filter.ts"),
        (Lang::Assemblyscript, Map) => include_str!("templates/map.ts"),
        (Lang::Assemblyscript, Aggregate) => include_str!("templates/aggregate.ts"),
    }
}

/// The command-line name of a value (`assemblyscript`, `aggregate`).
fn label(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Writes `text` to `path`, saying which file failed.
fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs `kernel new`.
pub(super) fn new(a: NewArgs) -> Result<()> {
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
    if a.sdk.is_some() && a.lang != Lang::Rust {
        bail!(
            "--sdk names a Rust SDK crate; a {} kernel gets its SDK file beside it",
            label(a.lang)
        );
    }
    let dir = a.path.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let lib = a.name.replace('-', "_");
    let source = template(a.lang, a.kind)
        .replace("{name}", &a.name)
        .replace("{lib}", &lib);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join(".gitignore"), "/target\n")?;
    let how = match a.lang {
        Lang::Rust => {
            rust_crate(&a, &dir, &source)?;
            "test on the host: cargo test; build for the device"
        }
        Lang::C => {
            write(&dir.join(format!("{lib}.c")), &source)?;
            write(&dir.join("nearstore_kernel.h"), sdk::C_HEADER)?;
            "build for the device (clang and lld)"
        }
        Lang::Assemblyscript => {
            write(&dir.join(format!("{lib}.ts")), &source)?;
            write(&dir.join("nearstore.ts"), sdk::ASSEMBLYSCRIPT_SDK)?;
            "build for the device (installs the pinned AssemblyScript compiler with npm once)"
        }
    };
    println!(
        "created {} {} kernel {} in {} ({how}: nearstore kernel build {}; run it on a \
         Parquet file: nearstore kernel test MODULE --file FILE --args COLUMNS)",
        label(a.lang),
        label(a.kind),
        a.name,
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// A Rust kernel crate: `Cargo.toml`, `src/lib.rs`, and the SDK crates under `sdk/` (or a
/// dependency on the `--sdk` crate).
fn rust_crate(a: &NewArgs, dir: &Path, lib_rs: &str) -> Result<()> {
    let dependency = match &a.sdk {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("the nearstore-kernel SDK is not at {}", p.display()))?,
        None => {
            sdk::write_rust(&dir.join("sdk"))?;
            PathBuf::from("sdk/nearstore-kernel")
        }
    };
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\nnearstore-kernel = {{ path = {sdk:?} }}\n\n\
         [profile.release]\nopt-level = 3\npanic = \"abort\"\nlto = true\ncodegen-units = 1\n\n\
         # A workspace of its own: built for wasm32 by `nearstore kernel build`.\n[workspace]\n",
        name = a.name,
        sdk = dependency.display().to_string(),
    );
    write(&dir.join("Cargo.toml"), &cargo)?;
    std::fs::create_dir_all(dir.join("src"))?;
    write(&dir.join("src/lib.rs"), lib_rs)
}
