//! The emulated compare-filter engine: one pass per operator over the column, as the
//! hardware pipeline would stream it, producing (true, false) bitmaps for three-valued logic;
//! it runs the filter program of fixed-width columns against literals. And the aggregate
//! engine: count, sum, min, max into per-group accumulators laid out as the Wasm kernel's state.

use nearstore_kernel_abi::{agg, program, types};

use super::FpgaError;
use crate::compute::namespace::ComputeProgram;

type Col<'a> = (u32, &'a [u8], Option<&'a [u8]>);

fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn value(c: &Col, i: usize) -> Result<i128, FpgaError> {
    let w = types::width(c.0);
    let b =
        c.1.get(i * w..i * w + w)
            .ok_or_else(|| FpgaError::BadBuffer("column buffer too short".into()))?;
    Ok(match c.0 {
        types::INT32 | types::DATE32 => i32::from_le_bytes(b.try_into().expect("4")) as i128,
        types::INT64 => i64::from_le_bytes(b.try_into().expect("8")) as i128,
        types::FLOAT64 => {
            let x = i64::from_le_bytes(b.try_into().expect("8"));
            (x ^ ((((x >> 63) as u64) >> 1) as i64)) as i128
        }
        types::DECIMAL128 => i128::from_le_bytes(b.try_into().expect("16")),
        t => return Err(FpgaError::Unsupported(format!("column type {t}"))),
    })
}

fn literal(code: u32, p: &[u8], pos: &mut usize) -> Result<i128, FpgaError> {
    let w = types::width(code);
    let b = p
        .get(*pos..*pos + w)
        .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
    *pos += w;
    value(&(code, b, None), 0)
}

fn u16_at(p: &[u8], pos: &mut usize) -> Result<usize, FpgaError> {
    let b = p
        .get(*pos..*pos + 2)
        .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
    *pos += 2;
    Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
}

/// Evaluates the program; returns the selection bitmap and the operator count.
pub(super) fn evaluate(p: &[u8], cols: &[Col], rows: usize) -> Result<(Vec<u8>, usize), FpgaError> {
    let col = |i: usize| {
        cols.get(i)
            .ok_or_else(|| FpgaError::Unsupported(format!("column {i} not bound")))
    };
    let valid = |c: &Col, i: usize| c.2.is_none_or(|v| bit(v, i));
    let mut stack: Vec<(Vec<bool>, Vec<bool>)> = Vec::new();
    let mut pos = 0;
    let mut ops = 0;
    while pos < p.len() {
        let code = p[pos];
        pos += 1;
        ops += 1;
        let entry = match code {
            program::CMP | program::IN => {
                let c = col(u16_at(p, &mut pos)?)?;
                let (op, lits) = if code == program::CMP {
                    let op = *p
                        .get(pos)
                        .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
                    pos += 1;
                    (op, vec![literal(c.0, p, &mut pos)?])
                } else {
                    let n = u16_at(p, &mut pos)?;
                    let lits = (0..n)
                        .map(|_| literal(c.0, p, &mut pos))
                        .collect::<Result<_, _>>()?;
                    (program::op::EQ, lits)
                };
                let mut t = vec![false; rows];
                let mut f = vec![false; rows];
                for i in 0..rows {
                    if !valid(c, i) {
                        continue;
                    }
                    let v = value(c, i)?;
                    let hit = lits.iter().any(|&l| match op {
                        program::op::EQ => v == l,
                        program::op::NE => v != l,
                        program::op::LT => v < l,
                        program::op::LE => v <= l,
                        program::op::GT => v > l,
                        _ => v >= l,
                    });
                    t[i] = hit;
                    f[i] = !hit;
                }
                (t, f)
            }
            program::IS_NULL | program::IS_NOT_NULL => {
                let c = col(u16_at(p, &mut pos)?)?;
                let v: Vec<bool> = (0..rows).map(|i| valid(c, i)).collect();
                let n: Vec<bool> = v.iter().map(|x| !x).collect();
                if code == program::IS_NULL {
                    (n, v)
                } else {
                    (v, n)
                }
            }
            program::AND | program::OR => {
                let (bt, bf) = stack
                    .pop()
                    .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                let (at, af) = stack
                    .pop()
                    .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                let and = code == program::AND;
                let t = (0..rows)
                    .map(|i| if and { at[i] && bt[i] } else { at[i] || bt[i] })
                    .collect();
                let f = (0..rows)
                    .map(|i| if and { af[i] || bf[i] } else { af[i] && bf[i] })
                    .collect();
                (t, f)
            }
            program::NOT => {
                let (t, f) = stack
                    .pop()
                    .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                (f, t)
            }
            program::CONST => {
                let v = *p
                    .get(pos)
                    .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
                pos += 1;
                (vec![v == 1; rows], vec![v == 0; rows])
            }
            other => return Err(FpgaError::Unsupported(format!("opcode {other}"))),
        };
        stack.push(entry);
    }
    let (t, _) = stack
        .pop()
        .ok_or_else(|| FpgaError::Unsupported("empty program".into()))?;
    if !stack.is_empty() {
        return Err(FpgaError::Unsupported("program leaves extra values".into()));
    }
    let mut bits = vec![0u8; rows.div_ceil(8)];
    for (i, _) in t.iter().enumerate().filter(|(_, x)| **x) {
        bits[i / 8] |= 1 << (i % 8);
    }
    Ok((bits, ops))
}

/// The compare-filter kernel as a namespace program. Ranges: column descriptor words,
/// filter program, output bitmap, then each column's values (and validity when its
/// descriptor says so). `cparam1` rows, `cparam2` columns; returns the operator count.
#[derive(Debug)]
pub(super) struct FilterKernel;

/// The column views that follow the fixed ranges of a run, per the descriptor words.
fn columns<'a>(
    words: &[u8],
    ncols: usize,
    ranges: &'a [&mut [u8]],
) -> Result<Vec<Col<'a>>, String> {
    let word = |k: usize| -> Result<u32, String> {
        words
            .get(4 * k..4 * k + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "column descriptor too short".to_string())
    };
    let mut out = Vec::with_capacity(ncols);
    let mut next = 0;
    for c in 0..ncols {
        let (t, has_validity) = (word(2 * c)?, word(2 * c + 1)? != 0);
        let values = ranges.get(next).ok_or("missing column buffer")?;
        next += 1;
        let validity = if has_validity {
            next += 1;
            Some(&ranges.get(next - 1).ok_or("missing validity buffer")?[..])
        } else {
            None
        };
        out.push((t, &values[..], validity));
    }
    if next != ranges.len() {
        return Err(format!("{} buffers left over", ranges.len() - next));
    }
    Ok(out)
}

impl ComputeProgram for FilterKernel {
    fn name(&self) -> &str {
        "compare-filter"
    }

    fn execute(&self, r: &mut [&mut [u8]], rows: u64, ncols: u64) -> Result<u64, String> {
        if r.len() < 3 {
            return Err("needs descriptor, program and output ranges".into());
        }
        let (head, rest) = r.split_at_mut(3);
        let cols = columns(&head[0][..], ncols as usize, rest)?;
        let (bits, ops) =
            evaluate(&head[1][..], &cols, rows as usize).map_err(|e| e.to_string())?;
        let out = &mut head[2];
        if out.len() < bits.len() {
            return Err("output buffer too small".into());
        }
        out[..bits.len()].copy_from_slice(&bits);
        Ok(ops as u64)
    }
}

/// The aggregate kernel as a namespace program. Ranges: descriptor (has-groups byte, 3
/// reserved, column count `u32`, column words), aggregate program, output accumulators,
/// the groups (`u32` per row) when present, then the columns. `cparam1` rows, `cparam2`
/// groups; returns the operator count.
#[derive(Debug)]
pub(super) struct AggregateKernel;

impl ComputeProgram for AggregateKernel {
    fn name(&self) -> &str {
        "aggregate"
    }

    fn execute(&self, r: &mut [&mut [u8]], rows: u64, groups: u64) -> Result<u64, String> {
        if r.len() < 3 || r[0].len() < 8 {
            return Err("needs descriptor, program and output ranges".into());
        }
        let has_groups = r[0][0] != 0;
        let ncols = u32::from_le_bytes(r[0][4..8].try_into().expect("4 bytes")) as usize;
        let fixed = 3 + usize::from(has_groups);
        if r.len() < fixed {
            return Err("missing the groups buffer".into());
        }
        let (head, rest) = r.split_at_mut(fixed);
        let (desc, head) = head.split_at_mut(1);
        let (prog, head) = head.split_at_mut(1);
        let (out, grp) = head.split_at_mut(1);
        let cols = columns(&desc[0][8..], ncols, rest)?;
        let ids = grp.first().map(|g| &g[..]);
        aggregate(
            &prog[0][..],
            ids,
            &cols,
            rows as usize,
            groups as usize,
            out[0],
        )
        .map(|ops| ops as u64)
        .map_err(|e| e.to_string())
    }
}

/// Accumulates `rows` rows into `n_groups × aggregates` slots of `agg::SLOT_BYTES` in
/// `out` (zeroed first; the layout of the Wasm kernel's state): counts, sums (integers and
/// decimals exact in `i128`, floats in `f64`), minima and maxima (float total-order keys).
pub(super) fn aggregate(
    prog: &[u8],
    groups: Option<&[u8]>,
    cols: &[Col],
    rows: usize,
    n_groups: usize,
    out: &mut [u8],
) -> Result<usize, FpgaError> {
    let prog = match agg::split(prog) {
        Some((entries, mut computed)) if !entries.is_empty() => {
            if computed.next().is_some() {
                return Err(FpgaError::Unsupported(
                    "the aggregate engine takes no computed inputs".into(),
                ));
            }
            entries
        }
        _ => return Err(FpgaError::Unsupported("malformed aggregate program".into())),
    };
    let naggs = prog.len() / 4;
    let need = n_groups * naggs * agg::SLOT_BYTES;
    if out.len() < need {
        return Err(FpgaError::BadBuffer("accumulator buffer too small".into()));
    }
    out[..need].fill(0);
    let group = |i: usize| -> Result<usize, FpgaError> {
        let g = match groups {
            None => 0,
            Some(ids) => ids
                .get(4 * i..4 * i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| FpgaError::BadBuffer("groups buffer too short".into()))?,
        };
        if g >= n_groups.max(1) {
            return Err(FpgaError::BadBuffer(format!("group {g} of {n_groups}")));
        }
        Ok(g)
    };
    for (j, spec) in prog.chunks_exact(4).enumerate() {
        let func = spec[0];
        if spec[3] != agg::INPUT_COLUMN {
            return Err(FpgaError::Unsupported(
                "the aggregate engine takes no computed inputs".into(),
            ));
        }
        let c = match u16::from_le_bytes([spec[1], spec[2]]) {
            agg::NO_COLUMN => None,
            k => Some(
                cols.get((k as usize).wrapping_sub(1))
                    .ok_or_else(|| FpgaError::Unsupported(format!("column {k} not bound")))?,
            ),
        };
        for i in 0..rows {
            let at = (group(i)? * naggs + j) * agg::SLOT_BYTES;
            let slot = &mut out[at..at + agg::SLOT_BYTES];
            let acc = i128::from_le_bytes(slot[..16].try_into().expect("16 bytes"));
            let count = i64::from_le_bytes(slot[16..24].try_into().expect("8 bytes"));
            let valid = c.is_none_or(|c| c.2.is_none_or(|v| bit(v, i)));
            let new_acc = match (func, c) {
                (agg::COUNT_STAR, _) => acc,
                (_, _) if !valid => continue,
                (agg::COUNT, _) => acc,
                (agg::SUM, Some(c)) if c.0 == types::FLOAT64 => {
                    let x = f64::from_le_bytes(
                        c.1.get(8 * i..8 * i + 8)
                            .ok_or_else(|| FpgaError::BadBuffer("column too short".into()))?
                            .try_into()
                            .expect("8 bytes"),
                    );
                    (f64::from_bits(acc as u64) + x).to_bits() as i128
                }
                (agg::SUM, Some(c)) => acc
                    .checked_add(value(c, i)?)
                    .ok_or_else(|| FpgaError::Unsupported("sum overflowed".into()))?,
                (agg::MIN, Some(c)) => {
                    let v = value(c, i)?;
                    if count == 0 || v < acc { v } else { acc }
                }
                (agg::MAX, Some(c)) => {
                    let v = value(c, i)?;
                    if count == 0 || v > acc { v } else { acc }
                }
                (f, _) => {
                    return Err(FpgaError::Unsupported(format!(
                        "aggregate function {f} without a column"
                    )));
                }
            };
            slot[..16].copy_from_slice(&new_acc.to_le_bytes());
            slot[16..24].copy_from_slice(&(count + 1).to_le_bytes());
        }
    }
    Ok(naggs)
}
