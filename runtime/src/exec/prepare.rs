//! Preparing a query: the plan validated and bound to its table's schema (predicate, output
//! items or aggregates, ORDER BY keys checked against the output), its registered kernels
//! compiled on the blocking pool and bound as calls under the tenant's limits.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use nearstore_proto::{AggFunc, Plan};

use super::Executor;
use super::aggregate::HashAggregator;
use crate::compute::{ComputeBackend, Kernel, KernelLimits};
use crate::error::{Error, Result};
use crate::plan::{AggSpec, Binder, KernelFn, KernelKind, PhysExpr};
use crate::scan::ScanCounters;
use crate::storage::TableHandle;
use crate::storage::media::MediaBucket;

/// What a query may use of the device: its tenant's limits.
#[derive(Debug, Clone, Default)]
pub struct QueryLimits {
    /// Media bandwidth its reads wait for.
    pub media: Option<Arc<MediaBucket>>,
    /// Limits of its kernels (built-in and registered).
    pub kernel: Option<KernelLimits>,
}

/// A plan bound to a table: everything checked, ready to run.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    /// The plan.
    pub plan: Plan,
    pub(super) table: TableHandle,
    pub(super) predicate: Option<PhysExpr>,
    pub(super) output: Output,
    pub(super) schema: SchemaRef,
    pub(super) backend: Arc<dyn ComputeBackend>,
    pub(super) limits: QueryLimits,
}

/// What a query yields per row: projected items, or groups and aggregates.
#[derive(Debug, Clone)]
pub(super) enum Output {
    Project(Vec<(String, PhysExpr)>),
    Aggregate(Vec<PhysExpr>, Vec<AggSpec>),
}

impl Output {
    /// Every expression the output evaluates per batch (group keys, aggregate inputs, items).
    pub(super) fn exprs(&self) -> Vec<&PhysExpr> {
        match self {
            Output::Project(items) => items.iter().map(|(_, e)| e).collect(),
            Output::Aggregate(g, a) => g
                .iter()
                .chain(a.iter().filter_map(|a| a.input.as_ref()))
                .collect(),
        }
    }

    /// The columns decoded after the filter, each once, in the order first needed.
    pub(super) fn columns(&self) -> Vec<String> {
        let mut needed: Vec<String> = Vec::new();
        for c in self.exprs().into_iter().flat_map(PhysExpr::columns) {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
        needed
    }
}

/// A predicate's conjuncts (itself when it is not an AND).
fn conjuncts(pred: &PhysExpr) -> Vec<&PhysExpr> {
    match pred {
        PhysExpr::And(v) => v.iter().collect(),
        p => vec![p],
    }
}

/// Conjunct `c` added to its column's group in `groups` (a new group for a new column).
fn add_to_group(groups: &mut Vec<(String, Vec<PhysExpr>)>, name: &str, c: &PhysExpr) {
    match groups.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(c.clone()),
        None => groups.push((name.to_string(), vec![c.clone()])),
    }
}

/// The AND of `v` (its one expression alone).
fn all_of(mut v: Vec<PhysExpr>) -> PhysExpr {
    match v.len() {
        1 => v.remove(0),
        _ => PhysExpr::And(v),
    }
}

/// A query's predicate as the decoder runs it ([`PreparedQuery::split_filter`]).
pub(super) struct FilterSplit {
    /// String columns decoded as dictionaries, each with the conjuncts that read it alone.
    pub dictionary: Vec<(String, PhysExpr)>,
    /// The other conjuncts (the whole predicate when there are no such columns).
    pub rest: Option<PhysExpr>,
}

impl PreparedQuery {
    /// Schema of the result.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The group keys the scan decodes as Arrow dictionaries (dictionary keys, never strings,
    /// as the Parquet file stores them): every key of a grouped aggregate when each is a
    /// string column that nothing else reads (no filter, no aggregate input); else none.
    pub(super) fn dictionary_keys(&self) -> Vec<String> {
        let Output::Aggregate(groups, aggs) = &self.output else {
            return Vec::new();
        };
        let mut elsewhere: Vec<String> =
            self.predicate.iter().flat_map(PhysExpr::columns).collect();
        elsewhere.extend(
            aggs.iter()
                .filter_map(|a| a.input.as_ref())
                .flat_map(PhysExpr::columns),
        );
        let keys: Vec<String> = groups
            .iter()
            .filter_map(|g| match g {
                PhysExpr::Column {
                    name,
                    data_type: DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View,
                } if !elsewhere.contains(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        if keys.len() == groups.len() {
            keys
        } else {
            Vec::new()
        }
    }

    /// The filter's string columns the scan decodes as Arrow dictionaries, each with the
    /// conjuncts of the predicate that read it alone: a string column nothing but such
    /// conjuncts reads (no output, no other conjunct) and no kernel call (a predicate on its
    /// dictionary's entries is then exact: the filter keeps the rows whose entry passes).
    pub(super) fn dictionary_filters(&self) -> Vec<(String, PhysExpr)> {
        self.split_filter().map_or_else(Vec::new, |s| s.dictionary)
    }

    /// The predicate split for the decoder: the conjuncts of [`dictionary_filters`]
    /// (Self::dictionary_filters) by column, and the rest, run on the batch; `None` without
    /// a predicate.
    pub(super) fn split_filter(&self) -> Option<FilterSplit> {
        let pred = self.predicate.as_ref()?;
        let conjuncts = conjuncts(pred);
        let output: Vec<String> = self.output.columns();
        let mut out: Vec<(String, Vec<PhysExpr>)> = Vec::new();
        // Columns a kernel call reads alone: as plain strings (the call takes them so).
        let mut called: Vec<String> = Vec::new();
        for c in &conjuncts {
            let cols = c.columns();
            let [name] = cols.as_slice() else { continue };
            let mut kernel = false;
            let mut string = false;
            c.visit(&mut |e| match e {
                PhysExpr::Kernel { .. } => kernel = true,
                PhysExpr::Column { data_type, .. } => {
                    string = matches!(
                        data_type,
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                }
                _ => {}
            });
            if kernel {
                called.push(name.clone());
            }
            if kernel || !string || output.contains(name) {
                continue;
            }
            // Read by another conjunct too: as a plain column.
            let elsewhere = conjuncts.iter().any(|o| {
                !std::ptr::eq(*o, *c) && o.columns().contains(name) && o.columns().len() > 1
            });
            if elsewhere {
                continue;
            }
            add_to_group(&mut out, name, c);
        }
        out.retain(|(n, _)| !called.contains(n));
        if out.is_empty() {
            return Some(FilterSplit {
                dictionary: Vec::new(),
                rest: Some(pred.clone()),
            });
        }
        let alone = |c: &PhysExpr| {
            let cols = c.columns();
            cols.len() == 1 && out.iter().any(|(n, _)| *n == cols[0])
        };
        let mut rest: Vec<PhysExpr> = conjuncts
            .iter()
            .filter(|c| !alone(c))
            .map(|c| (*c).clone())
            .collect();
        let rest = match rest.len() {
            0 => None,
            1 => rest.pop(),
            _ => Some(PhysExpr::And(rest)),
        };
        Some(FilterSplit {
            dictionary: out.into_iter().map(|(n, v)| (n, all_of(v))).collect(),
            rest,
        })
    }

    /// The predicate as groups of conjuncts that each read one column, in the order their
    /// columns first appear; `None` without a predicate, or when a conjunct reads no column,
    /// several, or calls a kernel. A scan may then answer each group once per dictionary
    /// entry of its column ([`crate::scan`]'s dictionary decoder): a conjunct of one column
    /// gives a row its value's answer.
    pub(super) fn filter_by_column(&self) -> Option<Vec<(String, PhysExpr)>> {
        let mut groups: Vec<(String, Vec<PhysExpr>)> = Vec::new();
        for c in conjuncts(self.predicate.as_ref()?) {
            let mut kernel = false;
            c.visit(&mut |e| kernel |= matches!(e, PhysExpr::Kernel { .. }));
            let cols = c.columns();
            let ([name], false) = (cols.as_slice(), kernel) else {
                return None;
            };
            add_to_group(&mut groups, name, c);
        }
        Some(groups.into_iter().map(|(n, v)| (n, all_of(v))).collect())
    }

    /// Every column the scan decodes as an Arrow dictionary: the group keys of
    /// [`dictionary_keys`](Self::dictionary_keys) and the filter columns of
    /// [`dictionary_filters`](Self::dictionary_filters).
    pub(super) fn dictionary_columns(&self) -> Vec<String> {
        let mut cols = self.dictionary_keys();
        cols.extend(self.dictionary_filters().into_iter().map(|(n, _)| n));
        cols
    }
}

impl Executor {
    /// Binds and checks a plan (for its schema or an estimate: no tenant limits).
    pub async fn prepare(&self, plan: &Plan) -> Result<PreparedQuery> {
        self.prepare_with(plan, QueryLimits::default()).await
    }

    /// Binds and checks a plan whose query runs under `limits` (its tenant's).
    pub async fn prepare_with(&self, plan: &Plan, limits: QueryLimits) -> Result<PreparedQuery> {
        plan.validate()?;
        let table = self.storage.table(&plan.table)?;
        let counters = Arc::new(ScanCounters::default());
        let table_schema = self.table_schema(&table, &counters).await?;
        // The plan's kernels are read and compiled on the blocking pool (a module the compile
        // cache dropped is compiled again), and binding takes them from here; a kernel that
        // failed to load is looked up again by the binder, which reports its error.
        let loaded = self.load_kernels(plan.kernels()).await?;
        let kernel_limits = limits.kernel;
        let resolve = |name: &str, params: &str| -> Result<Arc<dyn KernelFn>> {
            let kernel = match loaded.get(name) {
                Some(k) => k.clone(),
                None => self.kernel(name)?,
            };
            Ok(kernel.call(name, params, kernel_limits))
        };
        let binder = Binder::new(&plan.table, &table_schema).with_kernels(&resolve);
        let predicate = plan
            .filter
            .as_ref()
            .map(|f| binder.bind_bool(f))
            .transpose()?;
        let backend = self
            .backends
            .get(plan.backend.unwrap_or(self.default_backend));
        let (output, schema) = if plan.is_aggregate() {
            bind_aggregate(plan, &binder)?
        } else {
            bind_projection(plan, &binder, &table_schema)?
        };
        for k in &plan.order_by {
            if schema.index_of(&k.column).is_err() {
                return Err(Error::UnknownColumn {
                    table: format!("{} (output)", plan.table),
                    column: k.column.clone(),
                    available: schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(PreparedQuery {
            plan: plan.clone(),
            table,
            predicate,
            output,
            schema,
            backend,
            limits,
        })
    }

    /// Reads and compiles the kernels `names` on the blocking pool; those that fail are left
    /// out (the binder looks them up again and reports the error).
    async fn load_kernels(&self, names: Vec<String>) -> Result<HashMap<String, Kernel>> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let (storage, backends) = (self.storage.clone(), self.backends.clone());
        tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .filter_map(|name| {
                    let kernel = load_kernel(&storage, &backends, &name).ok()?;
                    Some((name, kernel))
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("loading the plan's kernels panicked: {e}")))
    }

    /// The registered kernel `name` (a storage name), compiled.
    pub fn kernel(&self, name: &str) -> Result<Kernel> {
        load_kernel(&self.storage, &self.backends, name)
    }

    /// Validates and compiles a kernel module for `tenant` ("" on a device without tenants)
    /// without registering it.
    pub fn check_kernel(&self, module: &[u8], tenant: &str) -> Result<Kernel> {
        self.backends
            .compile_kernel(module, tenant)
            .map_err(|e| Error::InvalidKernel(e.to_string()))
    }
}

/// The registered kernel `name` (a storage name), read and compiled (or found in the compile
/// cache) for the tenant it belongs to.
fn load_kernel(
    storage: &crate::storage::Storage,
    backends: &crate::compute::Backends,
    name: &str,
) -> Result<Kernel> {
    let bytes = storage.kernels().module(name)?;
    Ok(backends.compile_kernel(&bytes, kernel_owner(name))?)
}

/// The tenant a stored kernel name (`tenant/name`, or `name` on a device without tenants)
/// belongs to: its owner in the compile cache.
fn kernel_owner(stored: &str) -> &str {
    stored.split_once('/').map_or("", |(tenant, _)| tenant)
}

/// Group keys and aggregates, and the schema of their result.
fn bind_aggregate(plan: &Plan, binder: &Binder<'_>) -> Result<(Output, SchemaRef)> {
    let group_by = plan
        .group_by
        .iter()
        .map(|g| binder.column(g))
        .collect::<Result<Vec<_>>>()?;
    let aggs = plan
        .aggregates
        .iter()
        .map(|a| {
            let input = match (a.func, &a.expr) {
                (AggFunc::Kernel, Some(e)) => {
                    let k = binder.bind_kernel(e)?;
                    if let PhysExpr::Kernel { call, .. } = &k
                        && call.kind() != KernelKind::Aggregate
                    {
                        return Err(Error::TypeMismatch(format!(
                            "kernel '{}' is a {} kernel, not an aggregate kernel",
                            call.name(),
                            call.kind().as_str()
                        )));
                    }
                    Some(k)
                }
                (_, e) => e.as_ref().map(|e| binder.bind(e)).transpose()?,
            };
            Ok(AggSpec {
                func: a.func,
                input,
                name: a.output_name(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = HashAggregator::new(group_by.clone(), aggs.clone())?.schema();
    Ok((Output::Aggregate(group_by, aggs), schema))
}

/// Projected items (every column when the plan names none), and the schema of the result:
/// a plain column keeps its nullability, a computed one is nullable.
fn bind_projection(
    plan: &Plan,
    binder: &Binder<'_>,
    table_schema: &Schema,
) -> Result<(Output, SchemaRef)> {
    let items: Vec<(String, PhysExpr)> = if plan.projection.is_empty() {
        table_schema
            .fields()
            .iter()
            .map(|f| Ok((f.name().clone(), binder.column(f.name())?)))
            .collect::<Result<_>>()?
    } else {
        plan.projection
            .iter()
            .map(|p| Ok((p.name().to_string(), binder.bind(&p.expr())?)))
            .collect::<Result<_>>()?
    };
    let fields: Vec<Field> = items
        .iter()
        .map(|(n, e)| {
            let nullable = match e {
                PhysExpr::Column { name, .. } => table_schema
                    .field_with_name(name)
                    .map(|f| f.is_nullable())
                    .unwrap_or(true),
                _ => true,
            };
            Field::new(n, e.data_type(), nullable)
        })
        .collect();
    Ok((Output::Project(items), Arc::new(Schema::new(fields))))
}
