//! The body of the `nearstore_project` export: evaluates the expression program and writes the
//! computed column (8-byte or 16-byte values, and validity words).

use nearstore_kernel::abi::status;
use nearstore_kernel::{Batch, KernelResult, lanes};

use crate::expr::{Vals, decode_expr, eval, is_valid, wide};

/// Evaluates the expression program (see [`eval`]) over a batch and writes 8-byte values
/// (`i64`, or `f64` bits) when the first parameter byte is 8, else 16-byte `i128`s.
pub(crate) fn project(batch: &Batch, out: &mut [u8], validity: &mut [u64]) -> KernelResult {
    let params = batch.params();
    let (&width, program) = params.split_first().ok_or(status::BAD_INPUT)?;
    let v = eval(&decode_expr(program, batch)?, batch)?;
    let rows = batch.rows();
    let words = rows.div_ceil(64);
    match width {
        8 => {
            let out = out.get_mut(..rows * 8).ok_or(status::OUTPUT_TOO_SMALL)?;
            // SAFETY: u64 has no invalid bit patterns; only the aligned middle is used.
            let (pre, out, post) = unsafe { out.align_to_mut::<u64>() };
            if !pre.is_empty() || !post.is_empty() {
                return Err(status::BAD_INPUT);
            }
            // Whole columns by one memory copy.
            match &v.vals {
                Vals::I64Ref(x) => out.copy_from_slice(bits(x)),
                Vals::I64(x) => out.copy_from_slice(bits(x)),
                Vals::F64Ref(x) => out.copy_from_slice(bits(x)),
                Vals::F64(x) => out.copy_from_slice(bits(x)),
                Vals::ConstF(c) => out.fill(c.to_bits()),
                _ => {
                    let x = wide(&v.vals, rows).ok_or(status::BAD_INPUT)?;
                    for (i, (d, z)) in out.iter_mut().zip(&x).enumerate() {
                        // A valid value beyond 64 bits: the host computes the batch instead.
                        *d = match i64::try_from(*z) {
                            Ok(n) => n as u64,
                            Err(_) if !is_valid(&v.valid, i) => 0,
                            Err(_) => return Err(status::OVERFLOW),
                        };
                    }
                }
            }
        }
        16 => {
            let out = out.get_mut(..rows * 16).ok_or(status::OUTPUT_TOO_SMALL)?;
            let x = wide(&v.vals, rows).ok_or(status::BAD_INPUT)?;
            for (i, z) in x.iter().enumerate() {
                out[16 * i..16 * i + 16].copy_from_slice(&z.to_le_bytes());
            }
        }
        _ => return Err(status::BAD_INPUT),
    }
    match &v.valid {
        Some(w) => validity[..words].copy_from_slice(w),
        None => validity[..words]
            .iter_mut()
            .enumerate()
            .for_each(|(w, x)| *x = lanes(rows - 64 * w)),
    }
    Ok(())
}

/// 8-byte values (`i64`, `f64`) as the bits they are stored as.
fn bits<T: Eight>(x: &[T]) -> &[u64] {
    // SAFETY: `T` has the size and alignment of `u64` (`Eight`'s contract), and every bit
    // pattern is a valid `u64`.
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u64>(), x.len()) }
}

/// The plain 8-byte value types [`bits`] reads.
///
/// # Safety
/// Implementors have the size and alignment of `u64`.
unsafe trait Eight: Copy {}
// SAFETY: 8 bytes, aligned to 8, as `u64`.
unsafe impl Eight for i64 {}
// SAFETY: 8 bytes, aligned to 8, as `u64`.
unsafe impl Eight for f64 {}
