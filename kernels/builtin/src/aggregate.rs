//! The aggregate program (`nearstore_kernel_abi::agg`): COUNT, SUM, MIN and MAX over a
//! batch's columns or over inputs computed from them ([`Computed`], expression programs
//! evaluated before anything is folded; one whose program begins with another's starts from
//! that one's values), folded into partials and merged into the state
//! slots; grouped, per group first while the groups are few ([`Few`]: counts, integer and
//! decimal sums, those over 64-bit inputs several in one pass), else row at a time into each
//! row's group.

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
            Some(Few::of(g, rows, st.groups(), p, batch, &computed)?)
        }
        _ => None,
    };
    for j in 0..p.len() / 4 {
        let func = p[4 * j];
        let entry: [u8; 4] = p[4 * j..4 * j + 4]
            .try_into()
            .map_err(|_| status::BAD_INPUT)?;
        let input = input(entry, batch, &computed)?;
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

/// The input of the aggregate entry `entry` (`None`: COUNT(*)'s): a column of the batch or a
/// computed one.
fn input<'c>(
    entry: [u8; 4],
    batch: &'c Batch,
    computed: &'c [Column<'c>],
) -> KernelResult<Option<&'c Column<'c>>> {
    Ok(match (u16::from_le_bytes([entry[1], entry[2]]), entry[3]) {
        (agg::NO_COLUMN, _) => None,
        (at, agg::INPUT_COLUMN) => Some(batch.column(at as usize)?),
        (at, agg::INPUT_COMPUTED) => Some(computed.get(at as usize).ok_or(status::BAD_INPUT)?),
        _ => return Err(status::BAD_INPUT),
    })
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
    /// then group `g`'s at slot `g + 1` ([`slot`], which needs no pass to map the ids); past
    /// them one for an id out of range, an error.
    slots: usize,
    rows_in: Vec<i64>,
    /// The per-group sums of the aggregate entries added up so far (those [`Few::of`] added
    /// up together, and those folded), by entry: a sum the program asks for twice (TPC-H
    /// Q1's `sum(l_quantity)` beside `avg(l_quantity)`) is added up once.
    sums_of: Vec<([u8; 4], Vec<i128>)>,
}

/// A row's partial in a set of [`Few`]'s: its group's plus one, a row left out's
/// ([`agg::SKIP_ROW`], -1) 0.
#[inline(always)]
fn slot(g: i32) -> usize {
    (g as u32).wrapping_add(1) as usize
}

/// Per set of [`Few`]'s, the sums of `N` columns and the rows.
type Partials<A, const N: usize> = Vec<([A; N], i64)>;

impl<'a> Few<'a> {
    /// Counts `rows` rows' groups in the pass that adds up the aggregate program `p`'s
    /// distinct sums over 64-bit inputs without nulls (TPC-H Q1's of quantity, price and
    /// discounted price: several in one pass, up to four, a row's group read and placed
    /// once), or in a pass of its own when it has none; `BAD_INPUT` for a missing id or one
    /// out of `groups` (but [`agg::SKIP_ROW`]). The sums are kept for [`Few::fold`] to find,
    /// unless the values are too large for them to be sure to fit an `i64` ([`Bounded`]):
    /// then each is added up on its own, its additions checked. An entry whose input is amiss
    /// is left to `fold` to report.
    fn of(
        ids: &'a [i32],
        rows: usize,
        groups: usize,
        p: &[u8],
        batch: &Batch,
        computed: &[Column],
    ) -> KernelResult<Self> {
        let ids = ids.get(..rows).ok_or(status::BAD_INPUT)?;
        let mut few = Few {
            ids,
            slots: groups + 1,
            rows_in: Vec::new(),
            sums_of: Vec::new(),
        };
        let mut wanted: Vec<([u8; 4], &[i64])> = Vec::new();
        for e in p.chunks_exact(4) {
            let Ok(entry) = <[u8; 4]>::try_from(e) else {
                continue;
            };
            if entry[0] == agg::SUM
                && !wanted.iter().any(|(w, _)| *w == entry)
                && let Ok(Some(c)) = input(entry, batch, computed)
                && !c.has_nulls()
                && let Some(vals) = c.i64s().ok().and_then(|v| v.get(..rows))
            {
                wanted.push((entry, vals));
            }
        }
        if wanted.is_empty() {
            few.pass::<0>(&[])?;
        }
        for pass in wanted.chunks(4) {
            match pass.len() {
                1 => few.pass::<1>(pass)?,
                2 => few.pass::<2>(pass)?,
                3 => few.pass::<3>(pass)?,
                _ => few.pass::<4>(pass)?,
            }
        }
        Ok(few)
    }

    /// One pass of [`Few::of`] over `N` inputs: the rows per group (the first pass's kept),
    /// and the inputs' sums per group.
    // Each pass over the rows is a function of its own (here and in `sums`): inlined into
    // `aggregate`, which Cranelift compiles with hundreds of locals, the same passes took
    // longer (TPC-H Q1 warm, measured).
    #[inline(never)]
    fn pass<const N: usize>(&mut self, pass: &[([u8; 4], &[i64])]) -> KernelResult {
        let vals: [&[i64]; N] = core::array::from_fn(|c| pass[c].1);
        let (part, over) = Self::per_group(self.ids, vals, self.slots, Bounded)?;
        if self.rows_in.is_empty() {
            self.rows_in = part[1..].iter().map(|(_, n)| *n).collect();
        }
        if !over {
            for (c, (entry, _)) in pass.iter().enumerate() {
                let wide = part[1..].iter().map(|(s, _)| s[c].wide()).collect();
                self.sums_of.push((*entry, wide));
            }
        }
        Ok(())
    }

    /// Adds up `conv(vals[c][i])` per partial `slot(ids[i])` with wrapping addition into
    /// `slots` sums of each of the `N` columns, and counts the rows per partial; says whether
    /// any addition overflowed, or for [`Bounded`] sums whether the values' magnitudes leave
    /// it possible. `BAD_INPUT` for a column shorter than the ids, or an id past the slots
    /// (counted in a partial past them). One pass for the `N`: a row's group is read and
    /// placed once. Four rows at a time into four sets of partials: rows of one group one after
    /// another (TPC-H Q1's are, a handful of groups) would otherwise each wait for the previous
    /// one's store.
    #[inline(always)]
    fn per_group<const N: usize, T: Copy, A: Sum>(
        ids: &[i32],
        vals: [&[T]; N],
        slots: usize,
        conv: impl Fn(T) -> A,
    ) -> KernelResult<(Partials<A, N>, bool)> {
        let n = ids.len();
        if vals.iter().any(|v| v.len() < n) {
            return Err(status::BAD_INPUT);
        }
        // A set per lane: the slots, and one for an id out of range.
        let set = slots + 1;
        let at = |g: i32| slot(g).min(slots);
        let mut part: Partials<A, N> = vec![([A::default(); N], 0); 4 * set];
        let mut over = false;
        // Fewer than `2^c` values within `±2^(63 - c)` add up to less than `2^63` in
        // magnitude; a value is within them when `x + 2^(63 - c)` (as unsigned) is below
        // `2^(64 - c)`, and so are all when the values so biased, ORed, are.
        let c = u64::BITS - (n as u64).leading_zeros();
        let bias = 1u64 << (63 - c.min(63));
        let mut magnitudes = 0u64;
        let vals = vals.map(|v| &v[..n]);
        let mut add = |k: usize, i: usize| {
            // SAFETY: `k` is `l * set + at(id)` with `l < 4` and `at(id)` at most `slots`, so
            // it lies within the `4 * set` partials; `i` is a row below `n`, the length of
            // each of `vals`.
            let (s, rows) = unsafe { part.get_unchecked_mut(k) };
            *rows += 1;
            for (s, v) in s.iter_mut().zip(&vals) {
                let x = conv(unsafe { *v.get_unchecked(i) });
                magnitudes |= x.magnitude(bias);
                let (sum, o) = s.add(x);
                *s = sum;
                over |= o;
            }
        };
        let (iq, ir) = ids.as_chunks::<4>();
        for (q, g) in iq.iter().enumerate() {
            for (l, &g) in g.iter().enumerate() {
                add(l * set + at(g), 4 * q + l);
            }
        }
        for (r, &g) in ir.iter().enumerate() {
            add(at(g), 4 * iq.len() + r);
        }
        let (first, others) = part.split_at_mut(set);
        for lane in others.chunks_exact(set) {
            for ((s, rows), (x, more)) in first.iter_mut().zip(lane) {
                *rows += more;
                for (s, &x) in s.iter_mut().zip(x) {
                    let (v, o) = s.add(x);
                    *s = v;
                    over |= o;
                }
            }
        }
        if first[slots].1 != 0 {
            return Err(status::BAD_INPUT);
        }
        part.truncate(slots);
        let out_of_bounds = c > 0 && magnitudes >> (64 - c) != 0;
        Ok((part, over || out_of_bounds))
    }

    /// Folds aggregate `j` (its program `entry`, over `input`) if it is one this path takes
    /// — COUNT(*), or COUNT and an integer or decimal SUM over an input without nulls — and
    /// says whether it did. A sum is added up per group in an `i64` (a wide decimal's in an
    /// `i128`), unless [`Few::of`] has; should one overflow, nothing has been written
    /// and the row-at-a-time path does it instead.
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
    #[inline(never)]
    fn sums<T: Copy, A: Sum>(
        &self,
        vals: &[T],
        conv: impl Fn(T) -> A,
    ) -> KernelResult<Option<Vec<i128>>> {
        // A column shorter than the ids is `per_group`'s `BAD_INPUT`.
        let (part, over) = Self::per_group(self.ids, [vals], self.slots, conv)?;
        Ok((!over).then(|| part[1..].iter().map(|([s], _)| s.wide()).collect()))
    }
}

/// An integer a group's sum is added up in, with wrapping addition and its overflow flag.
trait Sum: Copy + Default {
    fn add(self, x: Self) -> (Self, bool);
    fn wide(self) -> i128;
    /// For a type whose additions are not checked ([`Bounded`]): the value plus `bias` as
    /// unsigned, ORed over the values added and checked once against their count.
    fn magnitude(self, _bias: u64) -> u64 {
        0
    }
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

/// An `i64` sum of 64-bit values whose additions are not checked, one check of the values'
/// magnitudes ([`Sum::magnitude`]) standing for them: a check of a value is off the chain of
/// additions into a group's sum, where a check of each addition would sit. Several columns'
/// sums then fit one pass over the rows ([`Few::of`]).
#[derive(Clone, Copy, Default)]
struct Bounded(i64);

impl Sum for Bounded {
    fn add(self, x: Self) -> (Self, bool) {
        (Bounded(self.0.wrapping_add(x.0)), false)
    }
    fn wide(self) -> i128 {
        self.0.into()
    }
    fn magnitude(self, bias: u64) -> u64 {
        (self.0 as u64).wrapping_add(bias)
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
