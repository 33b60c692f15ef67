//! The pushdown plan: a versioned JSON document that names a table and the work the device
//! does on it (filter, projection, aggregation, ordering, limit).
//!
//! ```json
//! {"version": 1, "table": "lineitem",
//!  "filter": {"cmp": {"op": "<", "left": {"col": "l_quantity"}, "right": {"lit": 24}}},
//!  "aggregates": [{"func": "sum", "expr": {"col": "l_extendedprice"}, "name": "revenue"}]}
//! ```

use serde::{Deserialize, Serialize};

use crate::expr::Expr;
use crate::{Error, Result};

/// The plan format version this build reads and writes.
pub const PLAN_VERSION: u32 = 1;

/// Maximum size of an encoded plan accepted by [`Plan::from_json`].
pub const PLAN_BYTES_MAX: usize = 1 << 20;

/// A pushdown plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Format version; must equal [`PLAN_VERSION`].
    pub version: u32,
    /// Table to scan.
    pub table: String,
    /// Rows kept: only those for which the predicate is true (SQL semantics: null drops the row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Expr>,
    /// Output columns for a non-aggregate plan. Empty means every column of the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projection: Vec<Projection>,
    /// Grouping columns of an aggregate plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Aggregates. A plan with aggregates returns one row per group (one row without groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<Aggregate>,
    /// Ordering of the output, by output column name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<SortKey>,
    /// Maximum number of output rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Compute backend requested for this query; the device default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Compression of the result's Arrow IPC buffers; uncompressed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<IpcCompression>,
}

/// Compression of Arrow IPC record batch buffers (the IPC format's own `BodyCompression`, which
/// every Arrow reader with compression support decodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcCompression {
    /// LZ4 frame: fast, a moderate ratio.
    Lz4,
    /// Zstandard: a higher ratio, more CPU.
    Zstd,
}

impl IpcCompression {
    /// Name used on the command line and in plans.
    pub fn as_str(self) -> &'static str {
        match self {
            IpcCompression::Lz4 => "lz4",
            IpcCompression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for IpcCompression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lz4" => Ok(IpcCompression::Lz4),
            "zstd" => Ok(IpcCompression::Zstd),
            other => Err(Error::MalformedPlan(format!(
                "unknown IPC compression '{other}' (expected lz4 or zstd)"
            ))),
        }
    }
}

/// One output column of a projection: a bare column name, or a named expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Projection {
    /// `"l_quantity"`
    Column(String),
    /// `{"name": "disc_price", "expr": {...}}`
    Named {
        /// Output column name.
        name: String,
        /// Value expression.
        expr: Expr,
    },
}

impl Projection {
    /// Output column name.
    pub fn name(&self) -> &str {
        match self {
            Projection::Column(c) => c,
            Projection::Named { name, .. } => name,
        }
    }

    /// The expression computing this column.
    pub fn expr(&self) -> Expr {
        match self {
            Projection::Column(c) => Expr::col(c),
            Projection::Named { expr, .. } => expr.clone(),
        }
    }
}

/// Aggregate functions the device computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFunc {
    /// `count(*)`: rows in the group.
    CountStar,
    /// `count(expr)`: non-null values.
    Count,
    /// `sum(expr)`; null when the group has no non-null value.
    Sum,
    /// `min(expr)`.
    Min,
    /// `max(expr)`.
    Max,
    /// `avg(expr)` as Float64.
    Avg,
    /// A registered aggregate kernel: `expr` is its call (`{"kernel": {"name", "args",
    /// "params"}}`); the kernel's manifest gives the output type. Its partial states do not
    /// merge on the host, so a query runs it on one device.
    Kernel,
}

impl AggFunc {
    /// SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AggFunc::CountStar => "count_star",
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => "avg",
            AggFunc::Kernel => "kernel",
        }
    }
}

/// One aggregate of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Function.
    pub func: AggFunc,
    /// Argument; absent only for `count_star`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<Expr>,
    /// Output column name; defaults to `func` or `func_column`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Aggregate {
    /// Output column name.
    pub fn output_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.expr {
            Some(Expr::Col(c)) => format!("{}_{}", self.func.as_str(), c),
            Some(Expr::Kernel { name, .. }) => name.clone(),
            _ => self.func.as_str().to_string(),
        }
    }
}

/// One ordering key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortKey {
    /// Output column to sort by.
    pub column: String,
    /// Descending order.
    #[serde(default)]
    pub descending: bool,
    /// Nulls before non-null values (default: nulls last when ascending, first when descending,
    /// as in PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls_first: Option<bool>,
}

/// Compute backends a query may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Trusted built-in Rust operators.
    Native,
    /// Sandboxed WebAssembly kernels.
    Wasm,
    /// Emulated FPGA, falling back to Wasm for what it cannot run.
    Fpga,
}

impl BackendKind {
    /// Name used on the command line and in statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Wasm => "wasm",
            BackendKind::Fpga => "fpga",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(BackendKind::Native),
            "wasm" => Ok(BackendKind::Wasm),
            "fpga" => Ok(BackendKind::Fpga),
            other => Err(Error::MalformedPlan(format!(
                "unknown backend '{other}' (expected native, wasm or fpga)"
            ))),
        }
    }
}

impl Plan {
    /// Every expression of the plan: the filter, the named projections and the aggregates'
    /// inputs (where kernels may be called).
    pub fn exprs_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        let projected = self.projection.iter_mut().filter_map(|p| match p {
            Projection::Named { expr, .. } => Some(expr),
            Projection::Column(_) => None,
        });
        let aggregated = self.aggregates.iter_mut().filter_map(|a| a.expr.as_mut());
        self.filter.iter_mut().chain(projected).chain(aggregated)
    }

    /// The registered kernels the plan calls, each once.
    pub fn kernels(&self) -> Vec<String> {
        let mut names = Vec::new();
        for e in self.clone().exprs_mut() {
            e.visit_kernels_mut(&mut |n| names.push(n.clone()));
        }
        names.sort();
        names.dedup();
        names
    }

    /// A plan that scans `table` with nothing pushed down.
    pub fn scan(table: impl Into<String>) -> Self {
        Plan {
            version: PLAN_VERSION,
            table: table.into(),
            filter: None,
            projection: Vec::new(),
            group_by: Vec::new(),
            aggregates: Vec::new(),
            order_by: Vec::new(),
            limit: None,
            backend: None,
            compression: None,
        }
    }

    /// Decodes and structurally validates a plan.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > PLAN_BYTES_MAX {
            return Err(Error::MalformedPlan(format!(
                "plan is {} bytes; the limit is {PLAN_BYTES_MAX}",
                bytes.len()
            )));
        }
        let plan: Plan = serde_json::from_slice(bytes)
            .map_err(|e| Error::MalformedPlan(format!("invalid plan JSON: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Encodes the plan as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan always serialises")
    }

    /// Structural checks that need no schema.
    pub fn validate(&self) -> Result<()> {
        if self.version != PLAN_VERSION {
            return Err(Error::MalformedPlan(format!(
                "plan version {} is not supported (this device reads version {PLAN_VERSION})",
                self.version
            )));
        }
        if self.table.is_empty() {
            return Err(Error::MalformedPlan("plan names no table".into()));
        }
        let aggregating = !self.aggregates.is_empty() || !self.group_by.is_empty();
        if aggregating && !self.projection.is_empty() {
            return Err(Error::MalformedPlan(
                "a plan has either a projection or group_by/aggregates, not both".into(),
            ));
        }
        for agg in &self.aggregates {
            match (agg.func, &agg.expr) {
                (AggFunc::CountStar, Some(_)) => {
                    return Err(Error::MalformedPlan("count_star takes no argument".into()));
                }
                (AggFunc::CountStar, None) => {}
                (AggFunc::Kernel, Some(Expr::Kernel { .. })) => {}
                (AggFunc::Kernel, _) => {
                    return Err(Error::MalformedPlan(
                        "aggregate kernel needs a kernel call as its expr: \
                         {\"kernel\": {\"name\": …, \"args\": […], \"params\": …}}"
                            .into(),
                    ));
                }
                (f, None) => {
                    return Err(Error::MalformedPlan(format!(
                        "aggregate {} needs an argument",
                        f.as_str()
                    )));
                }
                (_, Some(_)) => {}
            }
        }
        let mut names = std::collections::HashSet::new();
        let outputs: Vec<String> = if aggregating {
            self.group_by
                .iter()
                .cloned()
                .chain(self.aggregates.iter().map(Aggregate::output_name))
                .collect()
        } else {
            self.projection
                .iter()
                .map(|p| p.name().to_string())
                .collect()
        };
        for n in &outputs {
            if !names.insert(n.as_str()) {
                return Err(Error::MalformedPlan(format!(
                    "output column '{n}' appears twice"
                )));
            }
        }
        if let Some(f) = &self.filter {
            f.check_depth()?;
        }
        for p in &self.projection {
            p.expr().check_depth()?;
        }
        for a in &self.aggregates {
            if let Some(e) = &a.expr {
                e.check_depth()?;
            }
        }
        Ok(())
    }

    /// Whether the plan aggregates.
    pub fn is_aggregate(&self) -> bool {
        !self.aggregates.is_empty() || !self.group_by.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{CmpOp, Literal};

    #[test]
    fn kernels_are_found_in_filters_projections_and_aggregates() {
        let k = |n: &str| format!(r#"{{"kernel": {{"name": "{n}", "args": ["x"]}}}}"#);
        let json = format!(
            r#"{{"version": 1, "table": "t", "filter": {{"and": [{}, {}]}},
                "projection": ["x", {{"name": "v", "expr": {}}}],
                "aggregates": [{{"func": "kernel", "expr": {}}}]}}"#,
            k("f"),
            k("m"),
            k("m"),
            k("a")
        );
        // Not a valid query (a projection beside aggregates), but every place a kernel may be.
        let mut plan: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(plan.kernels(), ["a", "f", "m"]);
        assert_eq!(plan.exprs_mut().count(), 3);
        assert!(Plan::scan("t").kernels().is_empty());
    }

    #[test]
    fn round_trips_and_rejects_bad_documents() {
        let mut p = Plan::scan("lineitem");
        p.filter = Some(Expr::cmp(
            CmpOp::Lt,
            Expr::col("l_quantity"),
            Expr::Lit(Literal::Int(24)),
        ));
        p.aggregates.push(Aggregate {
            func: AggFunc::Sum,
            expr: Some(Expr::col("l_extendedprice")),
            name: Some("revenue".into()),
        });
        let back = Plan::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);

        let err = Plan::from_json(b"{\"version\":1,").unwrap_err();
        assert!(err.to_string().contains("invalid plan JSON"), "{err}");
        let err = Plan::from_json(br#"{"version":9,"table":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        let err = Plan::from_json(br#"{"version":1,"table":"t","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Plan::from_json(br#"{"version":1,"table":"t","aggregates":[{"func":"sum"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("needs an argument"), "{err}");
    }
}
