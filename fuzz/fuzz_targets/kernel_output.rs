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
        let module = nearstore_test_support::kernel::echo();
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
