//! The aggregate program (`nearstore_kernel_abi::agg`): COUNT, SUM, MIN and MAX over a
//! batch's columns, folded into partials and merged into the state slots; grouped, per group
//! first while the groups are few ([`Few`]: counts and integer sums), else row at a time into
//! each row's group.

use alloc::vec::Vec;

use nearstore_kernel::abi::{agg, status, types};
use nearstore_kernel::{AggState, BLOCK, Batch, Column, KernelResult, f64_order_key, lanes};

/// One aggregate's running value over some rows.
#[derive(Clone, Copy)]
struct Partial {
    acc: i128,
    fsum: f64,
    count: i64,
}

/// Folds `v` (an integer, or a float's order key / value) into a partial.
#[inline(always)]
fn fold(p: &mut Partial, func: u8, float: bool, v: i128, f: f64) -> KernelResult {
    match func {
        agg::SUM if float => p.fsum += f,
        agg::SUM => p.acc = p.acc.checked_add(v).ok_or(status::OVERFLOW)?,
        agg::MIN if p.count == 0 || v < p.acc => p.acc = v,
        agg::MAX if p.count == 0 || v > p.acc => p.acc = v,
        _ => {}
    }
    p.count += 1;
    Ok(())
}

/// Merges a partial into a state slot.
fn merge(
    st: &mut AggState,
    group: usize,
    j: usize,
    func: u8,
    float: bool,
    p: &Partial,
) -> KernelResult {
    if p.count == 0 {
        return Ok(());
    }
    let (acc, count) = st.slot(group, j)?;
    let first = *count == 0;
    match func {
        agg::SUM if float => {
            let prev = f64::from_le_bytes(acc[..8].try_into().map_err(|_| status::BAD_INPUT)?);
            acc[..8].copy_from_slice(&(prev + p.fsum).to_le_bytes());
        }
        agg::SUM => {
            let prev = i128::from_le_bytes(*acc);
            *acc = prev
                .checked_add(p.acc)
                .ok_or(status::OVERFLOW)?
                .to_le_bytes();
        }
        agg::MIN | agg::MAX => {
            let prev = i128::from_le_bytes(*acc);
            let better = if func == agg::MIN {
                p.acc < prev
            } else {
                p.acc > prev
            };
            if first || better {
                *acc = p.acc.to_le_bytes();
            }
        }
        _ => {}
    }
    *count += p.count;
    Ok(())
}

/// Accumulates the aggregate program over a batch (see `nearstore_kernel_abi::agg`).
pub(crate) fn aggregate(batch: &Batch, st: &mut AggState) -> KernelResult {
    let p = batch.params();
    if p.len() % 4 != 0 {
        return Err(status::BAD_INPUT);
    }
    let rows = batch.rows();
    let gcol = batch.column(0)?;
    let groups: Option<&[i32]> = if gcol.type_code() == 0 {
        None
    } else {
        Some(gcol.i32s()?)
    };
    // With few groups, each group's rows in this batch are counted once for every count and
    // sum (a program of minima and maxima does without the pass).
    let counts_or_sums = p
        .chunks_exact(4)
        .any(|a| matches!(a[0], agg::COUNT_STAR | agg::COUNT | agg::SUM));
    let few = match groups {
        Some(g) if st.groups() <= FEW_GROUPS && counts_or_sums => {
            Some(Few::of(g, rows, st.groups())?)
        }
        _ => None,
    };
    for j in 0..p.len() / 4 {
        let func = p[4 * j];
        let col = u16::from_le_bytes([p[4 * j + 1], p[4 * j + 2]]);
        if let Some(few) = &few
            && few.fold(batch, st, j, func, col)?
        {
            continue;
        }
        let zero = Partial {
            acc: 0,
            fsum: 0.0,
            count: 0,
        };
        if func == agg::COUNT_STAR {
            match groups {
                None => merge(
                    st,
                    0,
                    j,
                    func,
                    false,
                    &Partial {
                        count: rows as i64,
                        ..zero
                    },
                )?,
                Some(g) => {
                    for &gi in g.iter().take(rows) {
                        st.fold(gi as u32 as usize, j, (), |acc, _, ()| Ok(acc))?;
                    }
                }
            }
            continue;
        }
        if !matches!(func, agg::COUNT | agg::SUM | agg::MIN | agg::MAX) || col == agg::NO_COLUMN {
            return Err(status::BAD_INPUT);
        }
        let c = batch.column(col as usize)?;
        let float = c.type_code() == types::FLOAT64;
        let args = Args {
            func,
            float,
            j,
            rows,
            groups,
        };
        match c.type_code() {
            types::INT32 | types::DATE32 => {
                accumulate(st, c, c.i32s()?, |x| (x as i128, 0.0), &args)?
            }
            types::INT64 => accumulate(st, c, c.i64s()?, |x| (x as i128, 0.0), &args)?,
            types::DECIMAL128 => accumulate(st, c, c.i128s()?, |x| (x, 0.0), &args)?,
            types::FLOAT64 => {
                accumulate(st, c, c.f64s()?, |x| (f64_order_key(x) as i128, x), &args)?
            }
            _ => return Err(status::UNSUPPORTED),
        }
    }
    Ok(())
}

/// Groups up to which [`Few`] folds a batch's grouped counts and integer sums into per-group
/// partials before the state: with a handful of groups (TPC-H Q1 has four) every row would
/// otherwise load, add with an overflow check and store its group's 16-byte slot and its count
/// once per aggregate.
const FEW_GROUPS: usize = 256;

/// A batch's group ids with each group's row count.
struct Few<'a> {
    ids: &'a [i32],
    rows_in: Vec<i64>,
}

impl<'a> Few<'a> {
    /// Counts `rows` rows' groups; `BAD_INPUT` for a missing id or one out of `groups`.
    fn of(ids: &'a [i32], rows: usize, groups: usize) -> KernelResult<Self> {
        let ids = ids.get(..rows).ok_or(status::BAD_INPUT)?;
        let mut rows_in = alloc::vec![0i64; groups];
        for &g in ids {
            *rows_in
                .get_mut(g as u32 as usize)
                .ok_or(status::BAD_INPUT)? += 1;
        }
        Ok(Few { ids, rows_in })
    }

    /// Folds aggregate `j` (`func` over column `col`) if it is one this path takes — COUNT(*),
    /// or COUNT and an integer SUM over a column without nulls — and says whether it did. A
    /// sum is added up per group in an `i64`; should one overflow, nothing has been written
    /// and the row-at-a-time path does it instead.
    fn fold(
        &self,
        batch: &Batch,
        st: &mut AggState,
        j: usize,
        func: u8,
        col: u16,
    ) -> KernelResult<bool> {
        // Per group, what to add to its accumulator (`None`: a count alone).
        let sums: Option<Vec<i64>> = match func {
            agg::COUNT_STAR => None,
            agg::COUNT | agg::SUM if col != agg::NO_COLUMN => {
                let c = batch.column(col as usize)?;
                if c.has_nulls() {
                    return Ok(false);
                }
                let sums = match (func, c.type_code()) {
                    (agg::COUNT, _) => return self.merge(st, j, None),
                    (_, types::INT32 | types::DATE32) => self.sums(c.i32s()?, |x| x as i64)?,
                    (_, types::INT64) => self.sums(c.i64s()?, |x| x)?,
                    _ => None,
                };
                if sums.is_none() {
                    return Ok(false);
                }
                sums
            }
            _ => return Ok(false),
        };
        self.merge(st, j, sums.as_deref())
    }

    /// Adds each group's row count (and sum) to its slot of aggregate `j`.
    fn merge(&self, st: &mut AggState, j: usize, sums: Option<&[i64]>) -> KernelResult<bool> {
        for (g, &n) in self.rows_in.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (acc, count) = st.slot(g, j)?;
            if let Some(s) = sums {
                let prev = i128::from_le_bytes(*acc);
                let add = *s.get(g).ok_or(status::BAD_INPUT)? as i128;
                *acc = prev.checked_add(add).ok_or(status::OVERFLOW)?.to_le_bytes();
            }
            *count += n;
        }
        Ok(true)
    }

    /// Each group's sum of `vals` (`None` if one overflows an `i64`).
    fn sums<T: Copy>(&self, vals: &[T], conv: impl Fn(T) -> i64) -> KernelResult<Option<Vec<i64>>> {
        let vals = vals.get(..self.ids.len()).ok_or(status::BAD_INPUT)?;
        let mut sums = alloc::vec![0i64; self.rows_in.len()];
        let mut over = false;
        for (&g, &x) in self.ids.iter().zip(vals) {
            // In range: `of` checked every id.
            let s = &mut sums[g as u32 as usize];
            let (v, o) = s.overflowing_add(conv(x));
            *s = v;
            over |= o;
        }
        Ok((!over).then_some(sums))
    }
}

struct Args<'a> {
    func: u8,
    float: bool,
    j: usize,
    rows: usize,
    groups: Option<&'a [i32]>,
}

/// One aggregate over one column, monomorphised per value type.
#[inline(always)]
fn accumulate<T: Copy>(
    st: &mut AggState,
    c: &Column,
    vals: &[T],
    conv: impl Fn(T) -> (i128, f64),
    a: &Args,
) -> KernelResult {
    let zero = Partial {
        acc: 0,
        fsum: 0.0,
        count: 0,
    };
    match a.groups {
        // Float sums are folded row by row into the slot so the rounding order matches a
        // sequential sum over all batches.
        None if !(a.float && a.func == agg::SUM) => {
            let mut part = zero;
            for base in (0..a.rows).step_by(BLOCK) {
                let valid = c.validity_block(base);
                let end = (base + BLOCK).min(a.rows);
                if valid == lanes(end - base) {
                    for &x in &vals[base..end] {
                        let (v, f) = conv(x);
                        fold(&mut part, a.func, a.float, v, f)?;
                    }
                } else {
                    for (i, &x) in vals[base..end].iter().enumerate() {
                        if valid & (1 << i) != 0 {
                            let (v, f) = conv(x);
                            fold(&mut part, a.func, a.float, v, f)?;
                        }
                    }
                }
            }
            merge(st, 0, a.j, a.func, a.float, &part)
        }
        // Row at a time into each row's slot, one loop per function.
        _ => match a.func {
            agg::SUM if a.float => scatter(st, c, vals, a, |acc, _, x| {
                let (_, f) = conv(x);
                Ok((f64::from_bits(acc as u64) + f).to_bits() as i128)
            }),
            agg::SUM => scatter(st, c, vals, a, |acc, _, x| {
                acc.checked_add(conv(x).0).ok_or(status::OVERFLOW)
            }),
            agg::MIN => scatter(st, c, vals, a, |acc, n, x| {
                let v = conv(x).0;
                Ok(if n == 0 || v < acc { v } else { acc })
            }),
            agg::MAX => scatter(st, c, vals, a, |acc, n, x| {
                let v = conv(x).0;
                Ok(if n == 0 || v > acc { v } else { acc })
            }),
            _ => scatter(st, c, vals, a, |acc, _, _| Ok(acc)),
        },
    }
}

/// Folds each valid row of `vals` into its group's slot with `f`.
#[inline(always)]
fn scatter<T: Copy>(
    st: &mut AggState,
    c: &Column,
    vals: &[T],
    a: &Args,
    f: impl Fn(i128, i64, T) -> KernelResult<i128>,
) -> KernelResult {
    let vals = vals.get(..a.rows).ok_or(status::BAD_INPUT)?;
    for base in (0..a.rows).step_by(BLOCK) {
        let valid = c.validity_block(base);
        let end = (base + BLOCK).min(a.rows);
        // A row's bit, group and value are indexed by the row.
        #[allow(clippy::needless_range_loop)]
        for i in base..end {
            if valid >> (i - base) & 1 != 0 {
                let g = match a.groups {
                    Some(g) => *g.get(i).ok_or(status::BAD_INPUT)? as u32 as usize,
                    None => 0,
                };
                st.fold(g, a.j, vals[i], &f)?;
            }
        }
    }
    Ok(())
}
