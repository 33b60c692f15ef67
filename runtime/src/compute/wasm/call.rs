//! A registered kernel called from a plan (`{"kernel": {"name", "args", "params"}}`): the
//! argument columns of each batch go into the kernel's sandboxed instance as Arrow buffers. A
//! filter kernel's selection (checked by the sandbox) becomes a boolean mask, a map kernel's
//! values an Int64 or Float64 column; an aggregate kernel (`{"func": "kernel", …}`) gets each
//! batch's group ids with its arguments and finishes one value per group. One instance serves
//! the whole query, under the query's deadline and memory limit.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, Int64Builder, ListBuilder};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::DataType;

use super::{ColumnBuffers, KernelError, KernelSession, Program, Sandbox};
use crate::compute::KernelLimits;
use crate::compute::program::OwnedColumn;
use crate::error::{Error, Result};
use crate::plan::{KernelFn, KernelKind, KernelOutput};

/// One kernel call site of a query.
pub struct KernelCall {
    /// The name the plan used.
    name: String,
    program: Arc<Program>,
    sandbox: Arc<Sandbox>,
    params: Vec<u8>,
    session: Mutex<Option<KernelSession>>,
    limits: Option<KernelLimits>,
}

impl std::fmt::Debug for KernelCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCall")
            .field("name", &self.name)
            .field("module", &self.program.id)
            .finish()
    }
}

impl KernelCall {
    /// A call of `program` (loaded by `sandbox`) with `params`, run under `limits` (the
    /// caller's tenant's) from its first batch on.
    pub fn new(
        name: &str,
        program: Arc<Program>,
        sandbox: Arc<Sandbox>,
        params: &str,
        limits: Option<KernelLimits>,
    ) -> Self {
        KernelCall {
            // Errors name the kernel as the caller does (without the tenant's namespace).
            name: name.rsplit('/').next().unwrap_or(name).to_string(),
            program,
            sandbox,
            params: params.as_bytes().to_vec(),
            session: Mutex::new(None),
            limits,
        }
    }

    /// Runs `f` on the query's instance, created under the call's limits on first use.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&mut KernelSession) -> std::result::Result<T, KernelError>,
    ) -> Result<T> {
        let mut slot = self.session.lock().expect("kernel session");
        if slot.is_none() {
            *slot = Some(self.sandbox.session_with(&self.program, self.limits)?);
        }
        f(slot.as_mut().expect("just set"))
            .map_err(|e| Error::Kernel(format!("kernel '{}': {e}", self.name)))
    }
}

impl KernelFn for KernelCall {
    fn name(&self) -> &str {
        &self.name
    }

    fn module(&self) -> &str {
        &self.program.id
    }

    fn kind(&self) -> KernelKind {
        self.program.kind
    }

    fn data_type(&self) -> DataType {
        match (self.program.kind, self.program.output) {
            (KernelKind::Filter, _) | (_, None) => DataType::Boolean,
            (_, Some(o)) => o.data_type(),
        }
    }

    /// Runs a filter or map kernel over `args` (columns of one batch of `rows` rows): the
    /// filter's selection as a mask, or the map's values.
    fn eval(&self, rows: usize, args: &[ArrayRef]) -> Result<ArrayRef> {
        let owned = args
            .iter()
            .map(OwnedColumn::argument)
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(OwnedColumn::view).collect();
        match self.program.kind {
            KernelKind::Filter => {
                let selected = self.with_session(|s| s.filter(rows, &views, &self.params))?;
                let mut mask = vec![false; rows];
                for i in selected {
                    mask[i as usize] = true;
                }
                Ok(Arc::new(BooleanArray::from(mask)))
            }
            KernelKind::Map => {
                let (values, validity) =
                    self.with_session(|s| s.map(rows, &views, &self.params))?;
                let bytes: Vec<u8> = validity.iter().flat_map(|w| w.to_le_bytes()).collect();
                let nulls = NullBuffer::new(BooleanBuffer::new(bytes.into(), 0, rows));
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                Ok(match self.program.output {
                    Some(KernelOutput::Float64) => Arc::new(Float64Array::new(
                        values.into_iter().map(f64::from_bits).collect(),
                        nulls,
                    )),
                    _ => Arc::new(Int64Array::new(
                        values.into_iter().map(|v| v as i64).collect(),
                        nulls,
                    )),
                })
            }
            KernelKind::Aggregate => Err(Error::TypeMismatch(format!(
                "kernel '{}' is an aggregate kernel: call it as an aggregate ({{\"func\": \"kernel\"}}), \
                 not in an expression",
                self.name
            ))),
        }
    }

    /// Accumulates one batch of an aggregate kernel: `groups` holds each row's group (`None`:
    /// all rows in group 0), `n_groups` the groups so far.
    fn update_groups(
        &self,
        rows: usize,
        groups: Option<&[i32]>,
        n_groups: usize,
        args: &[ArrayRef],
    ) -> Result<()> {
        let owned = args
            .iter()
            .map(OwnedColumn::argument)
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<u8> = groups
            .map(|g| g.iter().flat_map(|v| v.to_le_bytes()).collect())
            .unwrap_or_default();
        let mut views = vec![ColumnBuffers::groups(groups.map(|_| ids.as_slice()))];
        views.extend(owned.iter().map(OwnedColumn::view));
        self.with_session(|s| s.group_update(rows, &views, &self.params, n_groups))
    }

    /// Finishes an aggregate kernel: one value per group.
    fn finish_groups(&self, n_groups: usize) -> Result<ArrayRef> {
        let per_group = self.with_session(|s| s.group_finish(n_groups))?;
        Ok(match self.program.output {
            Some(KernelOutput::ListInt64) => {
                let mut b = ListBuilder::new(Int64Builder::new());
                for g in per_group {
                    b.values().extend(g.into_iter().map(|v| Some(v as i64)));
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            Some(KernelOutput::Float64) => Arc::new(
                per_group
                    .iter()
                    .map(|g| g.first().map(|v| f64::from_bits(*v)))
                    .collect::<Float64Array>(),
            ),
            _ => Arc::new(
                per_group
                    .iter()
                    .map(|g| g.first().map(|v| *v as i64))
                    .collect::<Int64Array>(),
            ),
        })
    }
}
