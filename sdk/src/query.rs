//! A builder for pushdown plans.

use nearstore_proto::{AggFunc, Aggregate, BackendKind, Expr, Plan, Projection, SortKey};

use crate::{Error, Result};

/// Builds a [`Plan`] step by step.
#[derive(Debug, Clone)]
pub struct Query {
    plan: Plan,
}

impl Query {
    /// A query over `table` (every row, every column).
    pub fn table(name: impl Into<String>) -> Self {
        Query {
            plan: Plan::scan(name),
        }
    }

    /// Adds a filter in text form (`l_quantity < 24 AND l_discount BETWEEN 0.05 AND 0.07`);
    /// several filters are combined with AND.
    pub fn filter(self, text: &str) -> Result<Self> {
        let e = Expr::parse(text).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(self.filter_expr(e))
    }

    /// Adds (AND) a call of the registered filter kernel `name` over `args` with `params`.
    pub fn kernel_filter<S: Into<String>>(
        self,
        name: &str,
        args: impl IntoIterator<Item = S>,
        params: &str,
    ) -> Self {
        self.filter_expr(Expr::Kernel {
            name: name.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            params: params.to_string(),
        })
    }

    /// Adds a filter expression; several filters are combined with AND.
    pub fn filter_expr(mut self, e: Expr) -> Self {
        self.plan.filter = Some(match self.plan.filter.take() {
            None => e,
            Some(Expr::And(mut v)) => {
                v.push(e);
                Expr::And(v)
            }
            Some(prev) => Expr::And(vec![prev, e]),
        });
        self
    }

    /// Output columns.
    pub fn select<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.plan
            .projection
            .extend(columns.into_iter().map(|c| Projection::Column(c.into())));
        self
    }

    /// A computed output column, expression in text form.
    pub fn select_expr(mut self, name: &str, text: &str) -> Result<Self> {
        let expr = Expr::parse(text).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.plan.projection.push(Projection::Named {
            name: name.to_string(),
            expr,
        });
        Ok(self)
    }

    /// Adds an aggregate; `arg` is an expression in text form (ignored for `CountStar`).
    pub fn aggregate(mut self, func: AggFunc, arg: Option<&str>, name: &str) -> Result<Self> {
        let expr = match (func, arg) {
            (AggFunc::CountStar, _) => None,
            (_, Some(t)) => {
                Some(Expr::parse(t).map_err(|e| Error::InvalidArgument(e.to_string()))?)
            }
            (f, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{} needs an argument",
                    f.as_str()
                )));
            }
        };
        self.plan.aggregates.push(Aggregate {
            func,
            expr,
            name: Some(name.to_string()),
        });
        Ok(self)
    }

    /// Grouping columns.
    pub fn group_by<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.plan
            .group_by
            .extend(columns.into_iter().map(Into::into));
        self
    }

    /// Adds an ordering key on an output column.
    pub fn order_by(mut self, column: &str, descending: bool) -> Self {
        self.plan.order_by.push(SortKey {
            column: column.to_string(),
            descending,
            nulls_first: None,
        });
        self
    }

    /// Keeps at most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.plan.limit = Some(n);
        self
    }

    /// Asks for a compute backend.
    pub fn backend(mut self, b: BackendKind) -> Self {
        self.plan.backend = Some(b);
        self
    }

    /// The plan.
    pub fn build(self) -> Plan {
        self.plan
    }
}
