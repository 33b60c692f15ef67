//! Operator placement, decided once per query (documented policy): each operator runs on the
//! query's backend when that backend answers `Support::Exact` for it, and on the native backend
//! otherwise. Each backend gets one session per query (for Wasm: a fresh sandboxed instance).
//! The same value renders `QueryStats::placement`.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;
use nearstore_proto::{BackendKind, QueryStats};

use super::TOPK_KERNEL_MAX;
use super::prepare::{FilterSplit, Output, PreparedQuery};
use crate::compute::{ComputeBackend, ComputeSession, SessionReport, Support};
use crate::error::{Error, Result};
use crate::plan::PhysExpr;

/// A backend's session, shared by the operators placed on it.
pub(super) type Session = Arc<Mutex<Box<dyn ComputeSession>>>;

/// The first sort key of `ORDER BY … LIMIT k` whose rows the backend pre-selects: column,
/// descending, nulls first, k.
#[derive(Debug, Clone, Copy)]
pub(super) struct TopKKey {
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
    pub k: u64,
}

/// Where each operator of one query runs, and the sessions that run them.
pub(super) struct Placement {
    backend: Arc<dyn ComputeBackend>,
    kind: BackendKind,
    /// The query's backend's session.
    pub query: Session,
    native: Session,
    /// Whether the filter runs on the query's backend.
    filter_on_backend: bool,
    exprs_on_backend: bool,
    /// Whether the aggregates accumulate on the query's backend.
    pub aggregates_on_backend: bool,
    /// Top-k pre-selection on the query's backend, if it can.
    pub topk: Option<TopKKey>,
    rendered: String,
}

impl Placement {
    /// Decides where each operator of `q` runs and opens the sessions.
    pub fn new(q: &PreparedQuery, native: &Arc<dyn ComputeBackend>) -> Result<Self> {
        let backend = &q.backend;
        let open = |b: &Arc<dyn ComputeBackend>| -> Result<Session> {
            Ok(Arc::new(Mutex::new(b.open_with(q.limits.kernel)?)))
        };
        let query = open(backend)?;
        let native = if backend.kind() == BackendKind::Native {
            query.clone()
        } else {
            open(native)?
        };
        let filter_on_backend = q
            .predicate
            .as_ref()
            .is_some_and(|p| backend.supports_filter(p) == Support::Exact);
        // Where the computed expressions run (plain columns and literals need no operator).
        let exprs = q.output.exprs();
        let computed: Vec<&PhysExpr> = exprs
            .iter()
            .copied()
            .filter(|e| !matches!(e, PhysExpr::Column { .. } | PhysExpr::Literal(_)))
            .collect();
        let exprs_on_backend = !computed.is_empty()
            && computed
                .iter()
                .all(|e| backend.supports_expr(e) == Support::Exact);
        let aggregates_on_backend = match &q.output {
            Output::Aggregate(_, aggs) => backend.supports_aggregates(aggs) == Support::Exact,
            Output::Project(_) => false,
        };
        let mut p = Placement {
            backend: backend.clone(),
            kind: backend.kind(),
            query,
            native,
            filter_on_backend,
            exprs_on_backend,
            aggregates_on_backend,
            topk: topk_key(q),
            rendered: String::new(),
        };
        p.rendered = p.render(q);
        Ok(p)
    }

    /// The backend an operator runs on: the query's when it answered Exact, else native.
    fn at(&self, on_backend: bool) -> BackendKind {
        if on_backend {
            self.kind
        } else {
            BackendKind::Native
        }
    }

    /// `filter=wasm kernel:grep=wasm aggregate=native exprs=wasm topk=wasm` and the like.
    fn render(&self, q: &PreparedQuery) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &q.predicate {
            parts.push(format!(
                "filter={}",
                self.at(self.filter_on_backend).as_str()
            ));
            for k in p.kernel_calls() {
                parts.push(format!("kernel:{}=wasm", k.name()));
            }
        }
        match &q.output {
            Output::Aggregate(_, aggs) => {
                let on = self.at(self.aggregates_on_backend);
                parts.push(format!("aggregate={}", on.as_str()));
                for a in aggs {
                    if let Some(PhysExpr::Kernel { call, .. }) = &a.input {
                        parts.push(format!("kernel:{}=wasm", call.name()));
                    }
                }
                // Aggregate inputs that are expressions, not plain columns, are computed first.
                let exprs = q.output.exprs();
                if exprs.iter().any(|e| !matches!(e, PhysExpr::Column { .. })) {
                    let at = self.at(self.exprs_on_backend);
                    parts.push(format!("exprs={}", at.as_str()));
                }
            }
            Output::Project(_) => {
                parts.push(format!(
                    "project={}",
                    self.at(self.exprs_on_backend).as_str()
                ));
            }
        }
        if self.topk.is_some() {
            parts.push(format!("topk={}", self.kind.as_str()));
        }
        parts.join(" ")
    }

    /// The session the filter runs in.
    pub fn filter_session(&self) -> Session {
        if self.filter_on_backend {
            self.query.clone()
        } else {
            self.native.clone()
        }
    }

    /// Evaluates a value expression in the session it is placed on: the query's backend's
    /// when that backend runs it exactly, the native one otherwise.
    pub fn eval(&self, e: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        let session = if self.backend.supports_expr(e) == Support::Exact {
            &self.query
        } else {
            &self.native
        };
        session.lock().expect("compute session").evaluate(e, batch)
    }

    /// The rows of `batch` the backend's running top k keeps, counted in `stats`
    /// (`topk_rows_in`, `topk_rows_kept`).
    pub fn preselect_topk(
        &self,
        batch: &RecordBatch,
        key: TopKKey,
        stats: &mut QueryStats,
    ) -> Result<RecordBatch> {
        let keep = self.query.lock().expect("compute session").topk(
            batch.column(key.column),
            key.descending,
            key.nulls_first,
            key.k as usize,
        )?;
        let kept = arrow::compute::filter_record_batch(batch, &keep)?;
        stats.topk_rows_in += batch.num_rows() as u64;
        stats.topk_rows_kept += kept.num_rows() as u64;
        Ok(kept)
    }

    /// What the query's session reports (after the query ran).
    pub fn session_report(&self) -> SessionReport {
        self.query.lock().expect("compute session").report()
    }

    /// Adds `report` (the sessions' of every worker, added up) to `stats`.
    pub fn report(&self, stats: &mut QueryStats, report: SessionReport) {
        stats.fpga_modelled_us = report.modelled_us.round() as u64;
        stats.fallbacks = report.fallbacks;
        if report.fallbacks > 0 {
            stats
                .placement
                .push_str(" (device fault: fell back to wasm)");
        }
        if report.native_reruns > 0 {
            stats.placement.push_str(&format!(
                " ({} batches re-run natively after an arithmetic error)",
                report.native_reruns
            ));
        }
    }

    /// The placement, as `QueryStats::placement` starts.
    pub fn rendered(&self) -> &str {
        &self.rendered
    }
}

/// `ORDER BY key … LIMIT k`: the backend may pre-select the rows that can still be in the top k
/// by the first sort key, when k is small enough for its state and it can compare the key.
fn topk_key(q: &PreparedQuery) -> Option<TopKKey> {
    let (first, k) = match (q.plan.order_by.first(), q.plan.limit) {
        (Some(first), Some(k)) if k > 0 && k <= TOPK_KERNEL_MAX => (first, k),
        _ => return None,
    };
    let column = q.schema.index_of(&first.column).ok()?;
    if q.backend.supports_topk(q.schema.field(column).data_type()) != Support::Exact {
        return None;
    }
    Some(TopKKey {
        column,
        descending: first.descending,
        nulls_first: first.nulls_first.unwrap_or(first.descending),
        k,
    })
}

/// The filter a scan runs inside the decoder, in the session it is placed on. The columns of
/// `split.dictionary` ([`PreparedQuery::split_filter`]: a string column and the conjuncts that
/// read it alone) come as Arrow dictionaries: their conjuncts run on the dictionary's entries
/// and a null, once per dictionary (a column chunk's), and each row takes its entry's answer;
/// `split.rest` runs on the batch.
pub(super) fn decoder_predicate(split: FilterSplit, session: Session) -> crate::scan::Predicate {
    let rest = split.rest;
    let parts: Vec<DictionaryFilter> = split
        .dictionary
        .into_iter()
        .map(|(name, expr)| DictionaryFilter {
            name,
            expr,
            answers: Mutex::new(None),
        })
        .collect();
    Arc::new(move |batch| -> Result<BooleanArray> {
        let mut keep: Option<BooleanArray> = None;
        for part in &parts {
            let m = part.mask(batch, &session)?;
            keep = Some(match keep {
                None => m,
                Some(k) => arrow::compute::and(&k, &m)?,
            });
        }
        if let Some(rest) = &rest {
            let m = session
                .lock()
                .expect("compute session")
                .filter(rest, batch)?;
            keep = Some(match keep {
                None => m,
                Some(k) => arrow::compute::and(&k, &m)?,
            });
        }
        Ok(keep.unwrap_or_else(|| BooleanArray::from(vec![true; batch.num_rows()])))
    })
}

/// The conjuncts of a filter that read one string column the scan decodes as an Arrow
/// dictionary, and their answers for the last dictionary met (held, so that its address
/// stays its own while compared).
struct DictionaryFilter {
    name: String,
    expr: PhysExpr,
    answers: Mutex<Option<(ArrayRef, Arc<[bool]>)>>,
}

impl DictionaryFilter {
    /// Which rows of `batch` pass: each row's dictionary entry's answer (a null key the
    /// answer for null), the answers computed once per dictionary.
    fn mask(&self, batch: &RecordBatch, session: &Session) -> Result<BooleanArray> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Field, Int32Type, Schema};
        let internal = |what: &str| Error::Internal(format!("column '{}' {what}", self.name));
        let col = batch
            .column_by_name(&self.name)
            .ok_or_else(|| internal("missing from the filter's batch"))?;
        let d = col
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| internal("was not decoded as a dictionary"))?;
        let mut held = self.answers.lock().expect("dictionary answers");
        let answers = match held.as_ref() {
            Some((values, answers)) if Arc::ptr_eq(values, d.values()) => answers.clone(),
            _ => {
                let t = self
                    .expr
                    .column_type(&self.name)
                    .ok_or_else(|| internal("untyped"))?;
                let null = arrow::array::new_null_array(d.values().data_type(), 1);
                let entries = arrow::compute::concat(&[d.values().as_ref(), null.as_ref()])?;
                let entries = arrow::compute::cast(&entries, &t)?;
                let schema = Arc::new(Schema::new(vec![Field::new(&self.name, t, true)]));
                let entries = RecordBatch::try_new(schema, vec![entries])?;
                let r = session
                    .lock()
                    .expect("compute session")
                    .filter(&self.expr, &entries)?;
                let answers: Arc<[bool]> =
                    (0..r.len()).map(|i| r.is_valid(i) && r.value(i)).collect();
                *held = Some((d.values().clone(), answers.clone()));
                answers
            }
        };
        drop(held);
        let null_answer = answers[answers.len() - 1];
        let keys = d.keys();
        let values = keys.values();
        let mut beyond = false;
        let mut answer = |k: i32| match answers.get(k as usize) {
            Some(&a) if (k as usize) < answers.len() - 1 => a,
            _ => {
                beyond = true;
                false
            }
        };
        let bits = match keys.nulls().filter(|n| n.null_count() > 0) {
            None => BooleanBuffer::collect_bool(values.len(), |i| answer(values[i])),
            Some(nulls) => BooleanBuffer::collect_bool(values.len(), |i| match nulls.is_valid(i) {
                true => answer(values[i]),
                false => null_answer,
            }),
        };
        if beyond {
            return Err(internal("has a dictionary key beyond its dictionary"));
        }
        Ok(BooleanArray::new(bits, None))
    }
}
