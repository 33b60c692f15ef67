//! The kernel builder: a module with the ABI version, a bump allocator and its memory around
//! the functions a test writes, and the echo filter the kernel-output fuzzers drive.

/// A kernel with the manifest `manifest` (lines separated by `\n`), `extra` (imports, helper
/// functions) at the start and the exported functions `funcs` (WAT), besides the ABI version,
/// a bump allocator and its memory.
pub fn module(manifest: &str, extra: &str, funcs: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          {extra}
          (memory (export "memory") 2)
          (global $next (mut i32) (i32.const 1024))
          (func (export "nearstore_abi_version") (result i32) (i32.const 1))
          (func (export "nearstore_alloc") (param $size i32) (param $align i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
            (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
              (then (drop (memory.grow (i32.add (i32.div_u (i32.sub (global.get $next) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1))))))
            (local.get $p))
          {funcs}
          (@custom "nearstore.manifest" "{}"))"#,
        manifest.replace('\n', "\\n")
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("test kernel does not assemble: {e}\n{text}"))
}

/// A filter kernel named `hostile` whose `nearstore_filter` body is `body` (params: `$desc`,
/// `$out`, `$cap`; returns the number of selected rows), with `extra` (imports, helper
/// functions) at the start of the module.
pub fn filter(body: &str, extra: &str) -> Vec<u8> {
    module(
        "abi=1\nkind=filter\nname=hostile\n",
        extra,
        &format!(
            r#"(func $f (export "nearstore_filter") (param $desc i32) (param $out i32) (param $cap i32) (result i32)
            {body})"#
        ),
    )
}

/// A filter kernel that selects row `i` alone: distinct modules for distinct `i`, told apart
/// by their answers (an `i` far past the batch makes a hostile one).
pub fn selects_row(i: u32) -> Vec<u8> {
    filter(
        &format!("(i32.store (local.get $out) (i32.const {i})) (i32.const 1)"),
        "",
    )
}

/// A filter kernel named `echo` that returns whatever its parameters say: a count (i32), then
/// the row indices (u32) to write to the selection.
pub fn echo() -> Vec<u8> {
    module(
        "abi=1\nkind=filter\nname=echo\n",
        "",
        r#"(func (export "nearstore_filter") (param $desc i32) (param $out i32) (param $cap i32) (result i32)
            (local $p i32) (local $len i32)
            (local.set $p (i32.load offset=16 (local.get $desc)))
            (local.set $len (i32.load offset=20 (local.get $desc)))
            (memory.copy (local.get $out) (i32.add (local.get $p) (i32.const 4))
                         (i32.sub (local.get $len) (i32.const 4)))
            (i32.load (local.get $p)))"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_assemble_with_their_manifest() {
        for (module, name) in [(filter("(i32.const 0)", ""), "hostile"), (echo(), "echo")] {
            assert_eq!(&module[..4], b"\0asm");
            let manifest = format!("abi=1\nkind=filter\nname={name}\n");
            assert!(
                module
                    .windows(manifest.len())
                    .any(|w| w == manifest.as_bytes()),
                "{name}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "does not assemble")]
    fn bad_wat_names_the_text() {
        filter("(i32.const", "");
    }
}
