//! The aggregate program (`nearstore_kernel_abi::agg`): COUNT, SUM, MIN and MAX over a
//! batch's columns or over inputs computed from them ([`Computed`], expression programs
//! evaluated before anything is folded; one whose program begins with another's starts from
//! that one's values), folded into partials and merged into the state
//! slots; grouped, per group first while the groups are few ([`Few`]: counts, integer and
//! decimal sums), else row at a time into each row's group.

use alloc::vec;
use alloc::vec::Vec;

use nearstore_kernel::abi::{agg, status, types};
use nearstore_kernel::{AggState, BLOCK, Batch, Column, KernelResult, f64_order_key, lanes};

use crate::expr::{self, Vals};

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

/// Accumulates the aggregate program over a batch (see `nearstore_kernel_abi::agg`): its
/// computed inputs first, every one of them, so that an arithmetic error in one leaves the
/// state as it was (the host then evaluates them on their own, as a projection's).
pub(crate) fn aggregate(batch: &Batch, st: &mut AggState) -> KernelResult {
    let (p, programs) = agg::split(batch.params()).ok_or(status::BAD_INPUT)?;
    let rows = batch.rows();
    let programs: Vec<&[u8]> = programs.collect();
    let mut computed: Vec<Computed> = Vec::with_capacity(programs.len());
    for (k, program) in programs.iter().enumerate() {
        // The longest earlier input whose program begins this one's (TPC-H Q1's
        // `l_extendedprice * (1 - l_discount)` begins `… * (1 + l_tax)`'s): its values are
        // this one's first operand, not evaluated again.
        let prefix = programs[..k]
            .iter()
            .enumerate()
            .filter(|(_, p)| program.starts_with(p))
            .max_by_key(|(_, p)| p.len())
            .map(|(j, p)| (&computed[j], p.len()));
        let c = Computed::of(program, batch, prefix)?;
        computed.push(c);
    }
    let computed: Vec<Column> = computed.iter().map(|c| c.column(rows)).collect();
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
    let mut few = match groups {
        Some(g) if st.groups() <= FEW_GROUPS && counts_or_sums => {
            Some(Few::of(g, rows, st.groups())?)
        }
        _ => None,
    };
    for j in 0..p.len() / 4 {
        let func = p[4 * j];
        let at = u16::from_le_bytes([p[4 * j + 1], p[4 * j + 2]]);
        let input = match (at, p[4 * j + 3]) {
            (agg::NO_COLUMN, _) => None,
            (at, agg::INPUT_COLUMN) => Some(batch.column(at as usize)?),
            (at, agg::INPUT_COMPUTED) => Some(computed.get(at as usize).ok_or(status::BAD_INPUT)?),
            _ => return Err(status::BAD_INPUT),
        };
        let entry: [u8; 4] = p[4 * j..4 * j + 4]
            .try_into()
            .map_err(|_| status::BAD_INPUT)?;
        if let Some(few) = &mut few
            && few.fold(st, j, entry, input)?
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
                    for &gi in g.iter().take(rows).filter(|&&gi| gi != agg::SKIP_ROW) {
                        st.fold(gi as u32 as usize, j, (), |acc, _, ()| Ok(acc))?;
                    }
                }
            }
            continue;
        }
        let (true, Some(c)) = (
            matches!(func, agg::COUNT | agg::SUM | agg::MIN | agg::MAX),
            input,
        ) else {
            return Err(status::BAD_INPUT);
        };
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

/// A computed input's values over the batch, held while the aggregates read them as a
/// column: 64-bit integers while every value fits, else 128-bit (wide decimals), or floats.
struct Computed {
    vals: ComputedVals,
    /// Validity words, a row per bit from bit 0 (`None`: every row valid).
    valid: Option<Vec<u64>>,
}

enum ComputedVals {
    I64(Vec<i64>),
    I128(Vec<i128>),
    F64(Vec<f64>),
}

impl Computed {
    /// Evaluates an expression program over the batch (an error for what leaves its type's
    /// range or divides by zero, as a projection's evaluation); `prefix`: an input already
    /// computed whose program is the first bytes given of this one (a whole expression, so
    /// what follows it is the rest of this one's, over its value).
    fn of(program: &[u8], batch: &Batch, prefix: Option<(&Computed, usize)>) -> KernelResult<Self> {
        let rows = batch.rows();
        let v = match prefix {
            None => expr::eval(&expr::decode_expr(program, batch)?, batch)?,
            Some((first, len)) => {
                let rest = program.get(len..).ok_or(status::BAD_INPUT)?;
                let ops = expr::decode_after(rest, batch, 1)?;
                expr::eval_over(&ops, batch, alloc::vec![first.value()])?
            }
        };
        let vals = match v.vals {
            Vals::I64Ref(x) => ComputedVals::I64(x.to_vec()),
            Vals::I64(x) => ComputedVals::I64(x),
            Vals::I128(x) => ComputedVals::I128(x),
            Vals::F64Ref(x) => ComputedVals::F64(x.to_vec()),
            Vals::F64(x) => ComputedVals::F64(x),
            Vals::ConstI(c) => match i64::try_from(c) {
                Ok(c) => ComputedVals::I64(vec![c; rows]),
                Err(_) => ComputedVals::I128(vec![c; rows]),
            },
            Vals::ConstF(c) => ComputedVals::F64(vec![c; rows]),
        };
        Ok(Computed {
            vals,
            valid: v.valid,
        })
    }

    /// The values as an operand of an expression program.
    fn value(&self) -> expr::Value<'_> {
        let vals = match &self.vals {
            ComputedVals::I64(x) => Vals::I64Ref(x),
            ComputedVals::I128(x) => Vals::I128(x.clone()),
            ComputedVals::F64(x) => Vals::F64Ref(x),
        };
        expr::Value::checked(vals, self.valid.clone())
    }

    /// The values as a column of the batch's `rows` rows.
    fn column(&self, rows: usize) -> Column<'_> {
        fn bytes<T>(x: &[T]) -> &[u8] {
            // SAFETY: plain integers and floats, every byte initialised; the view covers
            // exactly the slice's memory and borrows it.
            unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u8>(), size_of_val(x)) }
        }
        let (code, values) = match &self.vals {
            ComputedVals::I64(x) => (types::INT64, bytes(x)),
            ComputedVals::I128(x) => (types::DECIMAL128, bytes(x)),
            ComputedVals::F64(x) => (types::FLOAT64, bytes(x)),
        };
        // Little-endian words: their bytes are the bitmap's, row 0 at bit 0 of byte 0.
        let valid = self.valid.as_deref().map(bytes);
        Column::from_parts(code, 0, values, valid, None, rows)
    }
}

/// Groups up to which [`Few`] folds a batch's grouped counts and sums into per-group
/// partials before the state: with a handful of groups (TPC-H Q1 has four) every row would
/// otherwise load, add with an overflow check and store its group's 16-byte slot and its count
/// once per aggregate.
const FEW_GROUPS: usize = 256;

/// A batch's group ids with each group's row count.
struct Few<'a> {
    /// Each row's group, or [`agg::SKIP_ROW`] for a row left out (checked: nothing else).
    ids: &'a [i32],
    /// Partials per set: the rows left out's (slot 0, added up as a group's and dropped),
    /// then group `g`'s at slot `g + 1` — [`slot`], which needs no pass to map the ids.
    slots: usize,
    rows_in: Vec<i64>,
    /// The per-group sums of the aggregate entries folded so far, by entry: a sum the program
    /// asks for twice (TPC-H Q1's `sum(l_quantity)` beside `avg(l_quantity)`) is added up once.
    sums_of: Vec<([u8; 4], Vec<i128>)>,
}

/// A row's partial in a set of [`Few`]'s: its group's plus one, a row left out's
/// ([`agg::SKIP_ROW`], -1) 0.
#[inline(always)]
fn slot(g: i32) -> usize {
    (g as u32).wrapping_add(1) as usize
}

impl<'a> Few<'a> {
    /// Counts `rows` rows' groups in one pass; `BAD_INPUT` for a missing id or one out of
    /// `groups` (but [`agg::SKIP_ROW`]): such a row is counted in a slot past the groups'.
    fn of(ids: &'a [i32], rows: usize, groups: usize) -> KernelResult<Self> {
        let ids = ids.get(..rows).ok_or(status::BAD_INPUT)?;
        let slots = groups + 1;
        // `groups` is at most FEW_GROUPS, so `slots` fits a u32.
        let (mut counts, _) =
            Self::per_group(ids, ids, slots + 1, |g| slot(g).min(slots), |_| 1i64);
        if counts[slots] != 0 {
            return Err(status::BAD_INPUT);
        }
        counts.truncate(slots);
        counts.remove(0);
        Ok(Few {
            ids,
            slots,
            rows_in: counts,
            sums_of: Vec::new(),
        })
    }

    /// Adds up `conv(vals[i])` per partial `at(ids[i])` (each below `slots`: the caller's
    /// check, or `at`'s clamp) with wrapping addition into `slots` sums, and says whether any
    /// addition overflowed. Four rows at a time into four sets of partials: rows of one group
    /// one after another (TPC-H Q1's are, a handful of groups) would otherwise each wait for
    /// the previous one's store.
    #[inline(always)]
    fn per_group<T: Copy, A: Sum>(
        ids: &[i32],
        vals: &[T],
        slots: usize,
        at: impl Fn(i32) -> usize,
        conv: impl Fn(T) -> A,
    ) -> (Vec<A>, bool) {
        let mut part = vec![A::default(); 4 * slots];
        let mut over = false;
        let mut add = |k: usize, x: T| {
            // SAFETY: `k` is `l * slots + at(id)` with `l < 4` and `at(id)` below `slots`
            // (the caller's check), so it lies within the `4 * slots` partials.
            let s = unsafe { part.get_unchecked_mut(k) };
            let (v, o) = s.add(conv(x));
            *s = v;
            over |= o;
        };
        let n = ids.len().min(vals.len());
        let ((iq, ir), (vq, vr)) = (ids[..n].as_chunks::<4>(), vals[..n].as_chunks::<4>());
        for (g, x) in iq.iter().zip(vq) {
            for l in 0..4 {
                add(l * slots + at(g[l]), x[l]);
            }
        }
        for (&g, &x) in ir.iter().zip(vr) {
            add(at(g), x);
        }
        let (first, others) = part.split_at_mut(slots);
        for lane in others.chunks_exact(slots) {
            for (s, &x) in first.iter_mut().zip(lane) {
                let (v, o) = s.add(x);
                *s = v;
                over |= o;
            }
        }
        part.truncate(slots);
        (part, over)
    }

    /// Folds aggregate `j` (its program `entry`, over `input`) if it is one this path takes
    /// — COUNT(*), or COUNT and an integer or decimal SUM over an input without nulls — and
    /// says whether it did. A sum is added up per group in an `i64` (a decimal's in an `i128`); should one
    /// overflow, nothing has been written and the row-at-a-time path does it instead.
    fn fold(
        &mut self,
        st: &mut AggState,
        j: usize,
        entry: [u8; 4],
        input: Option<&Column>,
    ) -> KernelResult<bool> {
        let func = entry[0];
        if let Some((_, sums)) = self.sums_of.iter().find(|(e, _)| *e == entry) {
            let sums = sums.clone();
            return self.merge(st, j, Some(&sums));
        }
        // Per group, what to add to its accumulator (`None`: a count alone).
        let sums: Option<Vec<i128>> = match (func, input) {
            (agg::COUNT_STAR, _) => None,
            (agg::COUNT | agg::SUM, Some(c)) => {
                if c.has_nulls() {
                    return Ok(false);
                }
                let sums = match (func, c.type_code()) {
                    (agg::COUNT, _) => return self.merge(st, j, None),
                    // 32-bit values: no overflow checks.
                    (_, types::INT32 | types::DATE32) => {
                        self.sums(c.i32s()?, |x| Exact(x.into()))?
                    }
                    (_, types::INT64) => self.sums(c.i64s()?, |x: i64| x)?,
                    (_, types::DECIMAL128) => self.sums(c.i128s()?, |x| x)?,
                    _ => None,
                };
                let Some(sums) = sums else {
                    return Ok(false);
                };
                self.sums_of.push((entry, sums.clone()));
                Some(sums)
            }
            _ => return Ok(false),
        };
        self.merge(st, j, sums.as_deref())
    }

    /// Adds each group's row count (and sum) to its slot of aggregate `j`.
    fn merge(&self, st: &mut AggState, j: usize, sums: Option<&[i128]>) -> KernelResult<bool> {
        for (g, &n) in self.rows_in.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (acc, count) = st.slot(g, j)?;
            if let Some(s) = sums {
                let prev = i128::from_le_bytes(*acc);
                let add = *s.get(g).ok_or(status::BAD_INPUT)?;
                *acc = prev.checked_add(add).ok_or(status::OVERFLOW)?.to_le_bytes();
            }
            *count += n;
        }
        Ok(true)
    }

    /// Each group's sum of `vals` converted by `conv`, added up in `A` (`i64`; `i128` for
    /// decimals wider than 18 digits); `None` if one overflows it (the rows left out's sum
    /// too: the row-at-a-time path, which skips them, then adds up instead).
    fn sums<T: Copy, A: Sum>(
        &self,
        vals: &[T],
        conv: impl Fn(T) -> A,
    ) -> KernelResult<Option<Vec<i128>>> {
        let vals = vals.get(..self.ids.len()).ok_or(status::BAD_INPUT)?;
        let (sums, over) = Self::per_group(self.ids, vals, self.slots, slot, conv);
        Ok((!over).then(|| sums[1..].iter().copied().map(Sum::wide).collect()))
    }
}

/// An integer a group's sum is added up in, with wrapping addition and its overflow flag.
trait Sum: Copy + Default {
    fn add(self, x: Self) -> (Self, bool);
    fn wide(self) -> i128;
}

impl Sum for i64 {
    fn add(self, x: Self) -> (Self, bool) {
        self.overflowing_add(x)
    }
    fn wide(self) -> i128 {
        self.into()
    }
}

/// An `i64` sum of 32-bit (or narrower) values that cannot overflow, so none is checked: a
/// batch's rows (each with a 4-byte group id in the kernel's 4 GiB memory) are fewer than
/// 2^30, and 2^30 values of at most 2^31 stay below 2^61.
#[derive(Clone, Copy, Default)]
struct Exact(i64);

impl Sum for Exact {
    fn add(self, x: Self) -> (Self, bool) {
        (Exact(self.0.wrapping_add(x.0)), false)
    }
    fn wide(self) -> i128 {
        self.0.into()
    }
}

impl Sum for i128 {
    fn add(self, x: Self) -> (Self, bool) {
        self.overflowing_add(x)
    }
    fn wide(self) -> i128 {
        self
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
                    Some(g) => match *g.get(i).ok_or(status::BAD_INPUT)? {
                        agg::SKIP_ROW => continue,
                        g => g as u32 as usize,
                    },
                    None => 0,
                };
                st.fold(g, a.j, vals[i], &f)?;
            }
        }
    }
    Ok(())
}
