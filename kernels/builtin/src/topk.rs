//! Top-k pre-selection (`nearstore_topk`): keeps a heap of the best k sort keys seen across
//! batches and selects each row that may still be among the top k.

use nearstore_kernel::abi::{status, types};
use nearstore_kernel::{BLOCK, KernelResult, f64_order_key};

/// Top-k pre-selection entry point (Nearstore kernel ABI, `nearstore_topk`).
#[unsafe(no_mangle)]
pub extern "C" fn nearstore_topk(desc: u32, out: u32, state: u32) -> i32 {
    // SAFETY: the device calls this export with addresses it wrote per the ABI.
    match unsafe { topk(desc, out, state) } {
        Ok(n) => n as i32,
        Err(e) => e,
    }
}

/// A row's sort key as an `i128` where larger is better: descending keys as they are,
/// ascending ones bit-inverted (which reverses the order without overflow), NULLs above or
/// below every value (|values| < 10^38 < 2^127).
#[inline(always)]
fn order_key(v: Option<i128>, descending: bool, nulls_first: bool) -> i128 {
    match v {
        None if nulls_first => i128::MAX,
        None => i128::MIN,
        Some(v) if descending => v,
        Some(v) => !v,
    }
}

/// # Safety
/// `desc` as for `batch_from_memory`; `out` must address `ceil(rows / 64)` writable `u64`s and
/// `state` 16 + 16 k writable bytes, both aligned.
unsafe fn topk(desc: u32, out: u32, state: u32) -> KernelResult<usize> {
    // SAFETY: forwarded contract.
    let batch = unsafe { nearstore_kernel::batch_from_memory(desc) }?;
    let rows = batch.rows();
    let p = batch.params();
    if p.len() != 2 || !state.is_multiple_of(16) || !out.is_multiple_of(8) {
        return Err(status::BAD_INPUT);
    }
    let (descending, nulls_first) = (p[0] != 0, p[1] != 0);
    // SAFETY: per the contract, 16 header bytes at `state`.
    let header = unsafe { core::slice::from_raw_parts_mut(state as usize as *mut u32, 4) };
    let (k, mut n) = (header[0] as usize, header[1] as usize);
    if k == 0 || n > k {
        return Err(status::BAD_INPUT);
    }
    // SAFETY: per the contract, k i128s after the header, 16-byte aligned.
    let heap = unsafe { core::slice::from_raw_parts_mut((state as usize + 16) as *mut i128, k) };
    // SAFETY: per the contract.
    let words =
        unsafe { core::slice::from_raw_parts_mut(out as usize as *mut u64, rows.div_ceil(64)) };
    let c = batch.column(0)?;
    let (i32s, i64s, i128s, f64s) = match c.type_code() {
        types::INT32 | types::DATE32 => (c.i32s()?, &[][..], &[][..], &[][..]),
        types::INT64 => (&[][..], c.i64s()?, &[][..], &[][..]),
        types::DECIMAL128 => (&[][..], &[][..], c.i128s()?, &[][..]),
        types::FLOAT64 => (&[][..], &[][..], &[][..], c.f64s()?),
        _ => return Err(status::UNSUPPORTED),
    };
    let t = c.type_code();
    let value = |i: usize| -> i128 {
        match t {
            types::INT32 | types::DATE32 => i32s[i] as i128,
            types::INT64 => i64s[i] as i128,
            types::DECIMAL128 => i128s[i],
            _ => f64_order_key(f64s[i]) as i128,
        }
    };
    let mut selected = 0usize;
    for base in (0..rows).step_by(BLOCK) {
        let valid = c.validity_block(base);
        let end = (base + BLOCK).min(rows);
        let mut m = 0u64;
        for i in base..end {
            let v = (valid >> (i - base) & 1 == 1).then(|| value(i));
            let key = order_key(v, descending, nulls_first);
            if n < k {
                // Not full: every row may be in the top k.
                m |= 1 << (i - base);
                heap[n] = key;
                sift_up(&mut heap[..=n], n);
                n += 1;
            } else if key >= heap[0] {
                // At least the k-th best: a candidate (ties are settled by the later keys).
                m |= 1 << (i - base);
                if key > heap[0] {
                    heap[0] = key;
                    sift_down(&mut heap[..n], 0);
                }
            }
        }
        words[base / 64] = m;
        selected += m.count_ones() as usize;
    }
    header[1] = n as u32;
    Ok(selected)
}

fn sift_up(h: &mut [i128], mut i: usize) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if h[i] >= h[parent] {
            break;
        }
        h.swap(i, parent);
        i = parent;
    }
}

fn sift_down(h: &mut [i128], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut smallest = i;
        if l < h.len() && h[l] < h[smallest] {
            smallest = l;
        }
        if r < h.len() && h[r] < h[smallest] {
            smallest = r;
        }
        if smallest == i {
            return;
        }
        h.swap(i, smallest);
        i = smallest;
    }
}
