//! Parquet's RLE / bit-packed hybrid (dictionary indices, definition levels): its runs, a
//! value read where it lies, whole pages unpacked in groups of 8.

/// A run of an RLE / bit-packed hybrid, by the rows it covers.
#[derive(Clone, Copy)]
pub(super) enum Run {
    /// `value` repeated up to row `end`.
    Repeated { end: usize, value: u32 },
    /// Bit-packed values from row `start` up to `end`, the first at byte `at`.
    Packed { start: usize, end: usize, at: usize },
}

pub(super) fn uleb(data: &[u8], at: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or("a run header past the page's end")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a run header too long".into())
}

/// The runs of a hybrid of `rows` values of `bit_width` bits.
pub(super) fn runs(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    out: &mut Vec<Run>,
) -> std::result::Result<(), String> {
    out.clear();
    let bw = bit_width as usize;
    let width = bw.div_ceil(8);
    let (mut at, mut row) = (0usize, 0usize);
    while row < rows {
        let header = uleb(data, &mut at)?;
        let count = usize::try_from(header >> 1).map_err(|_| "a run too long")?;
        if header & 1 == 1 {
            // Groups of 8 values; a writer may leave the last group's bytes out.
            let bytes = count.saturating_mul(bw).min(data.len().saturating_sub(at));
            // Width 0: every value is 0, and no bytes hold them.
            let values = (bytes * 8)
                .checked_div(bw)
                .unwrap_or(count.saturating_mul(8));
            let len = values.min(count.saturating_mul(8)).min(rows - row);
            if len == 0 {
                return Err("an empty bit-packed run".into());
            }
            out.push(Run::Packed {
                start: row,
                end: row + len,
                at,
            });
            at += bytes;
            row += len;
        } else {
            let bytes = data
                .get(at..at + width)
                .ok_or("a run past the page's end")?;
            let mut v = [0u8; 4];
            v[..width].copy_from_slice(bytes);
            at += width;
            let len = count.min(rows - row);
            if len == 0 {
                return Err("an empty run".into());
            }
            out.push(Run::Repeated {
                end: row + len,
                value: u32::from_le_bytes(v),
            });
            row += len;
        }
    }
    Ok(())
}

/// The value `i` of a bit-packed run starting at byte `at`.
#[inline(always)]
pub(super) fn packed_at(data: &[u8], at: usize, bw: usize, i: usize) -> u32 {
    let bit = i * bw;
    let b = at + bit / 8;
    let word = match data.get(b..b + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            let tail = data.get(b..).unwrap_or(&[]);
            w[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(w)
        }
    };
    ((word >> (bit % 8)) & ((1u64 << bw) - 1)) as u32
}

/// Unpacks whole groups of 8 values of `BW` bits from `data` into `out` (`out.len()` a
/// multiple of 8, `data` at least `out.len() / 8 * BW` bytes): each value by an 8-byte load
/// where the data goes on 8 bytes past its group, else from a copy of the group.
#[inline(always)]
pub(super) fn unpack<const BW: usize>(data: &[u8], out: &mut [u32]) {
    let mask = if BW == 0 { 0 } else { (1u64 << BW) - 1 };
    let direct = (data.len().saturating_sub(8) / BW.max(1)).min(out.len() / 8);
    let (fast, slow) = out.split_at_mut(direct * 8);
    for (g, o) in fast.chunks_exact_mut(8).enumerate() {
        let d = &data[g * BW..g * BW + BW + 8];
        for (j, v) in o.iter_mut().enumerate() {
            let bit = j * BW;
            let w = u64::from_le_bytes(d[bit / 8..bit / 8 + 8].try_into().expect("8 bytes"));
            *v = ((w >> (bit % 8)) & mask) as u32;
        }
    }
    for (g, o) in slow.chunks_exact_mut(8).enumerate() {
        let at = (direct + g) * BW;
        let mut buf = [0u8; 40];
        buf[..BW].copy_from_slice(&data[at..at + BW]);
        for (j, v) in o.iter_mut().enumerate() {
            let bit = j * BW;
            let w = u64::from_le_bytes(buf[bit / 8..bit / 8 + 8].try_into().expect("8 bytes"));
            *v = ((w >> (bit % 8)) & mask) as u32;
        }
    }
}

pub(super) fn unpack_dyn(bw: usize, data: &[u8], out: &mut [u32]) {
    macro_rules! widths {
        ($($n:literal)*) => {
            match bw {
                $($n => unpack::<$n>(data, out),)*
                _ => unreachable!("bit widths are checked to be at most 32"),
            }
        };
    }
    widths!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
}

/// [`indices_at`] without the dense case: `at`'s values each read where they lie, or (`None`)
/// every value unpacked, into `out`.
pub(super) fn unpack_at(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    at: Option<&[u32]>,
    runs_buf: &mut Vec<Run>,
    out: &mut Vec<u32>,
) -> std::result::Result<(), String> {
    runs(data, bit_width, rows, runs_buf)?;
    let bw = bit_width as usize;
    let Some(at) = at else {
        // The runs cover the page and each value is written below: the buffer is only cut
        // or grown to the page (its old values are not cleared first).
        out.resize(rows, 0);
        let mut row = 0usize;
        for r in runs_buf.iter() {
            match *r {
                Run::Repeated { end, value } => {
                    out[row..end].fill(value);
                    row = end;
                }
                Run::Packed {
                    start,
                    end,
                    at: byte,
                } => {
                    let whole = (end - start) / 8 * 8;
                    if data.len() >= byte + whole / 8 * bw {
                        unpack_dyn(bw, &data[byte..], &mut out[start..start + whole]);
                    } else {
                        for i in 0..whole {
                            out[start + i] = packed_at(data, byte, bw, i);
                        }
                    }
                    for i in whole..end - start {
                        out[start + i] = packed_at(data, byte, bw, i);
                    }
                    row = end;
                }
            }
        }
        debug_assert_eq!(row, rows);
        return Ok(());
    };
    out.clear();
    let mut r = 0usize;
    for &p in at {
        let p = p as usize;
        loop {
            let end = match runs_buf.get(r) {
                Some(Run::Repeated { end, .. } | Run::Packed { end, .. }) => *end,
                None => return Err(format!("row {p} past the page's values")),
            };
            if p < end {
                break;
            }
            r += 1;
        }
        out.push(match runs_buf[r] {
            Run::Repeated { value, .. } => value,
            Run::Packed {
                start, at: byte, ..
            } => packed_at(data, byte, bw, p - start),
        });
    }
    Ok(())
}
