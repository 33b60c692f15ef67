//! Hash aggregation: count(*), count, sum, min, max, avg with GROUP BY on any number of
//! columns (group ids: [`groups`](super::groups)). Min/max values are kept in Arrow's
//! order-preserving row format, so every column type works and comparisons are byte
//! comparisons.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, UInt64Array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{
    DataType, Decimal128Type, Field, Float64Type, Int64Type, SchemaRef, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::row::{OwnedRow, RowConverter, SortField};
use nearstore_proto::AggFunc;

use crate::compute::{AggInput, ComputeSession, SKIP_ROW};
use crate::error::{Error, Result};
use crate::plan::{AggSpec, KernelFn, PhysExpr, avg_exact};

pub use super::groups::GROUPS_MAX;
use super::groups::GroupKeys;

enum Acc {
    Count(Vec<i64>),
    SumI64(Vec<i64>, Vec<bool>),
    SumU64(Vec<u64>, Vec<bool>),
    SumF64(Vec<f64>, Vec<bool>),
    SumDec(Vec<i128>, Vec<bool>, DataType),
    /// Float input: sequential f64 sums.
    Avg(Vec<f64>, Vec<i64>),
    /// Integer or decimal input: exact sums of unscaled values, divided at the end.
    AvgExact(Vec<i128>, Vec<i64>, i8),
    MinMax {
        conv: RowConverter,
        best: Vec<Option<OwnedRow>>,
        min: bool,
    },
    /// An aggregate kernel: its states live in the kernel's sandboxed instance.
    Kernel(Arc<dyn KernelFn>, Vec<PhysExpr>),
}

impl Acc {
    fn new(spec: &AggSpec) -> Result<Self> {
        let out = spec.output_type()?;
        Ok(match spec.func {
            AggFunc::Kernel => match &spec.input {
                Some(PhysExpr::Kernel { call, args }) => Acc::Kernel(call.clone(), args.clone()),
                _ => return Err(Error::Internal("aggregate kernel without a call".into())),
            },
            AggFunc::CountStar | AggFunc::Count => Acc::Count(Vec::new()),
            AggFunc::Avg => match spec.input.as_ref().map(PhysExpr::data_type) {
                Some(DataType::Decimal128(_, s)) => Acc::AvgExact(Vec::new(), Vec::new(), s),
                Some(t) if t.is_integer() => Acc::AvgExact(Vec::new(), Vec::new(), 0),
                _ => Acc::Avg(Vec::new(), Vec::new()),
            },
            AggFunc::Sum => match out {
                DataType::Int64 => Acc::SumI64(Vec::new(), Vec::new()),
                DataType::UInt64 => Acc::SumU64(Vec::new(), Vec::new()),
                DataType::Float64 => Acc::SumF64(Vec::new(), Vec::new()),
                t @ DataType::Decimal128(..) => Acc::SumDec(Vec::new(), Vec::new(), t),
                t => return Err(Error::Internal(format!("no sum accumulator for {t}"))),
            },
            AggFunc::Min | AggFunc::Max => Acc::MinMax {
                conv: RowConverter::new(vec![SortField::new(out)])?,
                best: Vec::new(),
                min: spec.func == AggFunc::Min,
            },
        })
    }

    fn update(
        &mut self,
        values: Option<&ArrayRef>,
        groups: &[u32],
        n_groups: usize,
        name: &str,
    ) -> Result<()> {
        let overflow = || Error::TypeMismatch(format!("aggregate {name} overflowed"));
        match self {
            Acc::Count(c) => {
                c.resize(n_groups, 0);
                match values {
                    None => groups.iter().for_each(|&g| c[g as usize] += 1),
                    Some(v) => {
                        for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                            if v.is_valid(i) {
                                c[g] += 1;
                            }
                        }
                    }
                }
            }
            Acc::SumI64(s, seen) => {
                let v = cast(values.expect("sum has input"), &DataType::Int64)?;
                let v = v.as_primitive::<Int64Type>();
                s.resize(n_groups, 0);
                seen.resize(n_groups, false);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] = s[g].checked_add(v.value(i)).ok_or_else(overflow)?;
                        seen[g] = true;
                    }
                }
            }
            Acc::SumU64(s, seen) => {
                let v = cast(values.expect("sum has input"), &DataType::UInt64)?;
                let v = v.as_primitive::<UInt64Type>();
                s.resize(n_groups, 0);
                seen.resize(n_groups, false);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] = s[g].checked_add(v.value(i)).ok_or_else(overflow)?;
                        seen[g] = true;
                    }
                }
            }
            Acc::SumF64(s, seen) => {
                let v = cast(values.expect("sum has input"), &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                s.resize(n_groups, 0.0);
                seen.resize(n_groups, false);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] += v.value(i);
                        seen[g] = true;
                    }
                }
            }
            Acc::SumDec(s, seen, _) => {
                let v = values
                    .expect("sum has input")
                    .as_primitive::<Decimal128Type>();
                s.resize(n_groups, 0);
                seen.resize(n_groups, false);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] = s[g].checked_add(v.value(i)).ok_or_else(overflow)?;
                        seen[g] = true;
                    }
                }
            }
            Acc::Avg(s, c) => {
                let v = cast(values.expect("avg has input"), &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                s.resize(n_groups, 0.0);
                c.resize(n_groups, 0);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] += v.value(i);
                        c[g] += 1;
                    }
                }
            }
            Acc::AvgExact(s, c, _) => {
                let v = values.expect("avg has input");
                let v = match v.data_type() {
                    DataType::Decimal128(..) => v.clone(),
                    _ => cast(v, &DataType::Decimal128(38, 0))?,
                };
                let v = v.as_primitive::<Decimal128Type>();
                s.resize(n_groups, 0);
                c.resize(n_groups, 0);
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if v.is_valid(i) {
                        s[g] = s[g].checked_add(v.value(i)).ok_or_else(overflow)?;
                        c[g] += 1;
                    }
                }
            }
            Acc::Kernel(..) => {
                return Err(Error::Internal(
                    "aggregate kernels accumulate through their call".into(),
                ));
            }
            Acc::MinMax { conv, best, min } => {
                let v = values.expect("min/max has input");
                best.resize(n_groups, None);
                let rows = conv.convert_columns(std::slice::from_ref(v))?;
                for (i, g) in groups.iter().map(|&g| g as usize).enumerate() {
                    if !v.is_valid(i) {
                        continue;
                    }
                    let r = rows.row(i);
                    let better = match &best[g] {
                        None => true,
                        Some(b) if *min => r < b.row(),
                        Some(b) => r > b.row(),
                    };
                    if better {
                        best[g] = Some(r.owned());
                    }
                }
            }
        }
        Ok(())
    }

    /// Folds `other` (the same aggregate over other rows) into this accumulator; `ids` maps
    /// `other`'s groups to this one's, which has `n_groups` groups now.
    fn merge(&mut self, other: Acc, ids: &[usize], n_groups: usize, name: &str) -> Result<()> {
        let overflow = || Error::TypeMismatch(format!("aggregate {name} overflowed"));
        match (self, other) {
            (Acc::Count(c), Acc::Count(o)) => {
                c.resize(n_groups, 0);
                for (g, v) in o.into_iter().enumerate() {
                    c[ids[g]] += v;
                }
            }
            (Acc::SumI64(s, seen), Acc::SumI64(o, o_seen)) => {
                merge_sums(s, seen, &o, &o_seen, ids, n_groups, i64::checked_add)
                    .ok_or_else(overflow)?
            }
            (Acc::SumU64(s, seen), Acc::SumU64(o, o_seen)) => {
                merge_sums(s, seen, &o, &o_seen, ids, n_groups, u64::checked_add)
                    .ok_or_else(overflow)?
            }
            (Acc::SumDec(s, seen, _), Acc::SumDec(o, o_seen, _)) => {
                merge_sums(s, seen, &o, &o_seen, ids, n_groups, i128::checked_add)
                    .ok_or_else(overflow)?
            }
            (Acc::SumF64(s, seen), Acc::SumF64(o, o_seen)) => {
                merge_sums(s, seen, &o, &o_seen, ids, n_groups, |a, b| Some(a + b))
                    .ok_or_else(overflow)?
            }
            (Acc::Avg(s, c), Acc::Avg(o, o_c)) => {
                s.resize(n_groups, 0.0);
                c.resize(n_groups, 0);
                for (g, (v, n)) in o.into_iter().zip(o_c).enumerate() {
                    s[ids[g]] += v;
                    c[ids[g]] += n;
                }
            }
            (Acc::AvgExact(s, c, _), Acc::AvgExact(o, o_c, _)) => {
                s.resize(n_groups, 0);
                c.resize(n_groups, 0);
                for (g, (v, n)) in o.into_iter().zip(o_c).enumerate() {
                    let at = ids[g];
                    s[at] = s[at].checked_add(v).ok_or_else(overflow)?;
                    c[at] += n;
                }
            }
            (Acc::MinMax { conv, best, min }, Acc::MinMax { best: o, .. }) => {
                best.resize(n_groups, None);
                // Rows of another converter are read again as this one's.
                let parser = conv.parser();
                for (g, r) in o.into_iter().enumerate() {
                    let Some(r) = r else { continue };
                    let r = parser.parse(r.as_ref()).owned();
                    let better = match &best[ids[g]] {
                        None => true,
                        Some(b) if *min => r.row() < b.row(),
                        Some(b) => r.row() > b.row(),
                    };
                    if better {
                        best[ids[g]] = Some(r);
                    }
                }
            }
            _ => {
                return Err(Error::Internal(format!(
                    "aggregate {name}: its partial states cannot be merged"
                )));
            }
        }
        Ok(())
    }

    fn finish(self, n_groups: usize) -> Result<ArrayRef> {
        let opt = |seen: &[bool], g: usize| seen.get(g).copied().unwrap_or(false);
        Ok(match self {
            Acc::Count(mut c) => {
                c.resize(n_groups, 0);
                Arc::new(Int64Array::from(c))
            }
            Acc::SumI64(s, seen) => Arc::new(
                (0..n_groups)
                    .map(|g| opt(&seen, g).then(|| s[g]))
                    .collect::<Int64Array>(),
            ),
            Acc::SumU64(s, seen) => Arc::new(
                (0..n_groups)
                    .map(|g| opt(&seen, g).then(|| s[g]))
                    .collect::<UInt64Array>(),
            ),
            Acc::SumF64(s, seen) => Arc::new(
                (0..n_groups)
                    .map(|g| opt(&seen, g).then(|| s[g]))
                    .collect::<Float64Array>(),
            ),
            Acc::SumDec(s, seen, t) => {
                let DataType::Decimal128(p, sc) = t else {
                    return Err(Error::Internal("decimal sum without decimal type".into()));
                };
                let arr = (0..n_groups)
                    .map(|g| opt(&seen, g).then(|| s[g]))
                    .collect::<Decimal128Array>()
                    .with_precision_and_scale(p, sc)?;
                arr.validate_decimal_precision(p)
                    .map_err(|_| Error::TypeMismatch("decimal sum exceeds 38 digits".into()))?;
                Arc::new(arr)
            }
            Acc::Avg(s, c) => Arc::new(
                (0..n_groups)
                    .map(|g| (c.get(g).copied().unwrap_or(0) > 0).then(|| s[g] / c[g] as f64))
                    .collect::<Float64Array>(),
            ),
            Acc::AvgExact(s, c, scale) => Arc::new(
                (0..n_groups)
                    .map(|g| {
                        let n = c.get(g).copied().unwrap_or(0);
                        (n > 0).then(|| avg_exact(s[g], scale, n))
                    })
                    .collect::<Float64Array>(),
            ),
            Acc::Kernel(call, _) => call.finish_groups(n_groups)?,
            Acc::MinMax { conv, mut best, .. } => {
                best.resize(n_groups, None);
                if best.iter().all(Option::is_some) {
                    let mut cols =
                        conv.convert_rows(best.iter().map(|r| r.as_ref().expect("some").row()))?;
                    cols.pop().expect("one column")
                } else {
                    // Groups without a value yield null: convert the present ones, then spread.
                    let present: Vec<usize> =
                        (0..n_groups).filter(|&g| best[g].is_some()).collect();
                    let mut cols = conv.convert_rows(
                        present
                            .iter()
                            .map(|&g| best[g].as_ref().expect("some").row()),
                    )?;
                    let vals = cols.pop().expect("one column");
                    let mut pos = 0u32;
                    let idx: arrow::array::UInt32Array = (0..n_groups)
                        .map(|g| {
                            best[g].is_some().then(|| {
                                pos += 1;
                                pos - 1
                            })
                        })
                        .collect();
                    arrow::compute::take(&vals, &idx, None)?
                }
            }
        })
    }
}

/// The rows a selection keeps, a null as not kept.
fn kept_bits(keep: &BooleanArray) -> BooleanBuffer {
    match keep.nulls() {
        Some(n) if n.null_count() > 0 => keep.values() & n.inner(),
        _ => keep.values().clone(),
    }
}

/// Adds the sums `o` (present where `o_seen`) of another accumulator into `s` at the groups
/// `ids` gives; `None` when an addition overflows.
fn merge_sums<T: Copy + Default>(
    s: &mut Vec<T>,
    seen: &mut Vec<bool>,
    o: &[T],
    o_seen: &[bool],
    ids: &[usize],
    n_groups: usize,
    add: impl Fn(T, T) -> Option<T>,
) -> Option<()> {
    s.resize(n_groups, T::default());
    seen.resize(n_groups, false);
    for (g, (&v, _)) in o.iter().zip(o_seen).enumerate().filter(|(_, (_, p))| **p) {
        let at = ids[g];
        s[at] = add(s[at], v)?;
        seen[at] = true;
    }
    Some(())
}

/// Hash aggregation over batches.
pub struct HashAggregator {
    group_by: Vec<PhysExpr>,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    /// The groups (none without GROUP BY: one group).
    keys: Option<GroupKeys>,
    accs: Vec<Acc>,
    /// A compute session that accumulates instead of the native accumulators.
    offload: Option<SharedSession>,
    /// Per aggregate, whether the offload session computes its input inside its call
    /// ([`AggInput::Computed`]; `false` for a column or no input): asked once, when the
    /// session is given, not per batch (each answer compiles the input's expression).
    inside: Vec<bool>,
    /// Whether rows not kept are left out by their group rather than filtered out first
    /// ([`HashAggregator::skips_rows`]).
    skips_rows: bool,
    /// The offloaded accumulators once other aggregators were merged in: the backend's slots
    /// (`n_groups × aggs`) and the rows they accumulated.
    merged: Option<(Vec<u8>, u64)>,
}

/// A compute session shared by the operators of one query.
pub type SharedSession = Arc<std::sync::Mutex<Box<dyn ComputeSession>>>;

/// An aggregate's input for an offloaded aggregate: a column as decoded; a computed one for
/// the session to compute inside its call (`inside`: it said it can), else evaluated by
/// `eval`.
fn agg_input<'e>(
    e: &'e PhysExpr,
    inside: bool,
    batch: &RecordBatch,
    eval: &dyn Fn(&PhysExpr, &RecordBatch) -> Result<ArrayRef>,
) -> Result<AggInput<'e>> {
    if let PhysExpr::Column { name, .. } = e
        && let Some(c) = batch.column_by_name(name)
    {
        return Ok(AggInput::Array(c.clone()));
    }
    Ok(if inside {
        AggInput::Computed(e)
    } else {
        AggInput::Array(eval(e, batch)?)
    })
}

fn lock(s: &SharedSession) -> std::sync::MutexGuard<'_, Box<dyn ComputeSession>> {
    s.lock().expect("compute session")
}

impl std::fmt::Debug for HashAggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashAggregator")
            .field("groups", &self.n_groups())
            .field("schema", &self.schema)
            .finish()
    }
}

impl HashAggregator {
    /// An aggregator producing `schema` (group columns, then aggregates).
    pub fn new(group_by: Vec<PhysExpr>, aggs: Vec<AggSpec>) -> Result<Self> {
        let mut fields = Vec::new();
        for g in &group_by {
            let PhysExpr::Column { name, data_type } = g else {
                return Err(Error::Internal("group keys are columns".into()));
            };
            fields.push(Field::new(name, data_type.clone(), true));
        }
        for a in &aggs {
            fields.push(Field::new(&a.name, a.output_type()?, true));
        }
        let keys = if group_by.is_empty() {
            None
        } else {
            let types: Vec<DataType> = group_by.iter().map(PhysExpr::data_type).collect();
            Some(GroupKeys::new(&types)?)
        };
        let accs = aggs.iter().map(Acc::new).collect::<Result<_>>()?;
        Ok(HashAggregator {
            group_by,
            aggs,
            schema: Arc::new(arrow::datatypes::Schema::new(fields)),
            keys,
            accs,
            offload: None,
            inside: Vec::new(),
            skips_rows: false,
            merged: None,
        })
    }

    /// Accumulates in `session` (a backend that answered Exact for these aggregates) instead
    /// of natively.
    pub fn offload_to(&mut self, session: SharedSession) {
        let s = lock(&session);
        self.inside = self
            .aggs
            .iter()
            .map(|a| {
                a.input.as_ref().is_some_and(|e| {
                    !matches!(e, PhysExpr::Column { .. }) && s.computes_aggregate_input(e)
                })
            })
            .collect();
        // Rows are left out where the session skips rows and computes every input that is
        // not a column itself (one evaluated here first would be evaluated on the rows left
        // out too).
        self.skips_rows = s.skips_rows()
            && self.aggs.iter().zip(&self.inside).all(|(a, &inside)| {
                inside
                    || a.input
                        .as_ref()
                        .is_none_or(|e| matches!(e, PhysExpr::Column { .. }))
            });
        drop(s);
        self.offload = Some(session);
    }

    /// Whether [`HashAggregator::update`] leaves the rows its `keep` rejects out by their
    /// group ([`ComputeSession::skips_rows`]) rather than filtering them out first: whether
    /// a scan gains by handing it batches unfiltered.
    pub fn skips_rows(&self) -> bool {
        self.skips_rows
    }

    /// Output schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn n_groups(&self) -> usize {
        self.keys.as_ref().map_or(1, GroupKeys::len)
    }

    /// Adds the rows of a batch that `keep` keeps (all of them without it); `eval` computes
    /// an aggregate's input. Rows not kept are left out by their group where the aggregator
    /// skips rows ([`HashAggregator::skips_rows`]), else filtered out first.
    pub fn update(
        &mut self,
        batch: &RecordBatch,
        keep: Option<&BooleanArray>,
        eval: &dyn Fn(&PhysExpr, &RecordBatch) -> Result<ArrayRef>,
    ) -> Result<()> {
        let filtered;
        let (batch, keep) = match keep {
            Some(k) if !self.skips_rows => {
                filtered = filter_record_batch(batch, k)?;
                (&filtered, None)
            }
            k => (batch, k),
        };
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let groups: Vec<u32> = match &mut self.keys {
            None => match keep {
                None => vec![0; n],
                Some(k) => kept_bits(k)
                    .iter()
                    .map(|b| if b { 0 } else { SKIP_ROW })
                    .collect(),
            },
            Some(keys) => {
                let cols = self
                    .group_by
                    .iter()
                    .map(|g| eval(g, batch))
                    .collect::<Result<Vec<_>>>()?;
                keys.ids(&cols, keep.map(kept_bits).as_ref())?
            }
        };
        let n_groups = self.n_groups();
        if let Some(session) = &self.offload {
            // A column input goes to the backend as decoded (a narrow decimal as Decimal64,
            // which it stages as it stages Decimal128: INT64 values), the same array for every
            // aggregate that reads it (staged once); a computed one is computed inside the
            // backend's call where it can (TPC-H Q1's `l_extendedprice * (1 - l_discount)`
            // then never leaves the kernel), else evaluated first.
            let inputs = self
                .aggs
                .iter()
                .zip(&self.inside)
                .map(|(a, &inside)| {
                    a.input
                        .as_ref()
                        .map(|e| agg_input(e, inside, batch, eval))
                        .transpose()
                })
                .collect::<Result<Vec<_>>>()?;
            // Rows are left out by their group: ungrouped, every row is then in group 0 or out.
            let ids = (self.keys.is_some() || keep.is_some()).then_some(groups.as_slice());
            return lock(session).aggregate(&self.aggs, ids, n_groups, &inputs, batch);
        }
        for (acc, spec) in self.accs.iter_mut().zip(&self.aggs) {
            if let Acc::Kernel(call, args) = acc {
                let cols = args
                    .iter()
                    .map(|a| eval(a, batch))
                    .collect::<Result<Vec<_>>>()?;
                let ids: Option<Vec<i32>> = self
                    .keys
                    .as_ref()
                    .map(|_| groups.iter().map(|&g| g as i32).collect());
                call.update_groups(n, ids.as_deref(), n_groups, &cols)?;
                continue;
            }
            let values = spec.input.as_ref().map(|e| eval(e, batch)).transpose()?;
            acc.update(values.as_ref(), &groups, n_groups, &spec.name)?;
        }
        Ok(())
    }

    /// Whether aggregators of `aggs` over different rows can be merged: all but aggregate
    /// kernels, whose states only their kernel can combine.
    pub fn mergeable(aggs: &[AggSpec]) -> bool {
        aggs.iter().all(|a| a.func != AggFunc::Kernel)
    }

    /// Whether aggregators of `aggs` reach the same values whatever order their rows come in
    /// (so row groups may go to whichever worker is free): merged, and no floating-point
    /// input, whose sums round by the order of additions (and whose 0.0 and -0.0 a min or max
    /// may keep either of).
    pub fn order_free(aggs: &[AggSpec]) -> bool {
        Self::mergeable(aggs)
            && aggs.iter().all(|a| match a.func {
                AggFunc::CountStar | AggFunc::Count => true,
                _ => !a
                    .input
                    .as_ref()
                    .is_some_and(|e| e.data_type().is_floating()),
            })
    }

    /// Folds `other` (the same query's aggregator over other rows, placed alike) into this
    /// one: the groups first seen in `other` come after this one's, in `other`'s order, so
    /// aggregators over consecutive row ranges merged in order keep the order of first
    /// appearance that one aggregator over all the rows would have. Returns the ids
    /// `other`'s groups have here.
    pub fn merge(&mut self, other: HashAggregator) -> Result<Vec<usize>> {
        let before = self.n_groups();
        let ids: Vec<usize> = match (&mut self.keys, &other.keys) {
            (Some(mine), Some(theirs)) => mine.absorb(theirs)?,
            _ => vec![0],
        };
        let n_groups = self.n_groups();
        match (&self.offload, &other.offload) {
            (None, None) => {
                for ((acc, theirs), spec) in self.accs.iter_mut().zip(other.accs).zip(&self.aggs) {
                    acc.merge(theirs, &ids, n_groups, &spec.name)?;
                }
            }
            (Some(mine), Some(theirs)) => {
                let width = self.aggs.len() * nearstore_kernel_abi::agg::SLOT_BYTES;
                let (mut state, mut rows) = match self.merged.take() {
                    Some(m) => m,
                    None => lock(mine).aggregate_state(&self.aggs, before)?,
                };
                let (their_state, their_rows) =
                    lock(theirs).aggregate_state(&self.aggs, other.n_groups())?;
                // Their slots moved to our group ids; zeroed slots (count 0) merge as empty.
                let mut moved = vec![0u8; n_groups * width];
                for (g, slot) in their_state.chunks_exact(width).enumerate() {
                    moved[ids[g] * width..][..width].copy_from_slice(slot);
                }
                state.resize(n_groups * width, 0);
                crate::compute::program::merge_state(&self.aggs, &mut state, &moved)?;
                rows += their_rows;
                self.merged = Some((state, rows));
            }
            _ => {
                return Err(Error::Internal(
                    "partial aggregates placed on different backends".into(),
                ));
            }
        }
        Ok(ids)
    }

    /// The result: one row per group (one row when there are no group keys).
    pub fn finish(self) -> Result<RecordBatch> {
        let n_groups = self.n_groups();
        let mut cols: Vec<ArrayRef> = match &self.keys {
            None => Vec::new(),
            Some(keys) => keys.columns()?,
        };
        match (&self.offload, &self.merged) {
            (_, Some((state, rows))) => {
                let accs = crate::compute::program::finish_state(
                    &self.aggs,
                    state,
                    n_groups,
                    *rows,
                    "built-in (merged)",
                )?;
                cols.extend(accs);
            }
            (Some(session), None) => {
                let accs = lock(session).aggregate_finish(&self.aggs, n_groups)?;
                cols.extend(accs);
            }
            (None, None) => {
                for acc in self.accs {
                    cols.push(acc.finish(n_groups)?);
                }
            }
        }
        if cols.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}
