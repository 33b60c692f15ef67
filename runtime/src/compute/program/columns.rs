//! Arrow columns laid out for the kernel ABI ([`OwnedColumn`]): values from the first row,
//! validity bitmaps from bit 0, string offsets rebased to 0; one constructor for the built-in
//! kernels (narrow decimals as INT64) and one for registered kernels' arguments, over one type
//! map ([`arg_type`]).
//!
//! For the built-in filter the host stages integer columns (int32, date32, int64, decimals of
//! precision ≤ 18) in the fewest bytes — 1, 2, 4 — that hold every value of the batch
//! (`ColumnDesc.stored_width`; [`OwnedColumn::narrowest`], trying the width the query's last
//! batch needed, which [`Seen`] keeps). Other kernels always get columns at their type's width.

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBufferBuilder, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::types;

use super::stage::{ColumnBuffers, Stage};
use crate::error::{Error, Result};
use crate::plan::arg_type;

/// The columns `names` of a decoded batch in the kernel ABI's layout.
pub(crate) fn marshal_columns(batch: &RecordBatch, names: &[String]) -> Result<Vec<OwnedColumn>> {
    names
        .iter()
        .map(|c| {
            batch.column_by_name(c).map(OwnedColumn::of).ok_or_else(|| {
                Error::Internal(format!("column '{c}' missing from the decoded batch"))
            })
        })
        .collect()
}

/// Buffers of one Arrow column in the layout the kernel ABI expects (offset-free).
pub(crate) struct OwnedColumn {
    type_code: u32,
    scale: i32,
    values: arrow::buffer::Buffer,
    stage: Stage,
    validity: Option<Vec<u8>>,
    /// `UTF8`: `rows + 1` offsets into `values`, from 0.
    offsets: Option<Vec<u8>>,
}

impl OwnedColumn {
    /// The column as the built-in kernels take it: decimals of precision <= 18 as INT64
    /// (narrowed while staged), booleans as bitmaps; a type they do not take has no values.
    pub(crate) fn of(a: &ArrayRef) -> Self {
        Self::laid_out(a, type_code(a.data_type()).unwrap_or((0, 0)))
    }

    /// An argument column of a registered kernel: every type at its own width (decimals as
    /// DECIMAL128), strings of any Arrow layout as UTF8; a type kernels cannot take
    /// ([`arg_type`]) is an error.
    pub(crate) fn argument(a: &ArrayRef) -> Result<Self> {
        let type_code = arg_type(a.data_type()).ok_or_else(|| {
            Error::TypeMismatch(format!("kernels cannot take {} columns", a.data_type()))
        })?;
        let scale = match a.data_type() {
            DataType::Decimal128(_, s) => *s as i32,
            _ => 0,
        };
        if type_code == types::UTF8 && *a.data_type() != DataType::Utf8 {
            // LargeUtf8 and Utf8View travel as Utf8.
            let utf8 = arrow::compute::cast(a, &DataType::Utf8)?;
            return Ok(Self::laid_out(&utf8, (type_code, scale)));
        }
        Ok(Self::laid_out(a, (type_code, scale)))
    }

    /// The buffers of `a` for the ABI type `type_code` (and decimal scale): values from the
    /// first row (strings: the bytes the rows use, offsets rebased to 0), validity from bit 0.
    fn laid_out(a: &ArrayRef, (mut type_code, scale): (u32, i32)) -> Self {
        let width = types::width(type_code);
        let mut offsets = None;
        let (values, stage) = if let Some(b) = a.as_any().downcast_ref::<BooleanArray>() {
            type_code = types::BOOL;
            (
                arrow::buffer::Buffer::from_vec(bits_from_zero(b.values())),
                Stage::Copy,
            )
        } else if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
            // The bytes the rows use, and their offsets from the first of them.
            type_code = types::UTF8;
            let o = s.value_offsets();
            let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
            offsets = Some(o.iter().flat_map(|x| (x - o[0]).to_le_bytes()).collect());
            (
                s.values().slice_with_length(first, last - first),
                Stage::Copy,
            )
        } else if matches!(
            (a.data_type(), type_code),
            (DataType::Decimal128(..), types::INT64)
        ) {
            // Narrow decimals travel as i64 (exact: precision <= 18), narrowed while staged,
            // not in a pass of their own.
            (fixed_values(a.as_ref()), Stage::Narrow { from: 16, to: 8 })
        } else if width > 0 {
            (fixed_values(a.as_ref()), Stage::Copy)
        } else {
            (
                arrow::buffer::Buffer::from_vec(Vec::<u8>::new()),
                Stage::Copy,
            )
        };
        let validity = a
            .nulls()
            .filter(|n| n.null_count() > 0)
            .map(|n| bits_from_zero(n.inner()));
        OwnedColumn {
            type_code,
            scale,
            values,
            stage,
            validity,
            offsets,
        }
    }

    /// The column with its integer values (INT32, DATE32, INT64 and narrow decimals) staged
    /// in the fewest bytes that hold every value of the batch, for the built-in filter kernel:
    /// a date or a price then takes 2 or 4 bytes, and the kernel compares 8 or 4 rows per
    /// SIMD instruction instead of 2 (int64) or 4 (int32, date32). `seen` is what earlier
    /// batches of the query showed:
    /// the values are tried at the width the last batch needed, in the one pass into the
    /// kernel's memory that also finds their range (see [`Stage::Guess`]). A column whose
    /// values did not narrow is copied, and looked at again 16 batches later, then 32, 64 and
    /// so on to every 256 while its values still need their full width (a look is a pass of
    /// its own).
    pub(crate) fn narrowest(mut self, seen: &mut Seen) -> Self {
        let from: u8 = match (self.type_code, self.stage) {
            (types::INT32 | types::DATE32, Stage::Copy) => 4,
            (types::INT64, Stage::Copy) => 8,
            (types::INT64, Stage::Narrow { from: 16, .. }) => 16,
            _ => return self,
        };
        if seen.width >= from {
            seen.since += 1;
            if seen.since < seen.every.max(16) {
                return self;
            }
            seen.since = 0;
            seen.every = (seen.every.max(16) * 2).min(256);
        } else {
            (seen.since, seen.every) = (0, 0);
        }
        let to = if seen.width == 0 || seen.width >= from {
            1
        } else {
            seen.width
        };
        self.stage = Stage::Guess { from, to };
        self
    }

    /// The column's buffers as the ABI lays them out.
    pub(crate) fn view(&self) -> ColumnBuffers<'_> {
        ColumnBuffers {
            type_code: self.type_code,
            scale: self.scale,
            values: self.values.as_slice(),
            validity: self.validity.as_deref(),
            offsets: self.offsets.as_deref(),
            stage: self.stage,
        }
    }
}

/// What the built-in filter learnt of a column's values over a query's batches.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    /// Bytes per value the last batch's values needed, or were staged in when that was not
    /// looked at (0: no batch yet).
    pub(crate) width: u8,
    /// Batches since the values were last looked at, while they need their full width.
    since: u32,
    /// Batches between looks at values that need their full width: 16, doubling at each look
    /// that finds them so again, to 256 (0: not yet doubled).
    every: u32,
}

/// The values of a fixed-width column from its first row to its last (no copy; empty for a
/// type the kernels do not take).
fn fixed_values(a: &dyn Array) -> arrow::buffer::Buffer {
    use arrow::array::AsArray;
    use arrow::datatypes::{
        Date32Type, Decimal64Type, Decimal128Type, Float64Type, Int32Type, Int64Type,
    };
    match a.data_type() {
        DataType::Int32 => a.as_primitive::<Int32Type>().values().inner().clone(),
        DataType::Int64 => a.as_primitive::<Int64Type>().values().inner().clone(),
        DataType::Float64 => a.as_primitive::<Float64Type>().values().inner().clone(),
        DataType::Decimal128(..) => a.as_primitive::<Decimal128Type>().values().inner().clone(),
        DataType::Decimal64(..) => a.as_primitive::<Decimal64Type>().values().inner().clone(),
        DataType::Date32 => a.as_primitive::<Date32Type>().values().inner().clone(),
        _ => arrow::buffer::Buffer::from_vec(Vec::<u8>::new()),
    }
}

/// The bytes of a bitmap with its first bit at bit 0 (LSB first), as the kernel ABI lays
/// bitmaps out.
fn bits_from_zero(bits: &arrow::buffer::BooleanBuffer) -> Vec<u8> {
    if bits.offset().is_multiple_of(8) {
        let start = bits.offset() / 8;
        let mut out = bits.values()[start..start + bits.len().div_ceil(8)].to_vec();
        // No bit past the last row (a slice's bitmap shares its last byte with the rows after).
        if let (Some(last), tail @ 1..) = (out.last_mut(), bits.len() % 8) {
            *last &= (1u8 << tail) - 1;
        }
        out
    } else {
        let mut b = BooleanBufferBuilder::new(bits.len());
        b.append_buffer(bits);
        b.finish().values().to_vec()
    }
}

/// The ABI type (and decimal scale) in which the built-in kernels take an Arrow type they
/// compare, aggregate or sort by: its type as a kernel argument ([`arg_type`], the one type
/// map), but decimals of precision <= 18 travel as INT64 (exact) and strings are not taken
/// here (the filter program reads them as UTF8 columns of their own).
pub(crate) fn type_code(t: &DataType) -> Option<(u32, i32)> {
    if let DataType::Decimal64(_, s) = t {
        // A narrow decimal as the scan decodes it: INT64 already.
        return Some((types::INT64, *s as i32));
    }
    Some(match (arg_type(t)?, t) {
        (types::UTF8, _) => return None,
        (_, DataType::Decimal128(p, s)) if *p <= 18 => (types::INT64, *s as i32),
        (code, DataType::Decimal128(_, s)) => (code, *s as i32),
        (code, _) => (code, 0),
    })
}
