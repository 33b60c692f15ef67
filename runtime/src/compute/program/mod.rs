//! What compiles bound plans into the kernel ABI's programs and lays Arrow data out for the
//! ABI, shared by the backends that run them (the Wasm built-in kernel, the FPGA engines):
//! the filter program ([`filter`]), the expression program ([`expr`]), the aggregate program
//! and its state ([`agg_state`]), and columns in the ABI's layout ([`columns`], [`stage`]).

pub mod agg_state;
pub mod columns;
pub mod expr;
pub mod filter;
pub mod stage;

pub use agg_state::finish_state;
pub(crate) use agg_state::{check_counts, marshal_aggregate, merge_state};
pub(crate) use columns::{OwnedColumn, Seen, marshal_columns, type_code};
pub use expr::compile_project;
pub(crate) use expr::project_array;
pub(crate) use filter::marshal_filter;
pub use filter::{compile_filter, filter_support, fixed_width_filter_support};
pub use stage::{BeyondPrecision, ColumnBuffers, Stage};

/// The program index of column `name`, numbered in `cols` (added to it when first met).
fn col_index(cols: &mut Vec<String>, name: &str) -> Option<[u8; 2]> {
    let i = match cols.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            cols.push(name.to_string());
            cols.len() - 1
        }
    };
    u16::try_from(i).ok().map(u16::to_le_bytes)
}
