//! Registered kernels as SQL functions: [`KernelUdf`] for filter and map kernels,
//! [`KernelUdaf`] for aggregate kernels. Both only run on a device; the host refuses them.

use std::sync::Arc;

use datafusion::common::DataFusionError;

/// The SQL type of a map or aggregate kernel's output (`KernelInfo::output`).
fn kernel_output_type(k: &nearstore_proto::KernelInfo) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType, Field};
    match k.output.as_deref() {
        Some("int64") => DataType::Int64,
        Some("float64") => DataType::Float64,
        Some("list_int64") => DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        _ => DataType::Boolean,
    }
}

/// The registered kernel a scalar function call calls, if it calls one.
pub(super) fn kernel_udf(f: &datafusion::logical_expr::expr::ScalarFunction) -> Option<&KernelUdf> {
    let inner: &dyn std::any::Any = f.func.inner().as_ref();
    inner.downcast_ref::<KernelUdf>()
}

/// A filter or map kernel registered on the devices, as a SQL scalar function (a filter is
/// Boolean, a map kernel has its manifest's output type). It runs only on a device: over a
/// device table in offload mode the provider pushes a filter kernel in WHERE and a map kernel
/// in WHERE or SELECT (or in an aggregate's argument) down; anywhere else calling it is an
/// error that says so.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KernelUdf {
    pub(super) name: String,
    output: arrow::datatypes::DataType,
    signature: datafusion::logical_expr::Signature,
}

impl KernelUdf {
    /// The function for the kernel `k`.
    pub fn new(k: &nearstore_proto::KernelInfo) -> Self {
        KernelUdf {
            name: k.name.clone(),
            output: kernel_output_type(k),
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

/// An aggregate kernel registered on the devices, as a SQL aggregate function with its
/// manifest's output type. It runs only on a device: an aggregation over one device's table
/// in offload mode pushes it down (with GROUP BY); anywhere else it is an error that says so.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KernelUdaf {
    pub(super) name: String,
    output: arrow::datatypes::DataType,
    signature: datafusion::logical_expr::Signature,
}

impl KernelUdaf {
    /// The function for the aggregate kernel `k`.
    pub fn new(k: &nearstore_proto::KernelInfo) -> Self {
        KernelUdaf {
            name: k.name.clone(),
            output: kernel_output_type(k),
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::AggregateUDFImpl for KernelUdaf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(self.output.clone())
    }

    fn accumulator(
        &self,
        _args: datafusion::logical_expr::function::AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn datafusion::logical_expr::Accumulator>> {
        Err(DataFusionError::Execution(format!(
            "aggregate kernel '{}' runs on the device: call it over one device's table in \
             offload mode, with columns then an optional parameter string, grouped by columns",
            self.name
        )))
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for KernelUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(self.output.clone())
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        Err(DataFusionError::Execution(format!(
            "kernel '{}' runs on the device: call it in the WHERE clause (or, a map kernel, in \
             SELECT) of a query over device tables in offload mode, with columns then an \
             optional parameter string",
            self.name
        )))
    }
}
