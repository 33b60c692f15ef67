//! Kernel-output validation: a kernel that returns whatever the input says (a count, then the
//! indices) must only ever be accepted with in-range, strictly increasing indices, and refused
//! with an error otherwise, never crash the host.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nearstore_runtime::compute::wasm::{ColumnBuffers, Program, Sandbox, SandboxConfig, Stage};

fn setup() -> &'static (Sandbox, Arc<Program>) {
    static S: OnceLock<(Sandbox, Arc<Program>)> = OnceLock::new();
    S.get_or_init(|| {
        let sb = Sandbox::new(SandboxConfig::default()).expect("sandbox");
        let module = wat::parse_str(
            r#"(module
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
              (func (export "nearstore_filter") (param $desc i32) (param $out i32) (param $cap i32) (result i32)
                (local $p i32) (local $len i32)
                (local.set $p (i32.load offset=16 (local.get $desc)))
                (local.set $len (i32.load offset=20 (local.get $desc)))
                (memory.copy (local.get $out) (i32.add (local.get $p) (i32.const 4))
                             (i32.sub (local.get $len) (i32.const 4)))
                (i32.load (local.get $p)))
              (@custom "nearstore.manifest" "abi=1\nkind=filter\nname=echo\n"))"#,
        )
        .expect("echo kernel");
        let p = sb.load(&module).expect("echo kernel loads");
        (sb, p)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (sb, program) = setup();
    let rows = 1 + (u16::from_le_bytes([data[0], data[1]]) as usize % 4096);
    let params = &data[2..];
    let values: Vec<u8> = (0..rows as i64).flat_map(|v| v.to_le_bytes()).collect();
    let col = ColumnBuffers {
        type_code: nearstore_kernel_abi::types::INT64,
        scale: 0,
        values: &values,
        validity: None,
        offsets: None,
        stage: Stage::Copy,
    };
    let Ok(mut s) = sb.session(program) else {
        return;
    };
    if let Ok(sel) = s.filter(rows, &[col], params) {
        assert!(sel.iter().all(|&i| (i as usize) < rows));
        assert!(sel.windows(2).all(|w| w[0] < w[1]));
    }
});
