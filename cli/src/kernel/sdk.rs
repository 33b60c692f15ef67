//! The kernel SDKs this binary carries, of its own ABI version: the Rust crates, the C header
//! and the AssemblyScript module (embedded by `build.rs`), written beside a new kernel by
//! `kernel new`; and the pinned AssemblyScript compiler's package files, installed by
//! `kernel build` into a cache directory it names.

use std::path::Path;

use anyhow::{Context, Result};

include!(concat!(env!("OUT_DIR"), "/kernel_sdk.rs"));

/// Writes the Rust SDK crates (`nearstore-kernel` and `nearstore-kernel-abi`) under `dir`.
pub fn write_rust(dir: &Path) -> Result<()> {
    for (path, text) in RUST_SDK {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("a file under a crate"))?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let manifest = |name: &str, what: &str, deps: &str| {
        format!(
            "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2024\"\n\
             publish = false\ndescription = \"{what} (kernel ABI {abi}, written by nearstore \
             {version})\"\n\n[dependencies]\n{deps}",
            abi = nearstore_kernel_abi::ABI_VERSION,
        )
    };
    std::fs::write(
        dir.join("nearstore-kernel-abi/Cargo.toml"),
        manifest("nearstore-kernel-abi", "The Nearstore kernel ABI", ""),
    )?;
    std::fs::write(
        dir.join("nearstore-kernel/Cargo.toml"),
        manifest(
            "nearstore-kernel",
            "The Nearstore kernel SDK",
            "nearstore-kernel-abi = { path = \"../nearstore-kernel-abi\" }\n",
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearstore_kernel_abi as abi;
    use std::collections::BTreeMap;

    /// The ABI's numbers under the names the C header and the AssemblyScript module give them.
    fn abi_numbers() -> BTreeMap<&'static str, i64> {
        use abi::{status, types};
        BTreeMap::from([
            ("ABI_VERSION", abi::ABI_VERSION as i64),
            ("BLOCK", 64),
            ("BATCH_DESC_BYTES", abi::BATCH_DESC_BYTES as i64),
            ("COLUMN_DESC_BYTES", abi::COLUMN_DESC_BYTES as i64),
            ("STATE_SIZE_MAX", abi::STATE_SIZE_MAX as i64),
            ("TYPE_BOOL", types::BOOL as i64),
            ("TYPE_INT32", types::INT32 as i64),
            ("TYPE_INT64", types::INT64 as i64),
            ("TYPE_FLOAT64", types::FLOAT64 as i64),
            ("TYPE_DECIMAL128", types::DECIMAL128 as i64),
            ("TYPE_DATE32", types::DATE32 as i64),
            ("TYPE_UTF8", types::UTF8 as i64),
            ("BAD_INPUT", status::BAD_INPUT as i64),
            ("OUTPUT_TOO_SMALL", status::OUTPUT_TOO_SMALL as i64),
            ("UNSUPPORTED", status::UNSUPPORTED as i64),
            ("NO_MEMORY", status::NO_MEMORY as i64),
            ("OVERFLOW", status::OVERFLOW as i64),
            ("DIVIDE_BY_ZERO", status::DIVIDE_BY_ZERO as i64),
        ])
    }

    /// The ABI's names under the C header's names.
    fn abi_names() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("EXPORT_ABI_VERSION", abi::EXPORT_ABI_VERSION),
            ("EXPORT_ALLOC", abi::EXPORT_ALLOC),
            ("EXPORT_FILTER", abi::EXPORT_FILTER),
            ("EXPORT_FILTER_BITMAP", abi::EXPORT_FILTER_BITMAP),
            ("EXPORT_MAP", abi::EXPORT_MAP),
            ("EXPORT_AGG_UPDATE", abi::EXPORT_AGG_UPDATE),
            ("EXPORT_AGG_FINISH", abi::EXPORT_AGG_FINISH),
            ("IMPORT_MODULE", abi::IMPORT_MODULE),
            ("IMPORT_LOG", abi::IMPORT_LOG),
            ("IMPORT_ABORT", abi::IMPORT_ABORT),
            ("MANIFEST_SECTION", abi::MANIFEST_SECTION),
        ])
    }

    /// The descriptors' fields in the ABI's order (`BatchDesc::write`, `ColumnDesc::write`).
    const BATCH_FIELDS: [&str; 6] = [
        "abi",
        "rows",
        "ncols",
        "cols_ptr",
        "params_ptr",
        "params_len",
    ];
    const COLUMN_FIELDS: [&str; 8] = [
        "type_code",
        "scale",
        "values_ptr",
        "values_len",
        "validity_ptr",
        "offsets_ptr",
        "offsets_len",
        "stored_width",
    ];

    /// The `uint32_t` fields of the C struct `name`, in order.
    fn c_struct_fields(header: &str, name: &str) -> Vec<String> {
        let end = header
            .find(&format!("}} {name};"))
            .unwrap_or_else(|| panic!("no struct {name}"));
        let start = header[..end].rfind("typedef struct {").unwrap();
        header[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("uint32_t "))
            .map(|l| l.split(';').next().unwrap().trim().to_string())
            .collect()
    }

    #[test]
    fn the_c_header_says_what_the_abi_says() {
        let mut numbers = BTreeMap::new();
        let mut names = BTreeMap::new();
        for line in C_HEADER.lines() {
            let Some(rest) = line.strip_prefix("#define NS_") else {
                continue;
            };
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            let value = value.trim().trim_start_matches('(').trim_end_matches(')');
            if let Some(s) = value.strip_prefix('"') {
                names.insert(name.to_string(), s.trim_end_matches('"').to_string());
            } else if let Ok(v) = value.parse::<i64>() {
                numbers.insert(name.to_string(), v);
            }
        }
        let want: BTreeMap<String, i64> = abi_numbers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(numbers, want, "the header's numbers against the ABI's");
        let want: BTreeMap<String, String> = abi_names()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(names, want, "the header's names against the ABI's");
        assert_eq!(c_struct_fields(C_HEADER, "ns_batch_desc"), BATCH_FIELDS);
        assert_eq!(c_struct_fields(C_HEADER, "ns_column_desc"), COLUMN_FIELDS);
        // The manifest macro writes the ABI's section.
        assert!(C_HEADER.contains(&format!(".custom_section.{}", abi::MANIFEST_SECTION)));
    }

    #[test]
    fn the_assemblyscript_module_says_what_the_abi_says() {
        let numbers: BTreeMap<String, i64> = ASSEMBLYSCRIPT_SDK
            .lines()
            .filter_map(|l| l.strip_prefix("export const "))
            .map(|l| {
                let (name, rest) = l.split_once(':').unwrap();
                let value = rest.split('=').nth(1).unwrap().trim().trim_end_matches(';');
                (name.to_string(), value.parse().unwrap())
            })
            .collect();
        let want: BTreeMap<String, i64> = abi_numbers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(numbers, want, "the module's numbers against the ABI's");
        // The unmanaged descriptor views' fields, camel-cased, in the ABI's order.
        let camel = |s: &str| {
            let mut out = String::new();
            let mut up = false;
            for c in s.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    out.push(c.to_ascii_uppercase());
                    up = false;
                } else {
                    out.push(c);
                }
            }
            out
        };
        let start = ASSEMBLYSCRIPT_SDK
            .find("export class ColumnDesc {")
            .unwrap();
        let fields: Vec<String> = ASSEMBLYSCRIPT_SDK[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim().ends_with(": u32;"))
            .map(|l| l.trim().split(':').next().unwrap().to_string())
            .collect();
        let want: Vec<String> = COLUMN_FIELDS.iter().map(|f| camel(f)).collect();
        assert_eq!(fields, want);
        // `Batch.read` loads the batch descriptor's words at their offsets.
        for (i, f) in BATCH_FIELDS.iter().enumerate().skip(1) {
            let name = match *f {
                "cols_ptr" => "colsPtr".to_string(),
                other => camel(other),
            };
            let load = format!("this.{name} = load<u32>(desc, {});", 4 * i);
            assert!(ASSEMBLYSCRIPT_SDK.contains(&load), "{load}");
        }
        for export in [abi::EXPORT_ABI_VERSION, abi::EXPORT_ALLOC] {
            assert!(ASSEMBLYSCRIPT_SDK.contains(&format!("export function {export}(")));
        }
    }

    #[test]
    fn the_rust_sdk_is_carried_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_rust(dir.path()).unwrap();
        for krate in ["kernels/abi", "kernels/sdk"] {
            let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(krate)
                .join("src");
            let name = if krate.ends_with("abi") {
                "nearstore-kernel-abi"
            } else {
                "nearstore-kernel"
            };
            let mut stack = vec![src.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                        continue;
                    }
                    let copy = dir
                        .path()
                        .join(name)
                        .join("src")
                        .join(p.strip_prefix(&src).unwrap());
                    assert_eq!(
                        std::fs::read(&copy).unwrap(),
                        std::fs::read(&p).unwrap(),
                        "{}",
                        copy.display()
                    );
                }
            }
        }
    }
}
