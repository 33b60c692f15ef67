//! The end of the pipeline: result rows streamed to the client as they come, or held — for
//! ORDER BY (a running top k under LIMIT) and for an aggregate's groups — then sorted, cut to
//! the LIMIT and sent a batch at a time.

use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use nearstore_proto::{CmpOp, Plan};

use super::{BATCH_ROWS, SORT_ROWS_MAX};
use crate::error::{Error, Result};
use crate::plan::PhysExpr;

/// Where result rows go.
#[derive(Debug)]
pub(super) struct RowSink<'a> {
    plan: &'a Plan,
    schema: SchemaRef,
    /// Rows are held until the end (ORDER BY, aggregates), not streamed.
    hold: bool,
    held: Vec<RecordBatch>,
    held_rows: usize,
}

impl<'a> RowSink<'a> {
    /// A sink for `plan`'s rows of `schema`; `hold` keeps them to the end even without ORDER BY.
    pub fn new(plan: &'a Plan, schema: SchemaRef, hold: bool) -> Self {
        RowSink {
            plan,
            schema,
            hold: hold || !plan.order_by.is_empty(),
            held: Vec::new(),
            held_rows: 0,
        }
    }

    /// Takes a batch of result rows; returns it when it is to be sent now (streaming).
    pub fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        if !self.hold {
            return Ok(Some(batch));
        }
        let sorted = !self.plan.order_by.is_empty();
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        // ORDER BY … LIMIT k keeps a running top k: whenever the rows held grow well past k,
        // they are sorted and cut back to k.
        if let Some(k) = self.plan.limit
            && sorted
            && self.held_rows > (4 * k as usize).max(BATCH_ROWS)
        {
            let all = arrow::compute::concat_batches(&self.schema, &self.held)?;
            let top = sort_batch(&all, self.plan)?;
            self.held_rows = top.num_rows();
            self.held = vec![top];
        } else if sorted && self.plan.limit.is_none() && self.held_rows > SORT_ROWS_MAX {
            return Err(Error::Unsupported(format!(
                "ORDER BY over more than {SORT_ROWS_MAX} rows without LIMIT"
            )));
        }
        Ok(None)
    }

    /// The rows held, sorted by ORDER BY and cut to the LIMIT, as batches of at most
    /// [`BATCH_ROWS`] rows (nothing when the rows were streamed).
    pub fn finish(self) -> Result<Vec<RecordBatch>> {
        if !self.hold {
            return Ok(Vec::new());
        }
        let mut out = arrow::compute::concat_batches(&self.schema, &self.held)?;
        if !self.plan.order_by.is_empty() {
            out = sort_batch(&out, self.plan)?;
        }
        if let Some(l) = self.plan.limit {
            out = out.slice(0, out.num_rows().min(l as usize));
        }
        Ok((0..out.num_rows())
            .step_by(BATCH_ROWS)
            .map(|start| out.slice(start, BATCH_ROWS.min(out.num_rows() - start)))
            .collect())
    }
}

/// `batch` sorted by the plan's ORDER BY keys (the first LIMIT rows only, when it has one).
fn sort_batch(batch: &RecordBatch, plan: &Plan) -> Result<RecordBatch> {
    let keys = plan
        .order_by
        .iter()
        .map(|k| {
            let idx = batch.schema().index_of(&k.column)?;
            Ok(SortColumn {
                values: batch.column(idx).clone(),
                options: Some(SortOptions {
                    descending: k.descending,
                    nulls_first: k.nulls_first.unwrap_or(k.descending),
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let idx = lexsort_to_indices(&keys, plan.limit.map(|l| l as usize))?;
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), cols)?)
}

/// The running bound of a query's top k (`ORDER BY key … LIMIT k` whose first key is a
/// column the scan reads), shared by its workers: the k best key values among the rows they
/// kept so far. A row whose key is worse than the k-th of them cannot be in the top k (ties
/// can, by a later sort key), so the decoder drops it before the other columns are decoded
/// ([`TopKBound::keep`], a filter run before the query's), and a row group's pages whose
/// statistics show no key that good are not read at all ([`TopKBound::page_test`]).
pub(super) struct TopKBound {
    descending: bool,
    nulls_first: bool,
    k: usize,
    /// The k best distinct values (a group key's bound), not the k best values.
    distinct: bool,
    /// At most k values, best first.
    best: std::sync::Mutex<Option<arrow::array::ArrayRef>>,
}

impl TopKBound {
    /// A bound with nothing kept yet (it keeps every row until k were); `distinct` bounds
    /// by the k best distinct values (a null is one value).
    pub fn new(descending: bool, nulls_first: bool, k: usize, distinct: bool) -> Self {
        TopKBound {
            descending,
            nulls_first,
            k,
            distinct,
            best: std::sync::Mutex::new(None),
        }
    }

    fn options(&self) -> SortOptions {
        SortOptions {
            descending: self.descending,
            nulls_first: self.nulls_first,
        }
    }

    /// Takes the key values of rows the worker kept.
    pub fn update(&self, kept: &arrow::array::ArrayRef) -> Result<()> {
        if kept.is_empty() {
            return Ok(());
        }
        let mut best = self.best.lock().expect("top-k bound");
        let all = match best.take() {
            Some(b) => arrow::compute::concat(&[b.as_ref(), kept.as_ref()])?,
            None => kept.clone(),
        };
        if !self.distinct {
            let order = arrow::compute::sort_to_indices(&all, Some(self.options()), Some(self.k))?;
            *best = Some(take(all.as_ref(), &order, None)?);
            return Ok(());
        }
        let order = arrow::compute::sort_to_indices(&all, Some(self.options()), None)?;
        let sorted = take(all.as_ref(), &order, None)?;
        // The first row of each run of equal values, the first k runs.
        let firsts: arrow::array::UInt32Array =
            arrow::compute::partition(std::slice::from_ref(&sorted))?
                .ranges()
                .into_iter()
                .take(self.k)
                .map(|r| r.start as u32)
                .collect();
        *best = Some(take(sorted.as_ref(), &firsts, None)?);
        Ok(())
    }

    /// A test of `column`'s statistics (row groups or pages, [`crate::scan::prune`]) that is
    /// false only where no row can be better than or equal to the k-th best kept so far:
    /// `None` while nothing can be excluded (fewer than k kept, or nulls among the k best
    /// with nulls last). Ties are kept, as [`TopKBound::keep`] keeps them. The test compares
    /// values of `data_type`, the type the statistics are read as (a key decoded as stored, a
    /// Decimal64, is widened to it exactly); `None` too when the k-th best cannot be.
    pub fn page_test(&self, column: &str, data_type: &DataType) -> Option<PhysExpr> {
        use arrow::array::Array;
        let kth = {
            let best = self.best.lock().expect("top-k bound");
            match best.as_ref() {
                Some(b) if b.len() >= self.k => b.slice(self.k - 1, 1),
                _ => return None,
            }
        };
        let kth = match kth.data_type() == data_type {
            true => kth,
            false => {
                let widened = arrow::compute::cast(&kth, data_type).ok()?;
                // A cast that loses the value (or makes it null) is not a bound.
                let back = arrow::compute::cast(&widened, kth.data_type()).ok()?;
                (back.as_ref() == kth.as_ref() && widened.is_null(0) == kth.is_null(0))
                    .then_some(widened)?
            }
        };
        let data_type = data_type.clone();
        let col = || PhysExpr::Column {
            name: column.to_string(),
            data_type: data_type.clone(),
        };
        let is_null = || PhysExpr::IsNull(Box::new(col()));
        if kth.is_null(0) {
            // Nulls among the k best: with nulls first only nulls tie; with nulls last every
            // value is better.
            return self.nulls_first.then(is_null);
        }
        let op = match self.descending {
            true => CmpOp::GtEq,
            false => CmpOp::LtEq,
        };
        let cmp = PhysExpr::Cmp {
            op,
            left: Box::new(col()),
            right: Box::new(PhysExpr::Literal(kth)),
        };
        Some(match self.nulls_first {
            true => PhysExpr::Or(vec![cmp, is_null()]),
            false => cmp,
        })
    }

    /// Which of `values` (the key column of a decoded batch) are not worse than the k-th best
    /// kept so far: every one until k rows were kept.
    pub fn keep(&self, values: &arrow::array::ArrayRef) -> Result<arrow::array::BooleanArray> {
        use arrow::array::{Array, BooleanArray};
        use arrow::buffer::BooleanBuffer;
        use arrow::compute::kernels::cmp;
        let n = values.len();
        let kth = {
            let best = self.best.lock().expect("top-k bound");
            match best.as_ref() {
                Some(b) if b.len() >= self.k => b.slice(self.k - 1, 1),
                _ => return Ok(BooleanArray::new(BooleanBuffer::new_set(n), None)),
            }
        };
        let bits = if kth.is_null(0) {
            // Nulls among the k best: with nulls first only nulls tie; with nulls last every
            // value is better.
            match self.nulls_first {
                true => BooleanBuffer::collect_bool(n, |i| values.is_null(i)),
                false => BooleanBuffer::new_set(n),
            }
        } else {
            // The scan's key column may come as stored (a Decimal64), the kept rows' as the
            // table's type: the bound takes the column's (exact: it is one of its values).
            let kth = match kth.data_type() == values.data_type() {
                true => kth,
                false => arrow::compute::cast(&kth, values.data_type())?,
            };
            let t = arrow::array::Scalar::new(kth);
            let m = match self.descending {
                true => cmp::gt_eq(values, &t)?,
                false => cmp::lt_eq(values, &t)?,
            };
            // A null key is better than any value with nulls first, worse with nulls last.
            BooleanBuffer::collect_bool(n, |i| match m.is_valid(i) {
                true => m.value(i),
                false => self.nulls_first,
            })
        };
        Ok(BooleanArray::new(bits, None))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::TopKBound;

    fn col(v: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    /// The rows `b` keeps of `v`; asserts its page test agrees row by row (a page of one row:
    /// the test on its value, or on its null) and is absent only while every row is kept.
    fn kept(b: &TopKBound, v: &[Option<i64>]) -> Vec<bool> {
        let m = b.keep(&col(v)).unwrap();
        assert_eq!(m.null_count(), 0);
        let kept: Vec<bool> = (0..m.len()).map(|i| m.value(i)).collect();
        let schema = Schema::new(vec![Field::new("key", DataType::Int64, true)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![col(v)]).unwrap();
        match b.page_test("key", &DataType::Int64) {
            Some(test) => {
                let t = test.eval_predicate(&batch).unwrap();
                let by_test: Vec<bool> = (0..t.len()).map(|i| t.value(i)).collect();
                assert_eq!(by_test, kept, "{test:?}");
            }
            None => assert!(kept.iter().all(|k| *k), "no page test, yet rows dropped"),
        }
        kept
    }

    #[test]
    fn a_top_k_bound_drops_only_rows_worse_than_the_kth_best_kept() {
        let probe = [Some(1), Some(5), Some(9), None];
        // Descending, nulls first (SQL's default for DESC): 3 best of 9, 2, 5, 7 are 9, 7, 5.
        let b = TopKBound::new(true, true, 3, false);
        assert_eq!(kept(&b, &probe), [true; 4], "nothing kept yet");
        b.update(&col(&[Some(9), Some(2)])).unwrap();
        assert_eq!(kept(&b, &probe), [true; 4], "fewer than k kept");
        b.update(&col(&[Some(5), Some(7)])).unwrap();
        assert_eq!(kept(&b, &probe), [false, true, true, true]);
        // Three nulls kept: only nulls tie with the third best.
        b.update(&col(&[None, None, None])).unwrap();
        assert_eq!(kept(&b, &probe), [false, false, false, true]);
        // Ascending, nulls last: the 2 best of 4, 8, null, 6 are 4, 6.
        let b = TopKBound::new(false, false, 2, false);
        b.update(&col(&[Some(4), Some(8), None, Some(6)])).unwrap();
        assert_eq!(kept(&b, &probe), [true, true, false, false]);
        // Nulls last and a null among the k best: every row may still be in the top k.
        let b = TopKBound::new(false, false, 2, false);
        b.update(&col(&[Some(4), None])).unwrap();
        assert_eq!(kept(&b, &probe), [true; 4]);
        // Descending, nulls last: the 2 best of 9, 5, null are 9, 5; a null is worse.
        let b = TopKBound::new(true, false, 2, false);
        b.update(&col(&[Some(9), Some(5), None])).unwrap();
        assert_eq!(kept(&b, &probe), [false, true, true, false]);
        // Ascending, nulls first: the 2 best of null, 4, 8 are null, 4.
        let b = TopKBound::new(false, true, 2, false);
        b.update(&col(&[None, Some(4), Some(8)])).unwrap();
        assert_eq!(kept(&b, &probe), [true, false, false, true]);
    }

    #[test]
    fn a_page_test_widens_a_key_decoded_as_stored() {
        use arrow::array::{Decimal64Array, Decimal128Array};
        use nearstore_proto::CmpOp;

        use crate::plan::PhysExpr;
        let b = TopKBound::new(true, false, 2, true);
        let stored = Decimal64Array::from(vec![Some(12_345), Some(99), Some(12_345)])
            .with_precision_and_scale(15, 2)
            .unwrap();
        b.update(&(Arc::new(stored) as ArrayRef)).unwrap();
        let Some(PhysExpr::Cmp { op, left, right }) =
            b.page_test("key", &DataType::Decimal128(15, 2))
        else {
            panic!("a comparison")
        };
        assert_eq!(op, CmpOp::GtEq);
        assert!(
            matches!(*left, PhysExpr::Column { ref data_type, .. } if *data_type == DataType::Decimal128(15, 2))
        );
        let PhysExpr::Literal(kth) = *right else {
            panic!("a literal")
        };
        // The 2 best distinct of 123.45, 0.99, 123.45: the second is 0.99.
        let want = Decimal128Array::from(vec![99])
            .with_precision_and_scale(15, 2)
            .unwrap();
        assert_eq!(kth.as_ref(), &want as &dyn Array);
        // A type the k-th best does not convert to exactly: no test.
        assert!(b.page_test("key", &DataType::Int8).is_none());
    }

    #[test]
    fn a_distinct_bound_counts_each_value_once() {
        let probe = [Some(1), Some(3), Some(5), None];
        // Ascending: the 2 best distinct of 3, 3, 3, 1, 1 are 1 and 3 (the 2 best are 1, 1).
        let b = TopKBound::new(false, false, 2, true);
        b.update(&col(&[Some(3), Some(3), Some(3), Some(1), Some(1)]))
            .unwrap();
        assert_eq!(kept(&b, &probe), [true, true, false, false]);
        let b = TopKBound::new(false, false, 2, false);
        b.update(&col(&[Some(3), Some(3), Some(3), Some(1), Some(1)]))
            .unwrap();
        assert_eq!(kept(&b, &probe), [true, false, false, false]);
        // Nulls first: nulls are one value; the 2 best distinct of null, null, 4, 8 are null, 4.
        let b = TopKBound::new(false, true, 2, true);
        b.update(&col(&[None, None, Some(8)])).unwrap();
        assert_eq!(kept(&b, &probe), [true, true, true, true], "null and 8");
        b.update(&col(&[Some(4)])).unwrap();
        assert_eq!(kept(&b, &probe), [true, true, false, true]);
    }
}
