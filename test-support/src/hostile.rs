//! Hostile filter kernels, one per way a kernel can misbehave: loop forever, grow memory
//! without end, recurse, trap, claim too many rows, or compute for a long time and then
//! succeed. Garbage indices: [`crate::kernel::selects_row`] with a row far past the batch.

use crate::kernel::filter;

/// Loops forever (stopped by the deadline).
pub fn spin_forever() -> Vec<u8> {
    filter("(loop $l (br $l)) (i32.const 0)", "")
}

/// Grows its memory until growth fails, then traps (stopped by the memory limit).
pub fn grow_memory() -> Vec<u8> {
    filter(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)",
        "",
    )
}

/// Recurses without end (overflows its stack).
pub fn recurse() -> Vec<u8> {
    filter(
        "(call $deep (i32.const 0)) (i32.const 0)",
        "(func $deep (param i32) (call $deep (i32.add (local.get 0) (i32.const 1))))",
    )
}

/// Traps at once.
pub fn trap() -> Vec<u8> {
    filter("(unreachable)", "")
}

/// Claims to select `rows` rows (more than the batch holds, for a hostile one).
pub fn claims_rows(rows: u32) -> Vec<u8> {
    filter(&format!("(i32.const {rows})"), "")
}

/// A bounded busy loop of `iterations`, then selects nothing: slow but correct.
pub fn busy(iterations: u32) -> Vec<u8> {
    filter(
        &format!(
            "(local $i i32) (local.set $i (i32.const {iterations})) \
             (loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i))) \
             (i32.const 0)"
        ),
        "",
    )
}
