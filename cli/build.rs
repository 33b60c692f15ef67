//! Embeds the kernel SDKs' sources in the binary, so `nearstore kernel new` writes the SDK of
//! this binary's ABI beside a new kernel instead of pointing at a source tree: the Rust crates
//! (`kernels/abi`, `kernels/sdk`) file by file, the C header and the AssemblyScript module.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let kernels = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../kernels")
        .canonicalize()
        .expect("the kernels directory");
    let mut code =
        String::from("/// Source files of the Rust kernel SDK: (path under sdk/, text).\n");
    code.push_str("pub const RUST_SDK: &[(&str, &str)] = &[\n");
    for (crate_dir, name) in [("abi", "nearstore-kernel-abi"), ("sdk", "nearstore-kernel")] {
        let src = kernels.join(crate_dir).join("src");
        println!("cargo:rerun-if-changed={}", src.display());
        let mut list = Vec::new();
        files(&src, &mut list);
        for f in list {
            let rel = f
                .strip_prefix(&src)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            code.push_str(&format!(
                "    ({:?}, include_str!({:?})),\n",
                format!("{name}/src/{rel}"),
                f.to_str().unwrap()
            ));
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    code.push_str("];\n");
    for (konst, file) in [
        ("C_HEADER", "c/nearstore_kernel.h"),
        ("ASSEMBLYSCRIPT_SDK", "assemblyscript/nearstore.ts"),
        ("ASSEMBLYSCRIPT_PACKAGE", "assemblyscript/package.json"),
        ("ASSEMBLYSCRIPT_LOCK", "assemblyscript/package-lock.json"),
    ] {
        let p = kernels.join(file);
        println!("cargo:rerun-if-changed={}", p.display());
        code.push_str(&format!(
            "/// `kernels/{file}`.\npub const {konst}: &str = include_str!({:?});\n",
            p.to_str().unwrap()
        ));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("kernel_sdk.rs");
    std::fs::write(out, code).unwrap();
}
