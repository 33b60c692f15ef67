//! Registered kernels as the bound plan sees them: their kind and output, and [`KernelFn`], the
//! call a `PhysExpr::Kernel` makes. The compute layer implements it (the Wasm sandbox runs the
//! module); the plan never names the sandbox.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field};
use nearstore_kernel_abi::{self as abi, types};

use crate::error::Result;

/// The kind of a kernel, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Exports `nearstore_filter`: selects rows.
    Filter,
    /// Exports `nearstore_map`: one value per row.
    Map,
    /// Exports `nearstore_agg_update` and `nearstore_agg_finish`: one value per group.
    Aggregate,
}

impl KernelKind {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelKind::Filter => "filter",
            KernelKind::Map => "map",
            KernelKind::Aggregate => "aggregate",
        }
    }
}

/// What a map or aggregate kernel returns (manifest `output=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelOutput {
    /// `int64`.
    Int64,
    /// `float64`.
    Float64,
    /// `list_int64` (aggregates only).
    ListInt64,
}

impl KernelOutput {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelOutput::Int64 => abi::output::INT64,
            KernelOutput::Float64 => abi::output::FLOAT64,
            KernelOutput::ListInt64 => abi::output::LIST_INT64,
        }
    }

    /// The Arrow type of the output.
    pub fn data_type(self) -> DataType {
        match self {
            KernelOutput::Int64 => DataType::Int64,
            KernelOutput::Float64 => DataType::Float64,
            KernelOutput::ListInt64 => {
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
            }
        }
    }
}

/// The ABI type code of an argument column's Arrow type, if kernels can take it.
pub fn arg_type(t: &DataType) -> Option<u32> {
    Some(match t {
        DataType::Int32 => types::INT32,
        DataType::Int64 => types::INT64,
        DataType::Float64 => types::FLOAT64,
        DataType::Decimal128(..) => types::DECIMAL128,
        DataType::Date32 => types::DATE32,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => types::UTF8,
        _ => return None,
    })
}

/// One call site of a registered kernel in a query, bound to the query's instance of it.
pub trait KernelFn: Send + Sync + std::fmt::Debug {
    /// The name the plan used (without the tenant's namespace).
    fn name(&self) -> &str;

    /// The module's SHA-256.
    fn module(&self) -> &str;

    /// The kernel's kind.
    fn kind(&self) -> KernelKind;

    /// What the call yields: a filter's Boolean mask, a map kernel's values, an aggregate
    /// kernel's per-group values.
    fn data_type(&self) -> DataType;

    /// Runs a filter or map kernel over `args` (columns of one batch of `rows` rows): the
    /// filter's selection as a mask, or the map's values.
    fn eval(&self, rows: usize, args: &[ArrayRef]) -> Result<ArrayRef>;

    /// Accumulates one batch of an aggregate kernel: `groups` holds each row's group (`None`:
    /// all rows in group 0), `n_groups` the groups so far.
    fn update_groups(
        &self,
        rows: usize,
        groups: Option<&[i32]>,
        n_groups: usize,
        args: &[ArrayRef],
    ) -> Result<()>;

    /// Finishes an aggregate kernel: one value per group.
    fn finish_groups(&self, n_groups: usize) -> Result<ArrayRef>;
}

/// Finds a registered kernel by name and binds a call of it with its parameters.
pub type KernelResolver<'a> = &'a (dyn Fn(&str, &str) -> Result<Arc<dyn KernelFn>> + Sync);
