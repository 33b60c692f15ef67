//! A registered filter kernel called from a plan (`{"kernel": {"name", "args", "params"}}`):
//! the argument columns of each batch go into the kernel's sandboxed instance as Arrow buffers,
//! and the selection it returns (checked by the sandbox) becomes a boolean mask. One instance
//! serves the whole query, under the query's deadline and memory limit.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::DataType;
use nearstore_kernel_abi::types;

use crate::compute::wasm::{ColumnBuffers, KernelLimits, KernelSession, Program, Sandbox};
use crate::error::{Error, Result};

/// One kernel call site of a query.
pub struct KernelCall {
    /// The name the plan used.
    pub name: String,
    program: Arc<Program>,
    sandbox: Arc<Sandbox>,
    params: Vec<u8>,
    session: Mutex<Option<KernelSession>>,
    limits: Mutex<Option<KernelLimits>>,
}

impl std::fmt::Debug for KernelCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCall")
            .field("name", &self.name)
            .field("module", &self.program.id)
            .finish()
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

/// An argument column in the kernel ABI's layout.
struct Arg {
    type_code: u32,
    scale: i32,
    values: Vec<u8>,
    validity: Option<Vec<u8>>,
    offsets: Option<Vec<u8>>,
}

impl Arg {
    fn of(a: &ArrayRef) -> Result<Self> {
        let type_code = arg_type(a.data_type()).ok_or_else(|| {
            Error::TypeMismatch(format!("kernels cannot take {} columns", a.data_type()))
        })?;
        let scale = match a.data_type() {
            DataType::Decimal128(_, s) => *s as i32,
            _ => 0,
        };
        let validity = a.logical_nulls().filter(|n| n.null_count() > 0).map(|n| {
            let mut bytes = vec![0u8; a.len().div_ceil(8)];
            for i in 0..a.len() {
                if n.is_valid(i) {
                    bytes[i / 8] |= 1 << (i % 8);
                }
            }
            bytes
        });
        let (values, offsets) = if type_code == types::UTF8 {
            let s = arrow::compute::cast(a, &DataType::Utf8)?;
            let s = s.as_string::<i32>();
            let first = s.value_offsets()[0];
            let offs: Vec<u8> = s
                .value_offsets()
                .iter()
                .flat_map(|o| (o - first).to_le_bytes())
                .collect();
            let end = s.value_offsets()[s.len()] as usize;
            (s.value_data()[first as usize..end].to_vec(), Some(offs))
        } else {
            let data = a.to_data();
            let width = types::width(type_code);
            let start = data.offset() * width;
            (
                data.buffers()[0].as_slice()[start..start + data.len() * width].to_vec(),
                None,
            )
        };
        Ok(Arg {
            type_code,
            scale,
            values,
            validity,
            offsets,
        })
    }

    fn view(&self) -> ColumnBuffers<'_> {
        ColumnBuffers {
            type_code: self.type_code,
            scale: self.scale,
            values: &self.values,
            validity: self.validity.as_deref(),
            offsets: self.offsets.as_deref(),
        }
    }
}

impl KernelCall {
    /// A call of `program` (loaded by `sandbox`) with `params`.
    pub fn new(name: &str, program: Arc<Program>, sandbox: Arc<Sandbox>, params: &str) -> Self {
        KernelCall {
            // Errors name the kernel as the caller does (without the tenant's namespace).
            name: name.rsplit('/').next().unwrap_or(name).to_string(),
            program,
            sandbox,
            params: params.as_bytes().to_vec(),
            session: Mutex::new(None),
            limits: Mutex::new(None),
        }
    }

    /// Runs the call under `limits` (the caller's tenant's), from its first batch on.
    pub fn set_limits(&self, limits: Option<KernelLimits>) {
        *self.limits.lock().expect("kernel limits") = limits;
    }

    /// The module's SHA-256.
    pub fn module(&self) -> &str {
        &self.program.id
    }

    /// Runs the kernel over `args` (columns of one batch of `rows` rows).
    pub fn eval(&self, rows: usize, args: &[ArrayRef]) -> Result<BooleanArray> {
        let owned = args.iter().map(Arg::of).collect::<Result<Vec<_>>>()?;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(Arg::view).collect();
        let mut slot = self.session.lock().expect("kernel session");
        if slot.is_none() {
            let limits = *self.limits.lock().expect("kernel limits");
            *slot = Some(self.sandbox.session_with(&self.program, limits)?);
        }
        let session = slot.as_mut().expect("just set");
        let selected = session
            .filter(rows, &views, &self.params)
            .map_err(|e| Error::Kernel(format!("kernel '{}': {e}", self.name)))?;
        let mut mask = vec![false; rows];
        for i in selected {
            mask[i as usize] = true;
        }
        Ok(BooleanArray::from(mask))
    }
}
