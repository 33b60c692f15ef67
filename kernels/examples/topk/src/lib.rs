//! `topk`: an aggregate kernel keeping the ids (argument 0, int64) of the `k` highest scores
//! (argument 1, float64) per group, parameter `k` (1 to 64). Ties go to the smaller id; rows
//! with a NULL id or score are skipped. The result is a list of ids per group, best first,
//! as SQL's `ORDER BY score DESC, id LIMIT k` within the group gives them.
//!
//! In SQL: `SELECT g, topk(id, score, '5') FROM t GROUP BY g`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::cmp::Ordering;

use nearstore_kernel::abi::status;
use nearstore_kernel::{
    AggOutput, BLOCK, Batch, GroupStates, Groups, KernelResult, get_f64, get_i64, put_f64, put_i64,
};

/// Largest k.
pub const K_MAX: usize = 64;
/// Per group: the number of entries kept (`i64`), then up to `K_MAX` entries of (score `f64`,
/// id `i64`), best first.
pub const STATE_SIZE: usize = 8 + 16 * K_MAX;

nearstore_kernel::export_aggregate_kernel!(update, finish, STATE_SIZE);
// The manifest below must say the same.
const _: () = assert!(STATE_SIZE == 1032);
nearstore_kernel::manifest!(
    b"abi=1\nkind=aggregate\nname=topk\noutput=list_int64\nstate_size=1032\nsignature=int64,float64;params=k\n"
);

/// Whether (score a, id a) ranks before (score b, id b).
fn better(sa: f64, ia: i64, sb: f64, ib: i64) -> bool {
    match sa.total_cmp(&sb) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => ia < ib,
    }
}

/// Offers (score, id) to a group's top k.
fn offer(state: &mut [u8], k: usize, score: f64, id: i64) {
    let n = get_i64(state, 0) as usize;
    let at = |j: usize| 8 + 16 * j;
    if n == k {
        let last = at(k - 1);
        if !better(score, id, get_f64(state, last), get_i64(state, last + 8)) {
            return;
        }
    }
    // Insert in order, shifting the worse entries down (the last falls off when full).
    let mut j = n.min(k - 1);
    while j > 0 {
        let prev = at(j - 1);
        if !better(score, id, get_f64(state, prev), get_i64(state, prev + 8)) {
            break;
        }
        let (s, i) = (get_f64(state, prev), get_i64(state, prev + 8));
        put_f64(state, at(j), s);
        put_i64(state, at(j) + 8, i);
        j -= 1;
    }
    put_f64(state, at(j), score);
    put_i64(state, at(j) + 8, id);
    put_i64(state, 0, (n + 1).min(k) as i64);
}

/// Offers each row of a batch to its group's top k.
pub fn update(batch: &Batch, groups: Groups, states: &mut GroupStates) -> KernelResult {
    let text = core::str::from_utf8(batch.params()).map_err(|_| status::BAD_INPUT)?;
    let k: usize = text.trim().parse().map_err(|_| status::BAD_INPUT)?;
    if k == 0 || k > K_MAX {
        return Err(status::BAD_INPUT);
    }
    let (ic, sc) = (batch.column(0)?, batch.column(1)?);
    let (ids, scores) = (ic.i64s()?, sc.f64s()?);
    for base in (0..batch.rows()).step_by(BLOCK) {
        let valid = ic.validity_block(base) & sc.validity_block(base);
        let end = (base + BLOCK).min(batch.rows());
        for i in base..end {
            if valid >> (i - base) & 1 == 1 {
                offer(states.get(groups.of(i))?, k, scores[i], ids[i]);
            }
        }
    }
    Ok(())
}

/// One group's ids, best first.
pub fn finish(state: &[u8], out: &mut AggOutput) -> KernelResult {
    let n = get_i64(state, 0) as usize;
    if n > K_MAX {
        return Err(status::BAD_INPUT);
    }
    for j in 0..n {
        out.push_i64(get_i64(state, 8 + 16 * j + 8))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn keeps_the_best_k_with_ties_to_the_smaller_id() {
        let scores = [5.0f64, 1.0, 9.0, 5.0, 7.0, 9.0, 3.0];
        let ids: Vec<i64> = (10..17).rev().collect();
        let s: Vec<u8> = scores.iter().flat_map(|v| v.to_le_bytes()).collect();
        let i: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let batch = Batch::from_parts(
            7,
            vec![
                Column::from_parts(types::INT64, 0, &i, None, None, 7),
                Column::from_parts(types::FLOAT64, 0, &s, None, None, 7),
            ],
            b"4",
        );
        let mut bytes = vec![0u8; STATE_SIZE];
        let mut states = GroupStates::from_parts(&mut bytes, STATE_SIZE);
        update(&batch, Groups::from_parts(None), &mut states).unwrap();
        let mut buf = [0u64; 8];
        let mut out = AggOutput::from_parts(&mut buf);
        finish(&bytes, &mut out).unwrap();
        // Scores 9 (ids 14, 11), 7 (id 12), then 5 (ids 16, 13): 13 wins the tie.
        let got: Vec<i64> = out.values().iter().map(|v| *v as i64).collect();
        assert_eq!(got, [11, 14, 12, 13]);
    }
}
