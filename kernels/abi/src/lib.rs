//! The Nearstore kernel ABI shared by the device (host) and kernels (guest).
//!
//! This leaf crate is `no_std` so guest kernels compiled for `wasm32-unknown-unknown` use the
//! same definitions as the host. Everything crossing the sandbox boundary is plain
//! little-endian `u32` words in the kernel's linear memory; nothing here holds a pointer type.
//!
//! # Call sequence (filter)
//! 1. The host calls [`EXPORT_ALLOC`]`(bytes, 16)` once per query to get an arena in the
//!    kernel's memory, and grows it (another call) only when a batch needs more.
//! 2. Per batch, the host writes into the arena: the parameter bytes (the filter program, see
//!    [`program`]), the column buffers in Arrow layout (values, validity bitmap, offsets), an
//!    array of [`ColumnDesc`] and one [`BatchDesc`]; it reserves `rows` `u32`s for the output.
//! 3. The host calls [`EXPORT_FILTER`]`(batch_desc_ptr, out_ptr, out_cap)`. The kernel writes
//!    the indices of selected rows, strictly increasing, and returns their count, or a negative
//!    [`status`] code.
//! 4. The host checks the count, every index (`< rows`) and the order before using them.
#![no_std]

/// ABI version spoken by this build. A kernel exports it as the value of [`EXPORT_ABI_VERSION`].
pub const ABI_VERSION: u32 = 1;

/// `() -> u32`: the kernel's ABI version.
pub const EXPORT_ABI_VERSION: &str = "nearstore_abi_version";
/// `(size: u32, align: u32) -> u32`: allocates in the kernel's memory; 0 on failure.
pub const EXPORT_ALLOC: &str = "nearstore_alloc";
/// `(batch: u32, out: u32, out_cap: u32) -> i32`: a filter (see the crate docs).
pub const EXPORT_FILTER: &str = "nearstore_filter";
/// `(batch: u32, out: u32, out_words: u32) -> i32`, optional: the same filter writing a
/// selection bitmap (`out_words` little-endian `u64`s, bit `i` of word `w` = row `64 w + i`,
/// bits past the last row zero) and returning the number of selected rows. The host prefers
/// it when exported; it costs nothing per selected row.
pub const EXPORT_FILTER_BITMAP: &str = "nearstore_filter_bitmap";
/// `(batch: u32, state: u32, groups: u32) -> i32`, optional: accumulates aggregates. Column 0
/// of the batch holds each row's group (`INT32` values `< groups`; for the [`agg`] program also
/// [`agg::SKIP_ROW`]), or has type code 0 when every row belongs to group 0; the other columns
/// are the aggregates' inputs. The parameters
/// are the [`agg`] program. `state` addresses `groups × aggregates` slots of
/// [`agg::SLOT_BYTES`], group-major, which the host zeroes and keeps across calls. Returns 0 or
/// a negative [`status`].
pub const EXPORT_AGG_UPDATE: &str = "nearstore_agg_update";
/// `(batch: u32, out: u32, rows: u32) -> i32`: a map kernel (manifest `kind=map`). It writes
/// one value per row of the manifest's `output` type: `rows` 8-byte little-endian values
/// (`i64`, or `f64` bits) at `out`, then `ceil(rows / 64)` little-endian `u64` validity words
/// (bit set: the value is valid; bits past the last row zero). Returns `rows`, or a negative
/// [`status`].
pub const EXPORT_MAP: &str = "nearstore_map";
/// `(state: u32, out: u32, out_cap: u32) -> i32`: finishes one group of a custom aggregate
/// kernel (manifest `kind=aggregate`). `state` addresses the group's `state_size` bytes (the
/// manifest's), which the kernel's [`EXPORT_AGG_UPDATE`] filled; all zero means no row reached
/// the group. The kernel writes up to `out_cap` 8-byte little-endian values at `out` and
/// returns how many: for `output=int64` or `float64` 1 (the value) or 0 (NULL), for
/// `output=list_int64` the list's length, or [`status::OUTPUT_TOO_SMALL`] to be called again
/// with more room. For custom aggregates [`EXPORT_AGG_UPDATE`]'s parameters are the caller's
/// parameter bytes and each group's state is `state_size` bytes (not [`agg`] slots); column 0
/// holds the groups, the other columns the kernel's arguments.
pub const EXPORT_AGG_FINISH: &str = "nearstore_agg_finish";
/// `(batch: u32, out: u32, rows: u32) -> i32`, optional (the built-in kernel): evaluates the
/// [`expr`] program per row. The parameters are the output width (one byte, 8 or 16) and the
/// program. At `out` it writes `ceil(rows / 64)` validity words, then `rows` little-endian
/// values: 8 bytes (`i64`, or `f64` bits) or 16 (`i128`). Returns `rows`, or
/// [`status::OVERFLOW`] when a valid row's value leaves its type's range (or, 8 bytes wide,
/// 64 bits), or [`status::DIVIDE_BY_ZERO`] when a valid row divides by zero.
pub const EXPORT_PROJECT: &str = "nearstore_project";
/// `(batch: u32, out: u32, state: u32) -> i32`, optional (the built-in kernel): the top-k
/// pre-selection of `ORDER BY key … LIMIT k`. Column 0 is the first sort key (int32, date32,
/// int64, decimal128, float64); the parameters are two bytes, descending and nulls-first. The
/// state (16-byte aligned, kept by the host across batches) is `k: u32`, `n: u32`, 8 reserved
/// bytes, then `k` `i128` order keys (a min-heap of the best `n` keys so far). The kernel
/// writes a selection bitmap (`ceil(rows / 64)` `u64`s) of the rows whose key is at least the
/// k-th best seen (so every row of the final top k is among them), updates the state, and
/// returns the number of rows selected.
pub const EXPORT_TOPK: &str = "nearstore_topk";
/// The kernel's linear memory.
pub const EXPORT_MEMORY: &str = "memory";

/// The expression program of [`EXPORT_PROJECT`] and of the filter's [`program::CMP_EXPR`]
/// sides: postfix, over the batch's columns (a filter's integer columns may be narrowed, see
/// `ColumnDesc::stored_width`), each instruction an opcode byte and its operands
/// (little-endian). A row is NULL when any column it reads is.
///
/// | opcode | operands | pushes |
/// |---|---|---|
/// | [`expr::COL`] | column `u16` | the column's values (int32, int64, decimal128 unscaled, float64) |
/// | [`expr::INT`] | `i128` | an integer or unscaled decimal constant |
/// | [`expr::FLOAT`] | `f64` | a float constant |
/// | [`expr::ADD`] / [`expr::SUB`] / [`expr::MUL`] / [`expr::DIV`] | range `u8` | the result, checked against the range |
/// | [`expr::RESCALE`] | `k: u8` | the value × 10^k (a decimal's scale raised by k), checked |
pub mod expr {
    /// Push a column.
    pub const COL: u8 = 1;
    /// Push an integer constant.
    pub const INT: u8 = 2;
    /// Push a float constant.
    pub const FLOAT: u8 = 3;
    /// Pop two, push their sum.
    pub const ADD: u8 = 4;
    /// Pop two, push their difference.
    pub const SUB: u8 = 5;
    /// Pop two, push their product.
    pub const MUL: u8 = 6;
    /// Pop one, push it × 10^k. A row that leaves `i128` is an error only if it is still valid
    /// where the value is used (a decimal dividend raised for its quotient's scale is not
    /// computed on rows whose divisor is NULL, as in Arrow).
    pub const RESCALE: u8 = 7;
    /// Pop two, push their quotient: integers (and unscaled decimals, which the program
    /// rescales first) truncated toward zero, a valid row dividing by zero an error
    /// ([`super::status::DIVIDE_BY_ZERO`]); floats as IEEE 754 divides.
    pub const DIV: u8 = 8;

    /// The range an arithmetic result must lie in (its SQL type).
    pub mod range {
        /// `i32`.
        pub const I32: u8 = 0;
        /// `i64`.
        pub const I64: u8 = 1;
        /// `i128` (decimals).
        pub const I128: u8 = 2;
        /// `f64` (IEEE arithmetic, no check).
        pub const F64: u8 = 3;
    }

    /// Deepest evaluation stack a program may need.
    pub const STACK_MAX: usize = 16;
}

/// Output types of map and aggregate kernels (manifest `output=`).
pub mod output {
    /// 64-bit signed integers.
    pub const INT64: &str = "int64";
    /// 64-bit floats.
    pub const FLOAT64: &str = "float64";
    /// Lists of 64-bit signed integers (aggregate kernels only).
    pub const LIST_INT64: &str = "list_int64";
}

/// The largest `state_size` an aggregate kernel may declare (bytes per group).
pub const STATE_SIZE_MAX: usize = 64 * 1024;

/// Module of the only host functions a kernel may import.
pub const IMPORT_MODULE: &str = "nearstore";
/// `(ptr: u32, len: u32)`: log a UTF-8 message (truncated by the host).
pub const IMPORT_LOG: &str = "log";
/// `(code: u32) -> !`: abort the kernel with a code.
pub const IMPORT_ABORT: &str = "abort";

/// Name of the custom section holding the kernel manifest (UTF-8 `key=value` lines:
/// `abi`, `kind` (`filter`, `map` or `aggregate`), `name`, `signature`, and for map and
/// aggregate kernels `output` (see [`output`]), for aggregate kernels `state_size`).
pub const MANIFEST_SECTION: &str = "nearstore.manifest";

/// Column types (`ColumnDesc::type_code`).
pub mod types {
    /// Boolean: values are a bitmap (LSB first), like Arrow.
    pub const BOOL: u32 = 1;
    /// 32-bit signed integer.
    pub const INT32: u32 = 2;
    /// 64-bit signed integer.
    pub const INT64: u32 = 3;
    /// 64-bit float.
    pub const FLOAT64: u32 = 4;
    /// 128-bit decimal (little-endian `i128` of unscaled values; `scale` in the descriptor).
    pub const DECIMAL128: u32 = 5;
    /// Days since the epoch as `i32`.
    pub const DATE32: u32 = 6;
    /// UTF-8 strings: `i32` offsets (`rows + 1`) and value bytes.
    pub const UTF8: u32 = 7;

    /// Bytes per value of a fixed-width type, 0 otherwise.
    pub const fn width(code: u32) -> usize {
        match code {
            INT32 | DATE32 => 4,
            INT64 | FLOAT64 => 8,
            DECIMAL128 => 16,
            _ => 0,
        }
    }
}

/// Negative return codes of kernel calls.
pub mod status {
    /// The batch or parameters are malformed (the kernel refuses them).
    pub const BAD_INPUT: i32 = -1;
    /// The output region is too small.
    pub const OUTPUT_TOO_SMALL: i32 = -2;
    /// The kernel does not support something it was asked to do.
    pub const UNSUPPORTED: i32 = -3;
    /// The kernel could not allocate.
    pub const NO_MEMORY: i32 = -4;
    /// An accumulator or a computed value left its type's range.
    pub const OVERFLOW: i32 = -5;
    /// A computed value divided by zero.
    pub const DIVIDE_BY_ZERO: i32 = -6;
}

/// Size in bytes of [`BatchDesc`] in memory.
pub const BATCH_DESC_BYTES: usize = 6 * 4;
/// Size in bytes of [`ColumnDesc`] in memory.
pub const COLUMN_DESC_BYTES: usize = 8 * 4;

/// The batch descriptor: six little-endian `u32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchDesc {
    /// [`ABI_VERSION`].
    pub abi: u32,
    /// Rows in the batch.
    pub rows: u32,
    /// Columns.
    pub ncols: u32,
    /// Address of the column descriptors.
    pub cols_ptr: u32,
    /// Address of the parameter bytes.
    pub params_ptr: u32,
    /// Length of the parameter bytes.
    pub params_len: u32,
}

/// One column: eight little-endian `u32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ColumnDesc {
    /// One of [`types`].
    pub type_code: u32,
    /// Decimal scale (as `u32` of an `i32`).
    pub scale: u32,
    /// Address of the values.
    pub values_ptr: u32,
    /// Length of the values in bytes.
    pub values_len: u32,
    /// Address of the validity bitmap, 0 when the column has no nulls.
    pub validity_ptr: u32,
    /// Address of the offsets (`UTF8` only).
    pub offsets_ptr: u32,
    /// Length of the offsets in bytes.
    pub offsets_len: u32,
    /// Bytes per value as stored, 0 when the values have their type's own width. 1, 2 or 4:
    /// the values of an `INT32`, `DATE32` or `INT64` column are held as signed integers that
    /// narrow (every value of the batch fits them). The host narrows only for the built-in
    /// filter kernel; other kernels always get 0.
    pub stored_width: u32,
}

fn put(out: &mut [u8], i: usize, v: u32) {
    out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

fn get(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i * 4..i * 4 + 4]);
    u32::from_le_bytes(w)
}

impl BatchDesc {
    /// Encodes into `out` (at least [`BATCH_DESC_BYTES`]).
    pub fn write(&self, out: &mut [u8]) {
        for (i, v) in [
            self.abi,
            self.rows,
            self.ncols,
            self.cols_ptr,
            self.params_ptr,
            self.params_len,
        ]
        .into_iter()
        .enumerate()
        {
            put(out, i, v);
        }
    }

    /// Decodes from `b` (at least [`BATCH_DESC_BYTES`]).
    pub fn read(b: &[u8]) -> Self {
        BatchDesc {
            abi: get(b, 0),
            rows: get(b, 1),
            ncols: get(b, 2),
            cols_ptr: get(b, 3),
            params_ptr: get(b, 4),
            params_len: get(b, 5),
        }
    }
}

impl ColumnDesc {
    /// Encodes into `out` (at least [`COLUMN_DESC_BYTES`]).
    pub fn write(&self, out: &mut [u8]) {
        let words = [
            self.type_code,
            self.scale,
            self.values_ptr,
            self.values_len,
            self.validity_ptr,
            self.offsets_ptr,
            self.offsets_len,
            self.stored_width,
        ];
        for (i, v) in words.into_iter().enumerate() {
            put(out, i, v);
        }
    }

    /// Decodes from `b` (at least [`COLUMN_DESC_BYTES`]).
    pub fn read(b: &[u8]) -> Self {
        ColumnDesc {
            type_code: get(b, 0),
            scale: get(b, 1),
            values_ptr: get(b, 2),
            values_len: get(b, 3),
            validity_ptr: get(b, 4),
            offsets_ptr: get(b, 5),
            offsets_len: get(b, 6),
            stored_width: get(b, 7),
        }
    }
}

/// The filter program: the parameters of the built-in filter kernel, a postfix program over
/// the batch's columns evaluated with SQL three-valued logic. Each instruction is one opcode
/// byte followed by its operands (little-endian).
///
/// | opcode | operands | pushes |
/// |---|---|---|
/// | [`program::CMP`] | column `u16`, op `u8`, literal (the column type's width in bytes, whatever `stored_width` says; `UTF8`: length `u16` then bytes) | comparison |
/// | [`program::IS_NULL`] | column `u16` | `true` where null |
/// | [`program::IS_NOT_NULL`] | column `u16` | `true` where valid |
/// | [`program::IN`] | column `u16`, count `u16`, literals | membership (no NULL in list) |
/// | [`program::AND`] / [`program::OR`] | — | pops two |
/// | [`program::NOT`] | — | pops one |
/// | [`program::CONST`] | value `u8` (0 false, 1 true, 2 null) | constant |
/// | [`program::LIKE`] | `UTF8` column `u16`, shape `u8` ([`program::like`]), length `u16`, bytes | `LIKE` |
/// | [`program::CMP_COLUMNS`] | column `u16`, op `u8`, column `u16` (one fixed-width type, or both `UTF8`) | comparison |
/// | [`program::BOOL_COLUMN`] | `BOOL` column `u16` | its values |
/// | [`program::CMP_EXPR`] | op `u8`, then per side its length `u16` and an [`expr`] program | comparison |
///
/// Strings compare byte-wise (UTF-8 order, as Arrow's); `LIKE` matches the prefix, suffix and
/// contains shapes byte-wise (exactly as they match by character), and other patterns a
/// character at a time where they say `_`.
/// The program must leave exactly one value; rows where it is `true` are selected.
pub mod program {
    /// Compare a column with a literal.
    pub const CMP: u8 = 1;
    /// Null test.
    pub const IS_NULL: u8 = 2;
    /// Not-null test.
    pub const IS_NOT_NULL: u8 = 3;
    /// Membership in a literal list.
    pub const IN: u8 = 4;
    /// Kleene AND.
    pub const AND: u8 = 5;
    /// Kleene OR.
    pub const OR: u8 = 6;
    /// Kleene NOT.
    pub const NOT: u8 = 7;
    /// A constant.
    pub const CONST: u8 = 8;
    /// `LIKE` of a string column with a pattern of one of the [`like`] shapes.
    pub const LIKE: u8 = 9;
    /// Compare two columns of one type (fixed-width, or both `UTF8`), row by row.
    pub const CMP_COLUMNS: u8 = 10;
    /// A `BOOL` column's values.
    pub const BOOL_COLUMN: u8 = 11;
    /// Compare two computed values ([`super::expr`] programs of one result type: integers,
    /// unscaled decimals of one scale, or floats), row by row; unknown where either is null.
    /// A side's arithmetic error fails the call as in [`super::EXPORT_PROJECT`].
    pub const CMP_EXPR: u8 = 12;

    /// Pattern shapes of [`LIKE`] (the bytes are the pattern without its `%`s, or the whole
    /// pattern for [`like::PATTERN`]).
    pub mod like {
        /// `'text%'`
        pub const PREFIX: u8 = 0;
        /// `'%text'`
        pub const SUFFIX: u8 = 1;
        /// `'%text%'`
        pub const CONTAINS: u8 = 2;
        /// Any other pattern, as written: `%` matches any characters, `_` one character, and
        /// `\` takes the next character as it is (a trailing `\` is itself), as Arrow's
        /// `LIKE` does.
        pub const PATTERN: u8 = 3;
    }

    /// Comparison operators of [`CMP`].
    pub mod op {
        /// `=`
        pub const EQ: u8 = 0;
        /// `!=`
        pub const NE: u8 = 1;
        /// `<`
        pub const LT: u8 = 2;
        /// `<=`
        pub const LE: u8 = 3;
        /// `>`
        pub const GT: u8 = 4;
        /// `>=`
        pub const GE: u8 = 5;
    }

    /// Deepest evaluation stack a program may need.
    pub const STACK_MAX: usize = 32;
    /// Longest program accepted.
    pub const PROGRAM_BYTES_MAX: usize = 64 * 1024;
}

/// The aggregate program: the number of aggregates `n: u16`; per aggregate 4 bytes —
/// function `u8`, input `u16` (0xFFFF for none), input kind `u8` ([`agg::INPUT_COLUMN`]: the
/// batch's column `input`; [`agg::INPUT_COMPUTED`]: computed input `input`, from 0); then
/// the computed inputs, each a `u32` length and an expression program ([`expr`]) over the
/// batch's columns, evaluated before any aggregate is folded ([`agg::split`] reads the layout).
///
/// Each slot is 32 bytes: an accumulator at offset 0 (`i128` for integer and decimal inputs,
/// `f64` for float inputs; for min/max of floats the IEEE total-order key as `i128`), the count
/// of non-null inputs seen (`i64`) at offset 16, and 8 reserved bytes.
pub mod agg {
    /// `count(*)`: rows.
    pub const COUNT_STAR: u8 = 0;
    /// `count(x)`: non-null inputs.
    pub const COUNT: u8 = 1;
    /// `sum(x)` (the host derives `avg` from sum and count).
    pub const SUM: u8 = 2;
    /// `min(x)`.
    pub const MIN: u8 = 3;
    /// `max(x)`.
    pub const MAX: u8 = 4;
    /// Bytes per aggregate per group.
    pub const SLOT_BYTES: usize = 32;
    /// Input column meaning "no input".
    pub const NO_COLUMN: u16 = 0xFFFF;
    /// Input kind: a column of the batch.
    pub const INPUT_COLUMN: u8 = 0;
    /// Input kind: a computed input, evaluated from the batch's columns inside the call.
    pub const INPUT_COMPUTED: u8 = 1;
    /// A row's group that leaves the row out: no aggregate folds it, no count counts it. The
    /// host hands the built-in kernel's program a batch unfiltered, the rows its predicate
    /// rejected marked so, when most rows pass (copying the rest costs more than skipping
    /// these). A computed input is still evaluated on them; should that fail, the host calls
    /// again with the kept rows alone. Custom aggregate kernels never see it.
    pub const SKIP_ROW: i32 = -1;

    /// An aggregate program's 4-byte entries (one per aggregate) and its computed inputs
    /// ([`Programs`] reads them in order); `None` when the layout does not hold.
    pub fn split(params: &[u8]) -> Option<(&[u8], Programs<'_>)> {
        let (n, rest) = params.split_first_chunk::<2>()?;
        let n = u16::from_le_bytes(*n) as usize;
        let (entries, computed) = rest.split_at_checked(4 * n)?;
        let mut check = Programs { rest: computed };
        while !check.rest.is_empty() {
            check.next()?;
        }
        Some((entries, Programs { rest: computed }))
    }

    /// The expression programs of an aggregate program's computed inputs, in order.
    pub struct Programs<'a> {
        rest: &'a [u8],
    }

    impl<'a> Iterator for Programs<'a> {
        type Item = &'a [u8];

        fn next(&mut self) -> Option<&'a [u8]> {
            let (len, tail) = self.rest.split_first_chunk::<4>()?;
            let (program, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
            self.rest = tail;
            Some(program)
        }
    }

    /// The number of aggregates of a program (its state's slots per group); `None` when the
    /// layout does not hold.
    pub fn count(params: &[u8]) -> Option<usize> {
        split(params).map(|(entries, _)| entries.len() / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let b = BatchDesc {
            abi: ABI_VERSION,
            rows: 8192,
            ncols: 3,
            cols_ptr: 64,
            params_ptr: 1024,
            params_len: 17,
        };
        let mut buf = [0u8; BATCH_DESC_BYTES];
        b.write(&mut buf);
        assert_eq!(BatchDesc::read(&buf), b);
        let c = ColumnDesc {
            type_code: types::DECIMAL128,
            scale: 2,
            values_ptr: 4096,
            values_len: 16 * 8192,
            validity_ptr: 0,
            offsets_ptr: 0,
            offsets_len: 0,
            stored_width: 0,
        };
        let mut buf = [0u8; COLUMN_DESC_BYTES];
        c.write(&mut buf);
        assert_eq!(ColumnDesc::read(&buf), c);
        assert_eq!(types::width(types::DECIMAL128), 16);
    }
}
