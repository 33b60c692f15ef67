//! `kernel build`: a kernel's source to a module the device takes. A Rust crate (or workspace
//! of crates) through cargo for wasm32 with +simd128; a C file through clang and lld; an
//! AssemblyScript file through the pinned AssemblyScript compiler, which this installs with
//! npm into a cache directory it names, with the manifest from the file's
//! `// nearstore.manifest key=value` lines added as the module's custom section. Each module
//! built is then loaded into a sandbox configured as the device's, so what the device would
//! refuse is said here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nearstore_runtime::compute::wasm::{Sandbox, SandboxConfig};

use super::sdk;

/// Builds the kernel(s) at `path` (a Rust crate or workspace, a `.c` or `.ts` file, or a
/// directory of such files); returns the modules, each checked as the device would.
pub fn build(path: &Path, target_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let modules = if path.is_file() {
        let target = target_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("target"));
        vec![build_file(path, &target)?]
    } else if path.join("Cargo.toml").exists() {
        build_rust(path, target_dir)?
    } else {
        let mut sources: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_kernel_source(p))
            .collect();
        if sources.is_empty() {
            bail!(
                "{} holds no kernel: no Cargo.toml, and no .c or .ts kernel file",
                path.display()
            );
        }
        sources.sort();
        let target = target_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.join("target"));
        sources
            .iter()
            .map(|s| build_file(s, &target))
            .collect::<Result<_>>()?
    };
    check(&modules)?;
    Ok(modules)
}

/// Whether `p` is a C or AssemblyScript kernel (not the SDK module or a declaration file).
fn is_kernel_source(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    p.is_file()
        && (name.ends_with(".c") || (name.ends_with(".ts") && !name.ends_with(".d.ts")))
        && name != "nearstore.ts"
}

/// Loads each module as the device would, so a module it would refuse fails the build.
fn check(modules: &[PathBuf]) -> Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    for m in modules {
        let bytes = std::fs::read(m).with_context(|| format!("reading {}", m.display()))?;
        sandbox.load(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} was built, but the device would refuse it: {e}",
                m.display()
            )
        })?;
    }
    Ok(())
}

/// Builds one C or AssemblyScript kernel file into `target/wasm32/STEM.wasm`.
fn build_file(src: &Path, target: &Path) -> Result<PathBuf> {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the kernel file's name is not UTF-8")?;
    let out_dir = target.join("wasm32");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = std::path::absolute(out_dir.join(format!("{stem}.wasm")))?;
    match src.extension().and_then(|e| e.to_str()) {
        Some("c") => build_c(src, &out)?,
        Some("ts") => build_assemblyscript(src, &out)?,
        _ => bail!(
            "{} is not a kernel source: kernel build takes a Rust crate, a .c or a .ts file",
            src.display()
        ),
    }
    Ok(out)
}

/// Whether `tool --version` runs.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// clang for wasm32 (+simd128, bulk memory, -O3), no libc, linked by lld's wasm-ld.
fn build_c(src: &Path, out: &Path) -> Result<()> {
    let clang = std::env::var("NEARSTORE_CLANG").unwrap_or_else(|_| "clang".into());
    if !runs(&clang) || !runs("wasm-ld") {
        bail!(
            "C kernels are built with clang and lld's wasm-ld, and {} is not installed \
             (Debian: apt-get install clang lld; the project's scripts/setup.sh installs them)",
            if runs(&clang) {
                "wasm-ld"
            } else {
                clang.as_str()
            }
        );
    }
    let status = Command::new(&clang)
        .args([
            "--target=wasm32",
            "-msimd128",
            "-mbulk-memory",
            "-O3",
            "-nostdlib",
            "-Wall",
            "-Wl,--no-entry",
            "-o",
        ])
        .arg(out)
        .arg(src)
        .status()
        .context("running clang")?;
    if !status.success() {
        bail!(
            "clang failed on {} ({status}); its messages are above",
            src.display()
        );
    }
    Ok(())
}

/// The manifest of an AssemblyScript kernel: its `// nearstore.manifest key=value` lines.
fn assemblyscript_manifest(src: &Path, text: &str) -> Result<String> {
    let mut manifest = String::new();
    for line in text.lines() {
        if let Some(kv) = line.trim().strip_prefix("// nearstore.manifest ") {
            if !kv.contains('=') {
                bail!(
                    "{}: manifest line '{}' is not key=value",
                    src.display(),
                    line.trim()
                );
            }
            manifest.push_str(kv.trim());
            manifest.push('\n');
        }
    }
    if !manifest.lines().any(|l| l.starts_with("kind=")) {
        bail!(
            "{} has no manifest: give it as comment lines `// nearstore.manifest key=value` \
             (abi=1, kind=filter|map|aggregate, name=…, and output= / state_size= as its kind \
             needs)",
            src.display()
        );
    }
    Ok(manifest)
}

/// The AssemblyScript compiler of the pinned version, installed on first use.
fn assemblyscript_compiler() -> Result<PathBuf> {
    let package: serde_json::Value = serde_json::from_str(sdk::ASSEMBLYSCRIPT_PACKAGE)?;
    let version = package["devDependencies"]["assemblyscript"]
        .as_str()
        .context("the carried package.json pins no assemblyscript")?;
    let cache = match std::env::var_os("NEARSTORE_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) => PathBuf::from(d).join("nearstore"),
            None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                .join(".cache/nearstore"),
        },
    };
    let dir = cache.join(format!("assemblyscript-{version}"));
    let asc = dir.join("node_modules/assemblyscript/bin/asc.js");
    if asc.exists() {
        return Ok(asc);
    }
    if !runs("node") || !runs("npm") {
        bail!(
            "AssemblyScript kernels are built with the AssemblyScript compiler, which needs \
             Node.js 20 or newer and npm (Debian: apt-get install nodejs npm)"
        );
    }
    eprintln!(
        "installing AssemblyScript {version} with npm into {} (once)",
        dir.display()
    );
    // Installed beside, then renamed into place: a concurrent build sees all or nothing.
    let staging = cache.join(format!(".assemblyscript-{version}.{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    std::fs::write(staging.join("package.json"), sdk::ASSEMBLYSCRIPT_PACKAGE)?;
    std::fs::write(staging.join("package-lock.json"), sdk::ASSEMBLYSCRIPT_LOCK)?;
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&staging)
        .status()
        .context("running npm")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("npm ci of AssemblyScript {version} failed ({status}); its messages are above");
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // Another build installed it first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    if !asc.exists() {
        bail!(
            "the AssemblyScript compiler is not at {} after installing",
            asc.display()
        );
    }
    Ok(asc)
}

/// The AssemblyScript compiler (stub runtime, -O3, SIMD, failed checks to the device's
/// `abort`), then the manifest section.
fn build_assemblyscript(src: &Path, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let manifest = assemblyscript_manifest(src, &text)?;
    let src = std::path::absolute(src)?;
    // The SDK module sits beside the kernel (`kernel new`) or one directory up (the examples);
    // the compiler runs there, so the SDK's internal path is `nearstore`.
    let root = src
        .ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("nearstore.ts").exists())
        .with_context(|| {
            format!(
                "{} needs the SDK module nearstore.ts beside it or one directory up \
                 (kernel new writes it)",
                src.display()
            )
        })?
        .to_path_buf();
    let asc = assemblyscript_compiler()?;
    let status = Command::new("node")
        .arg(&asc)
        .arg(src.strip_prefix(&root).expect("an ancestor"))
        .arg("-o")
        .arg(out)
        .args([
            "--runtime",
            "stub",
            "-O3",
            "--enable",
            "simd",
            "--use",
            "abort=nearstore/abortKernel",
        ])
        .current_dir(&root)
        .status()
        .context("running the AssemblyScript compiler")?;
    if !status.success() {
        bail!(
            "the AssemblyScript compiler failed on {} ({status}); its messages are above",
            src.display()
        );
    }
    let mut module = std::fs::read(out)?;
    append_custom_section(
        &mut module,
        nearstore_kernel_abi::MANIFEST_SECTION,
        manifest.as_bytes(),
    );
    std::fs::write(out, module).with_context(|| format!("writing {}", out.display()))
}

/// Appends a custom section (id 0: the name and the bytes, each length-prefixed, LEB128).
fn append_custom_section(module: &mut Vec<u8>, name: &str, data: &[u8]) {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    module.push(0);
    leb(payload.len(), module);
    module.extend_from_slice(&payload);
}

/// Builds the kernel crate(s) at `path` for wasm32 (+simd128, release); returns the modules.
fn build_rust(path: &Path, target_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
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
