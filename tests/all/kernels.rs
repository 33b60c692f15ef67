//! Hostile and malformed kernels: each fails with its specific error, at registration or in its
//! own query, and the sandbox keeps running the built-in kernel correctly afterwards.

use std::sync::Arc;
use std::time::Duration;

use nearstore_proto::Expr;
use nearstore_runtime::compute::wasm::{
    BUILTIN_KERNELS, ColumnBuffers, KernelError, Program, Sandbox, SandboxConfig, Stage,
    compile_filter,
};
use nearstore_runtime::plan::Binder;
use nearstore_test_support::kernel::{filter, module, selects_row};

const MANIFEST: &str = r#"(@custom "nearstore.manifest" "abi=1\nkind=filter\nname=hostile\n")"#;

fn sandbox() -> Sandbox {
    sandbox_with_deadline(Duration::from_millis(300))
}

/// The test sandbox with another per-query deadline (for checks that are not about time).
fn sandbox_with_deadline(deadline: Duration) -> Sandbox {
    Sandbox::new(SandboxConfig {
        memory_bytes_max: 16 << 20,
        stack_bytes_max: 256 << 10,
        deadline,
        epoch_tick: Duration::from_millis(1),
        instances_max: 8,
        ..SandboxConfig::default()
    })
    .unwrap()
}

/// 100 rows of an int64 column with values 0..100.
fn ids() -> Vec<u8> {
    (0..100i64).flat_map(|v| v.to_le_bytes()).collect()
}

/// An int64 column without nulls over `data` (little-endian values).
fn int64_column(data: &[u8]) -> ColumnBuffers<'_> {
    ColumnBuffers {
        type_code: nearstore_kernel_abi::types::INT64,
        scale: 0,
        values: data,
        validity: None,
        offsets: None,
        stage: Stage::Copy,
    }
}

fn run(sb: &Sandbox, program: &Arc<Program>) -> Result<Vec<u32>, KernelError> {
    let data = ids();
    let col = int64_column(&data);
    sb.session(program)?.filter(100, &[col], &[])
}

/// The built-in filter still answers `id < 10` correctly.
fn builtin_still_works(sb: &Sandbox) {
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "id",
        arrow::datatypes::DataType::Int64,
        false,
    )]);
    let pred = Binder::new("t", &schema)
        .bind_bool(&Expr::parse("id < 10").unwrap())
        .unwrap();
    let (params, cols) = compile_filter(&pred).unwrap();
    assert_eq!(cols, vec!["id"]);
    let program = sb.load(BUILTIN_KERNELS).unwrap();
    let data = ids();
    let col = int64_column(&data);
    let got = sb
        .session(&program)
        .unwrap()
        .filter(100, &[col], &params)
        .unwrap();
    assert_eq!(got, (0..10).collect::<Vec<u32>>());
}

#[test]
fn a_well_behaved_test_kernel_runs() {
    // Selects rows 3 and 7: proves the harness itself works before the hostile cases.
    let sb = sandbox();
    let p = sb
        .load(&filter(
            "(i32.store (local.get $out) (i32.const 3)) (i32.store offset=4 (local.get $out) (i32.const 7)) (i32.const 2)",
            "",
        ))
        .unwrap();
    assert_eq!(run(&sb, &p).unwrap(), vec![3, 7]);
}

#[test]
fn a_spinning_call_is_stopped_by_its_per_call_budget_long_before_the_query_deadline() {
    let sb = Sandbox::new(SandboxConfig {
        deadline: Duration::from_secs(60),
        call_budget: Duration::from_millis(200),
        ..SandboxConfig::default()
    })
    .unwrap();
    let p = sb
        .load(&filter("(loop $l (br $l)) (i32.const 0)", ""))
        .unwrap();
    let t = std::time::Instant::now();
    let e = run(&sb, &p).unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(e, KernelError::CallBudget { budget_ms: 200, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("per-call budget of 200 ms"), "{e}");
    // Stopped by the call's budget, nowhere near the 60 s query deadline (generous for a
    // loaded machine).
    assert!(took < Duration::from_secs(20), "{took:?}");
    println!("a spinning kernel call was stopped after {took:?} (budget 200 ms)");
    builtin_still_works(&sb);
}

#[test]
fn infinite_loop_stops_at_the_deadline() {
    let sb = sandbox();
    let p = sb
        .load(&filter("(loop $l (br $l)) (i32.const 0)", ""))
        .unwrap();
    let t = std::time::Instant::now();
    let e = run(&sb, &p).unwrap_err();
    assert!(matches!(e, KernelError::Deadline { .. }), "{e}");
    assert!(e.to_string().contains("deadline of 300 ms"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    builtin_still_works(&sb);
}

#[test]
fn unbounded_memory_growth_hits_the_limit() {
    let sb = sandbox();
    let p = sb
        .load(&filter(
            "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)",
            "",
        ))
        .unwrap();
    let e = run(&sb, &p).unwrap_err();
    assert!(matches!(e, KernelError::MemoryLimit { .. }), "{e}");
    assert!(e.to_string().contains("16777216"), "{e}");
    builtin_still_works(&sb);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let sb = sandbox();
    let p = sb
        .load(&filter(
            "(call $f (local.get $desc) (local.get $out) (local.get $cap))",
            "",
        ))
        .unwrap();
    let e = run(&sb, &p).unwrap_err();
    assert!(matches!(e, KernelError::StackOverflow(_)), "{e}");
    builtin_still_works(&sb);
}

#[test]
fn garbage_outputs_are_rejected() {
    let sb = sandbox();
    let cases = [
        // index 500 in a 100-row batch
        (
            "(i32.store (local.get $out) (i32.const 500)) (i32.const 1)",
            "out of range",
        ),
        // 7 then 3
        (
            "(i32.store (local.get $out) (i32.const 7)) (i32.store offset=4 (local.get $out) (i32.const 3)) (i32.const 2)",
            "strictly increasing",
        ),
        // duplicate index
        (
            "(i32.store (local.get $out) (i32.const 4)) (i32.store offset=4 (local.get $out) (i32.const 4)) (i32.const 2)",
            "strictly increasing",
        ),
        // more rows than the batch has
        ("(i32.const 1000)", "selected 1000 rows"),
    ];
    for (body, want) in cases {
        let p = sb.load(&filter(body, "")).unwrap();
        let e = run(&sb, &p).unwrap_err();
        assert!(matches!(e, KernelError::BadOutput { .. }), "{body}: {e}");
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
    // Bitmap outputs: a bit past the last row, and a count that disagrees with the bitmap.
    let bitmap = |body: &str| {
        filter(
            "(i32.const 0)",
            &format!(
                r#"(func (export "nearstore_filter_bitmap") (param $desc i32) (param $out i32) (param $words i32) (result i32) {body})"#
            ),
        )
    };
    let data = ids();
    let col = int64_column(&data);
    for (body, want) in [
        // row 100 of a 100-row batch: bit 36 of word 1
        (
            "(i64.store offset=8 (local.get $out) (i64.const 0x1000000000)) (i32.const 1)",
            "past the end",
        ),
        (
            "(i64.store (local.get $out) (i64.const 7)) (i32.const 2)",
            "returned count 2 but the bitmap selects 3",
        ),
    ] {
        let p = sb.load(&bitmap(body)).unwrap();
        let mut session = sb.session(&p).unwrap();
        assert!(session.has_bitmap_filter());
        let e = session.filter_bitmap(100, &[col], &[]).unwrap_err();
        assert!(matches!(e, KernelError::BadOutput { .. }), "{body}: {e}");
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
    // A negative status is the kernel's own error, reported as such.
    let p = sb.load(&filter("(i32.const -3)", "")).unwrap();
    assert!(matches!(
        run(&sb, &p).unwrap_err(),
        KernelError::Status { status: -3, .. }
    ));
    // A trap (unreachable) and an abort are specific too.
    let p = sb.load(&filter("unreachable", "")).unwrap();
    let e = run(&sb, &p).unwrap_err();
    assert!(matches!(e, KernelError::Trap { .. }), "{e}");
    let p = sb
        .load(&filter(
            "(call $abort (i32.const 7)) (i32.const 0)",
            r#"(import "nearstore" "abort" (func $abort (param i32)))"#,
        ))
        .unwrap();
    let e = run(&sb, &p).unwrap_err();
    assert!(matches!(e, KernelError::Abort { code: 7, .. }), "{e}");
    builtin_still_works(&sb);
}

/// The compile cache holds at most `programs_max` modules, dropping the least recently used;
/// a dropped module compiles again when asked for and runs as before, and a query holding it
/// keeps it. A module over `module_bytes_max` is refused before it is parsed.
#[test]
fn the_compile_cache_and_module_size_are_bounded() {
    let sb = Sandbox::new(SandboxConfig {
        programs_max: 2,
        module_bytes_max: 64 << 10,
        ..SandboxConfig::default()
    })
    .unwrap();
    let first = sb.load(&selects_row(1)).unwrap();
    let second = sb.load(&selects_row(2)).unwrap();
    // A query that holds module 2 while it leaves the cache.
    let mut held = sb.session(&second).unwrap();
    // Using module 1 makes module 2 the least recently used; module 3 then pushes it out.
    assert!(Arc::ptr_eq(&first, &sb.load(&selects_row(1)).unwrap()));
    sb.load(&selects_row(3)).unwrap();
    assert_eq!(sb.cached_programs(), 2);
    assert!(
        Arc::ptr_eq(&first, &sb.load(&selects_row(1)).unwrap()),
        "module 1, used more recently, stays cached"
    );
    let data = ids();
    assert_eq!(
        held.filter(100, &[int64_column(&data)], &[]).unwrap(),
        vec![2],
        "the query holding the dropped module still runs it"
    );
    // Module 2 compiles again (a new program) and answers as before.
    let again = sb.load(&selects_row(2)).unwrap();
    assert!(!Arc::ptr_eq(&second, &again));
    assert_eq!(run(&sb, &again).unwrap(), vec![2]);
    assert_eq!(sb.cached_programs(), 2);

    let mut big = selects_row(4);
    big.resize(65 << 10, 0);
    let e = sb.load(&big).unwrap_err();
    assert!(
        matches!(e, KernelError::Invalid(ref m) if m.contains("at most 65536 bytes")),
        "{e}"
    );
}

/// A full compile cache drops a module of the owner (tenant) holding the most: a tenant
/// loading module after module pushes out its own, and another tenant's stay compiled
/// however long ago they were used.
#[test]
fn the_compile_cache_drops_the_busiest_tenants_modules() {
    let sb = Sandbox::new(SandboxConfig {
        programs_max: 4,
        ..SandboxConfig::default()
    })
    .unwrap();
    let quiet: Vec<_> = (1..=2)
        .map(|i| sb.load_for(&selects_row(i), "quiet").unwrap())
        .collect();
    for i in 10..20 {
        sb.load_for(&selects_row(i), "busy").unwrap();
        assert!(sb.cached_programs() <= 4);
    }
    for (i, p) in (1..=2).zip(&quiet) {
        let again = sb.load_for(&selects_row(i), "quiet").unwrap();
        assert!(Arc::ptr_eq(p, &again), "quiet module {i} stayed compiled");
    }
    // The busy tenant keeps its two most recent modules.
    let last = sb.load_for(&selects_row(19), "busy").unwrap();
    assert!(Arc::ptr_eq(
        &last,
        &sb.load_for(&selects_row(19), "busy").unwrap()
    ));
    assert_eq!(sb.cached_programs(), 4);
    // Two tenants hold two each: a third tenant's module pushes out the least recently used
    // of their four, the busy tenant's older one (the quiet ones were used since).
    sb.load_for(&selects_row(30), "third").unwrap();
    assert_eq!(sb.cached_programs(), 4);
    for (i, p) in (1..=2).zip(&quiet) {
        let again = sb.load_for(&selects_row(i), "quiet").unwrap();
        assert!(Arc::ptr_eq(p, &again), "quiet module {i} stayed compiled");
    }
}

#[test]
fn bad_modules_are_refused_at_registration() {
    let sb = sandbox();
    let e = sb
        .load(&filter(
            "(i32.const 0)",
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        ))
        .unwrap_err();
    assert!(
        matches!(e, KernelError::ForbiddenImport(ref s) if s == "wasi_snapshot_preview1.fd_write"),
        "{e}"
    );

    let e = sb.load(b"this is not wasm").unwrap_err();
    assert!(matches!(e, KernelError::Invalid(_)), "{e}");
    let mut truncated = BUILTIN_KERNELS.to_vec();
    truncated.truncate(truncated.len() / 2);
    let e = sb.load(&truncated).unwrap_err();
    assert!(matches!(e, KernelError::Invalid(_)), "{e}");

    // No ABI marker export.
    let text = format!(
        r#"(module (memory (export "memory") 1)
            (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
            (func (export "nearstore_filter") (param i32 i32 i32) (result i32) (i32.const 0)) {MANIFEST})"#
    );
    let e = sb.load(&wat::parse_str(&text).unwrap()).unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("nearstore_abi_version")),
        "{e}"
    );

    // Wrong ABI version reported by the module.
    let e = sb
        .load(&wat::parse_str(wat_with_version(9)).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("version 9")),
        "{e}"
    );

    // A manifest that names another kind than the exports provide, and none at all.
    let text = r#"(module (memory (export "memory") 1)
        (func (export "nearstore_abi_version") (result i32) (i32.const 1))
        (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
        (func (export "nearstore_filter") (param i32 i32 i32) (result i32) (i32.const 0))
        (@custom "nearstore.manifest" "abi=1\nkind=aggregate\n"))"#;
    let e = sb.load(&wat::parse_str(text).unwrap()).unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("aggregate")),
        "{e}"
    );
    let text = r#"(module (memory (export "memory") 1)
        (func (export "nearstore_abi_version") (result i32) (i32.const 1)))"#;
    let e = sb.load(&wat::parse_str(text).unwrap()).unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("nearstore.manifest")),
        "{e}"
    );
    // A manifest claiming a filter without the filter export.
    let text = r#"(module (memory (export "memory") 1)
        (func (export "nearstore_abi_version") (result i32) (i32.const 1))
        (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
        (@custom "nearstore.manifest" "abi=1\nkind=filter\n"))"#;
    let e = sb.load(&wat::parse_str(text).unwrap()).unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("nearstore_filter")),
        "{e}"
    );
    // A mistyped export.
    let text = r#"(module (memory (export "memory") 1)
        (func (export "nearstore_abi_version") (result i32) (i32.const 1))
        (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 0))
        (func (export "nearstore_filter") (param i32) (result i32) (i32.const 0))
        (@custom "nearstore.manifest" "abi=1\nkind=filter\n"))"#;
    let e = sb.load(&wat::parse_str(text).unwrap()).unwrap_err();
    assert!(
        matches!(e, KernelError::AbiMismatch(ref m) if m.contains("nearstore_filter")),
        "{e}"
    );
    builtin_still_works(&sb);
}

pub(crate) fn wat_with_version(v: i32) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
            (func (export "nearstore_abi_version") (result i32) (i32.const {v}))
            (func (export "nearstore_alloc") (param i32 i32) (result i32) (i32.const 1024))
            (func (export "nearstore_filter") (param i32 i32 i32) (result i32) (i32.const 0))
            {MANIFEST})"#
    )
}

#[test]
fn builtin_filter_on_narrow_decimals() {
    use arrow::array::{ArrayRef, Decimal128Array, RecordBatch};
    use nearstore_runtime::compute::ComputeBackend;
    let sb_backend =
        nearstore_runtime::compute::wasm::WasmBackend::new(SandboxConfig::default()).unwrap();
    let price = (0..100i128)
        .map(Some)
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)
        .unwrap();
    let batch = RecordBatch::try_from_iter(vec![("price", std::sync::Arc::new(price) as ArrayRef)])
        .unwrap();
    let schema = batch.schema();
    let pred = Binder::new("t", &schema)
        .bind_bool(&Expr::parse("price < 0.05 OR price = 0.99").unwrap())
        .unwrap();
    let mut s = sb_backend.open().unwrap();
    let got = s.filter(&pred, &batch).unwrap();
    let idx: Vec<usize> = (0..100).filter(|&i| got.value(i)).collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4, 99]);
}

/// Decimals of precision <= 18 travel as `i64`: staged so, they are narrowed exactly, and a
/// value beyond 18 digits (data that does not match its declared type) is an error, never a
/// truncated value.
#[test]
fn narrow_decimals_beyond_their_precision_are_refused() {
    let stage = |values: &[i128]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let col = ColumnBuffers {
            type_code: nearstore_kernel_abi::types::INT64,
            scale: 2,
            values: &bytes,
            validity: None,
            offsets: None,
            stage: Stage::Narrow { from: 16, to: 8 },
        };
        let mut out = vec![0u8; col.staged_len()];
        col.stage_values(&mut out).map(|w| (w, out))
    };
    let fits = [-(i64::MAX as i128), 0, 12_345, i64::MAX as i128];
    let ((width, need), out) = stage(&fits).unwrap();
    assert_eq!((width, need), (8, 8));
    let got: Vec<i128> = out
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i128)
        .collect();
    assert_eq!(got, fits);
    let e = stage(&[1, i64::MAX as i128 + 1, 2]).unwrap_err();
    assert!(e.to_string().contains("beyond 18 digits"), "{e}");
    assert!(stage(&[]).is_ok());
}

#[test]
fn one_session_runs_many_batches_in_bounded_memory() {
    // Without per-call scratch release the kernel's allocations would pile up past 4 MiB.
    let sb = Sandbox::new(SandboxConfig {
        memory_bytes_max: 4 << 20,
        ..SandboxConfig::default()
    })
    .unwrap();
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "id",
        arrow::datatypes::DataType::Int64,
        false,
    )]);
    let pred = Binder::new("t", &schema)
        .bind_bool(&Expr::parse("id < 10 OR id IN (50, 60) AND NOT id = 60").unwrap())
        .unwrap();
    let (params, _) = compile_filter(&pred).unwrap();
    let program = sb.load(BUILTIN_KERNELS).unwrap();
    let mut session = sb.session(&program).unwrap();
    let data = ids();
    let col = int64_column(&data);
    for _ in 0..40_000 {
        let got = session.filter(100, &[col], &params).unwrap();
        assert_eq!(got.len(), 11);
    }
}

#[test]
fn aggregate_state_that_claims_too_many_rows_is_rejected() {
    use nearstore_proto::AggFunc;
    use nearstore_runtime::compute::wasm::finish_state;
    use nearstore_runtime::plan::AggSpec;
    // The kernel writes count 1_000_000 into slot (group 0, aggregate 0).
    let sb = sandbox();
    let p = sb
        .load(&filter(
            "(i32.const 0)",
            r#"(func (export "nearstore_agg_update") (param $desc i32) (param $state i32) (param $groups i32) (result i32)
                 (i64.store offset=16 (local.get $state) (i64.const 1000000)) (i32.const 0))"#,
        ))
        .unwrap();
    let mut s = sb.session(&p).unwrap();
    assert!(s.has_aggregate());
    let data = ids();
    let cols = [
        ColumnBuffers {
            type_code: 0,
            scale: 0,
            values: &[],
            validity: None,
            offsets: None,
            stage: Stage::Copy,
        },
        int64_column(&data),
    ];
    // One aggregate: count(column 1).
    use nearstore_kernel_abi::agg;
    let params = [1, 0, agg::COUNT, 1, 0, agg::INPUT_COLUMN];
    s.aggregate_update(100, &cols, &params, 1).unwrap();
    let state = s.aggregate_state(1).unwrap();
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "id",
        arrow::datatypes::DataType::Int64,
        false,
    )]);
    let spec = AggSpec {
        func: AggFunc::Count,
        input: Some(Binder::new("t", &schema).column("id").unwrap()),
        name: "n".into(),
    };
    let e = finish_state(&[spec], &state, 1, 100, "hostile").unwrap_err();
    assert!(e.to_string().contains("exceeds the 100 rows given"), "{e}");
}

#[test]
fn map_and_aggregate_kernel_outputs_are_checked() {
    let sb = sandbox();
    let data = ids();
    let col = int64_column(&data);
    let map = |body: &str| {
        sb.load(&module(
            "abi=1\nkind=map\nname=m\noutput=int64\n",
            "",
            &format!(
                r#"(func (export "nearstore_map") (param $desc i32) (param $out i32) (param $rows i32) (result i32) {body})"#
            ),
        ))
        .unwrap()
    };
    let bad = |r: Result<(Vec<u64>, Vec<u64>), KernelError>, what: &str| match r {
        Err(KernelError::BadOutput { detail, .. }) => assert!(detail.contains(what), "{detail}"),
        other => panic!("{what}: {other:?}"),
    };
    // Too few values, and validity bits past the last row.
    let p = map("(i32.sub (local.get $rows) (i32.const 1))");
    bad(
        sb.session(&p).unwrap().map(100, &[col], &[]),
        "mapped 99 values",
    );
    let p = map(
        "(i64.store (i32.add (local.get $out) (i32.const 808)) (i64.const -1)) (local.get $rows)",
    );
    bad(
        sb.session(&p).unwrap().map(100, &[col], &[]),
        "past the end",
    );
    // A well-formed map: value i = i * 3, every row valid.
    let p = map(r#"(local $i i32)
           (loop $l
             (i64.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 3)))
               (i64.mul (i64.extend_i32_u (local.get $i)) (i64.const 3)))
             (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (local.get $rows))))
           (i64.store (i32.add (local.get $out) (i32.const 800)) (i64.const -1))
           (i64.store (i32.add (local.get $out) (i32.const 808)) (i64.const 0xFFFFFFFFF))
           (local.get $rows)"#);
    let (values, validity) = sb.session(&p).unwrap().map(100, &[col], &[]).unwrap();
    assert_eq!(values[99], 297);
    assert_eq!(validity, [u64::MAX, 0xF_FFFF_FFFF]);

    let agg = |output: &str, update: &str, finish: &str| {
        sb.load(&module(
            &format!("abi=1\nkind=aggregate\nname=a\noutput={output}\nstate_size=16\n"),
            "",
            &format!(
                r#"(func (export "nearstore_agg_update") (param i32 i32 i32) (result i32) {update})
                   (func (export "nearstore_agg_finish") (param i32 i32 i32) (result i32) {finish})"#
            ),
        ))
        .unwrap()
    };
    let groups = ColumnBuffers {
        type_code: 0,
        scale: 0,
        values: &[],
        validity: None,
        offsets: None,
        stage: Stage::Copy,
    };
    let run = |p: &Arc<Program>| -> Result<Vec<Vec<u64>>, KernelError> {
        let mut s = sb.session(p)?;
        s.group_update(100, &[groups, col], b"", 1)?;
        s.group_finish(1)
    };
    let bad = |r: Result<Vec<Vec<u64>>, KernelError>, what: &str| match r {
        Err(KernelError::BadOutput { detail, .. }) => assert!(detail.contains(what), "{detail}"),
        other => panic!("{what}: {other:?}"),
    };
    bad(
        run(&agg("int64", "(i32.const 1)", "(i32.const 0)")),
        "aggregate update returned 1",
    );
    bad(
        run(&agg("int64", "(i32.const 0)", "(i32.const 2)")),
        "returned 2 values where 1 fit",
    );
    bad(
        run(&agg("list_int64", "(i32.const 0)", "(i32.const 65)")),
        "returned 65 values where 64 fit",
    );
    // A kernel cannot make the host hold more results than its memory limit (16 MiB here:
    // 2 Mi values) could: 40 000 groups of 64 values each are refused. The 40 000 finish calls
    // run under a deadline a loaded machine cannot miss: the limit is what is checked here.
    let roomy = sandbox_with_deadline(Duration::from_secs(60));
    let greedy = roomy
        .load(&module(
            "abi=1\nkind=aggregate\nname=a\noutput=list_int64\nstate_size=16\n",
            "",
            r#"(func (export "nearstore_agg_update") (param i32 i32 i32) (result i32) (i32.const 0))
               (func (export "nearstore_agg_finish") (param i32 i32 i32) (result i32) (local.get 2))"#,
        ))
        .unwrap();
    let mut s = roomy.session(&greedy).unwrap();
    s.group_update(100, &[groups, col], b"", 40_000).unwrap();
    match s.group_finish(40_000) {
        Err(KernelError::BadOutput { detail, .. }) => {
            assert!(detail.contains("memory limit"), "{detail}")
        }
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    // A status is the kernel's own error; a scalar with no value is NULL.
    assert!(matches!(
        run(&agg("int64", "(i32.const -3)", "(i32.const 0)")),
        Err(KernelError::Status { status: -3, .. })
    ));
    assert_eq!(
        run(&agg("float64", "(i32.const 0)", "(i32.const 0)")).unwrap(),
        vec![Vec::<u64>::new()]
    );
    // A map kernel is not an aggregate, nor a filter.
    let m = map("(local.get $rows)");
    assert!(matches!(
        sb.session(&m).unwrap().group_finish(1),
        Err(KernelError::AbiMismatch(_))
    ));
    assert!(matches!(
        sb.session(&m).unwrap().filter(100, &[col], &[]),
        Err(KernelError::AbiMismatch(_))
    ));
    builtin_still_works(&sb);
}

/// The top-k pre-selection keeps few rows: over 100 batches of random keys, only the rows that
/// beat the running k-th best (about k·ln(rows/k) of them), all of the true top k among them.
#[test]
fn topk_preselection_keeps_the_top_rows_and_few_others() {
    use arrow::array::{ArrayRef, Int64Array};
    use nearstore_runtime::compute::ComputeBackend;
    use nearstore_runtime::compute::wasm::WasmBackend;
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let mut s = wasm.open().unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let (mut kept, mut all) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let vals: Vec<i64> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1_000_000_000) as i64
            })
            .collect();
        let key: ArrayRef = Arc::new(Int64Array::from(vals.clone()));
        let mask = s.topk(&key, true, true, 10).unwrap();
        assert_eq!(mask.len(), 8192);
        kept.extend((0..8192).filter(|&i| mask.value(i)).map(|i| vals[i]));
        all.extend(vals);
    }
    all.sort_unstable_by(|a, b| b.cmp(a));
    kept.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(&kept[..10], &all[..10]);
    assert!(
        kept.len() < 500,
        "{} of {} rows kept",
        kept.len(),
        all.len()
    );
}
