//! Bound (typed) expressions: plan expressions resolved against a table's schema, with literals
//! coerced to the types they meet, and their native evaluation with Arrow kernels (SQL
//! three-valued logic throughout).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Datum, Scalar, UInt32Array};
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_proto::{ArithOp, CmpOp};

use super::kernel::KernelFn;
use crate::error::{Error, Result};

/// An expression bound to a schema.
#[derive(Debug, Clone)]
pub enum PhysExpr {
    /// A column, looked up by name in the evaluated batch.
    Column {
        /// Column name.
        name: String,
        /// Column type.
        data_type: DataType,
    },
    /// A literal: a one-element array.
    Literal(ArrayRef),
    /// A type conversion.
    Cast {
        /// Input.
        expr: Box<PhysExpr>,
        /// Target type.
        to: DataType,
    },
    /// A comparison of two operands of the same type.
    Cmp {
        /// Operator.
        op: CmpOp,
        /// Left operand.
        left: Box<PhysExpr>,
        /// Right operand.
        right: Box<PhysExpr>,
    },
    /// Arithmetic.
    Arith {
        /// Operator.
        op: ArithOp,
        /// Left operand.
        left: Box<PhysExpr>,
        /// Right operand.
        right: Box<PhysExpr>,
        /// Result type.
        data_type: DataType,
    },
    /// Kleene AND.
    And(Vec<PhysExpr>),
    /// Kleene OR.
    Or(Vec<PhysExpr>),
    /// Kleene NOT.
    Not(Box<PhysExpr>),
    /// IS NULL.
    IsNull(Box<PhysExpr>),
    /// IS NOT NULL.
    IsNotNull(Box<PhysExpr>),
    /// `expr [NOT] IN list`, the list typed as `expr`.
    InList {
        /// Tested value.
        expr: Box<PhysExpr>,
        /// Candidates.
        list: ArrayRef,
        /// NOT IN.
        negated: bool,
    },
    /// `expr [NOT] LIKE pattern`.
    Like {
        /// Tested string.
        expr: Box<PhysExpr>,
        /// Pattern, typed as `expr`.
        pattern: ArrayRef,
        /// NOT LIKE.
        negated: bool,
    },
    /// A registered kernel over columns (run in its sandbox): a filter (Boolean), a map (its
    /// output type), or, as an aggregate's input only, an aggregate kernel.
    Kernel {
        /// The call: module, parameters, the query's instance.
        call: Arc<dyn KernelFn>,
        /// Argument columns.
        args: Vec<PhysExpr>,
    },
}

/// The result of evaluating an expression over a batch.
#[derive(Debug, Clone)]
pub struct Value {
    /// Values: one per row, or a single value when `scalar`.
    pub array: ArrayRef,
    /// Whether `array` is one value standing for every row.
    pub scalar: bool,
}

impl Value {
    /// Materialises one value per row.
    pub fn into_array(self, rows: usize) -> Result<ArrayRef> {
        if !self.scalar {
            return Ok(self.array);
        }
        let idx = UInt32Array::from(vec![0u32; rows]);
        Ok(arrow::compute::take(&self.array, &idx, None)?)
    }

    fn datum(&self) -> Box<dyn Datum + '_> {
        if self.scalar {
            Box::new(Scalar::new(self.array.clone()))
        } else {
            Box::new(self.array.clone())
        }
    }
}

impl PhysExpr {
    /// Result type.
    pub fn data_type(&self) -> DataType {
        match self {
            PhysExpr::Column { data_type, .. } => data_type.clone(),
            PhysExpr::Literal(a) => a.data_type().clone(),
            PhysExpr::Cast { to, .. } => to.clone(),
            PhysExpr::Arith { data_type, .. } => data_type.clone(),
            PhysExpr::Cmp { .. }
            | PhysExpr::And(_)
            | PhysExpr::Or(_)
            | PhysExpr::Not(_)
            | PhysExpr::IsNull(_)
            | PhysExpr::IsNotNull(_)
            | PhysExpr::InList { .. }
            | PhysExpr::Like { .. } => DataType::Boolean,
            PhysExpr::Kernel { call, .. } => call.data_type(),
        }
    }

    /// Columns read, without duplicates.
    pub fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        self.visit(&mut |e| {
            if let PhysExpr::Column { name, .. } = e
                && !out.contains(name)
            {
                out.push(name.clone());
            }
        });
        out
    }

    /// The type column `name` is read as, when the expression reads it.
    pub fn column_type(&self, name: &str) -> Option<DataType> {
        let mut t = None;
        self.visit(&mut |e| {
            if let PhysExpr::Column { name: n, data_type } = e
                && n == name
            {
                t = Some(data_type.clone());
            }
        });
        t
    }

    pub(crate) fn visit(&self, f: &mut dyn FnMut(&PhysExpr)) {
        f(self);
        match self {
            PhysExpr::Column { .. } | PhysExpr::Literal(_) => {}
            PhysExpr::Cast { expr, .. }
            | PhysExpr::Not(expr)
            | PhysExpr::IsNull(expr)
            | PhysExpr::IsNotNull(expr)
            | PhysExpr::InList { expr, .. }
            | PhysExpr::Like { expr, .. } => expr.visit(f),
            PhysExpr::Cmp { left, right, .. } | PhysExpr::Arith { left, right, .. } => {
                left.visit(f);
                right.visit(f);
            }
            PhysExpr::And(v) | PhysExpr::Or(v) | PhysExpr::Kernel { args: v, .. } => {
                v.iter().for_each(|e| e.visit(f))
            }
        }
    }

    /// Whether `other` is this expression or a clone of it: the same tree, sharing its literal
    /// arrays and kernel calls. A cheap identity for what was derived from an expression once
    /// (an equal expression built apart is not a clone; it is derived again).
    pub fn is_clone_of(&self, other: &PhysExpr) -> bool {
        use PhysExpr as E;
        let all = |a: &[PhysExpr], b: &[PhysExpr]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.is_clone_of(b))
        };
        match (self, other) {
            (
                E::Column { name, data_type },
                E::Column {
                    name: n,
                    data_type: t,
                },
            ) => name == n && data_type == t,
            (E::Literal(a), E::Literal(b)) => Arc::ptr_eq(a, b),
            (E::Cast { expr, to }, E::Cast { expr: e, to: t }) => to == t && expr.is_clone_of(e),
            (
                E::Cmp { op, left, right },
                E::Cmp {
                    op: o,
                    left: l,
                    right: r,
                },
            ) => op == o && left.is_clone_of(l) && right.is_clone_of(r),
            (
                E::Arith {
                    op,
                    left,
                    right,
                    data_type,
                },
                E::Arith {
                    op: o,
                    left: l,
                    right: r,
                    data_type: t,
                },
            ) => op == o && data_type == t && left.is_clone_of(l) && right.is_clone_of(r),
            (E::And(a), E::And(b)) | (E::Or(a), E::Or(b)) => all(a, b),
            (E::Not(a), E::Not(b))
            | (E::IsNull(a), E::IsNull(b))
            | (E::IsNotNull(a), E::IsNotNull(b)) => a.is_clone_of(b),
            (
                E::InList {
                    expr,
                    list,
                    negated,
                },
                E::InList {
                    expr: e,
                    list: l,
                    negated: n,
                },
            )
            | (
                E::Like {
                    expr,
                    pattern: list,
                    negated,
                },
                E::Like {
                    expr: e,
                    pattern: l,
                    negated: n,
                },
            ) => negated == n && Arc::ptr_eq(list, l) && expr.is_clone_of(e),
            (E::Kernel { call, args }, E::Kernel { call: c, args: a }) => {
                Arc::ptr_eq(call, c) && all(args, a)
            }
            _ => false,
        }
    }

    /// The kernel calls in the expression.
    pub fn kernel_calls(&self) -> Vec<Arc<dyn KernelFn>> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let PhysExpr::Kernel { call, .. } = e {
                out.push(call.clone());
            }
        });
        out
    }

    /// Evaluates over `batch`.
    pub fn eval(&self, batch: &RecordBatch) -> Result<Value> {
        let arr = |array: ArrayRef| Value {
            array,
            scalar: false,
        };
        Ok(match self {
            PhysExpr::Column { name, data_type } => {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::Internal(format!("column '{name}' missing from the decoded batch"))
                })?;
                // A decimal the scan decoded as stored (Decimal64) takes the table's type.
                match (col.data_type(), data_type) {
                    (DataType::Decimal64(..), DataType::Decimal128(..)) => {
                        arr(arrow::compute::cast(col, data_type)?)
                    }
                    _ => arr(col.clone()),
                }
            }
            PhysExpr::Literal(a) => Value {
                array: a.clone(),
                scalar: true,
            },
            PhysExpr::Cast { expr, to } => {
                let v = expr.eval(batch)?;
                Value {
                    array: cast_checked(&v.array, to)?,
                    scalar: v.scalar,
                }
            }
            PhysExpr::Cmp { op, left, right } => {
                let (l, r) = (left.eval(batch)?, right.eval(batch)?);
                let (ld, rd) = (l.datum(), r.datum());
                let out = match op {
                    CmpOp::Eq => cmp::eq(&*ld, &*rd)?,
                    CmpOp::NotEq => cmp::neq(&*ld, &*rd)?,
                    CmpOp::Lt => cmp::lt(&*ld, &*rd)?,
                    CmpOp::LtEq => cmp::lt_eq(&*ld, &*rd)?,
                    CmpOp::Gt => cmp::gt(&*ld, &*rd)?,
                    CmpOp::GtEq => cmp::gt_eq(&*ld, &*rd)?,
                };
                Value {
                    array: Arc::new(out),
                    scalar: l.scalar && r.scalar,
                }
            }
            PhysExpr::Arith {
                op, left, right, ..
            } => {
                let (l, r) = (left.eval(batch)?, right.eval(batch)?);
                let (ld, rd) = (l.datum(), r.datum());
                let out = match op {
                    ArithOp::Add => numeric::add(&*ld, &*rd),
                    ArithOp::Sub => numeric::sub(&*ld, &*rd),
                    ArithOp::Mul => numeric::mul(&*ld, &*rd),
                    ArithOp::Div => numeric::div(&*ld, &*rd),
                }
                .map_err(|e| Error::TypeMismatch(format!("arithmetic failed: {e}")))?;
                Value {
                    array: out,
                    scalar: l.scalar && r.scalar,
                }
            }
            PhysExpr::And(v) | PhysExpr::Or(v) => {
                let is_and = matches!(self, PhysExpr::And(_));
                let mut acc: Option<BooleanArray> = None;
                for e in v {
                    let b = as_bool(e.eval(batch)?.into_array(batch.num_rows())?)?;
                    acc = Some(match acc {
                        None => b,
                        Some(a) if is_and => boolean::and_kleene(&a, &b)?,
                        Some(a) => boolean::or_kleene(&a, &b)?,
                    });
                }
                let out = acc.unwrap_or_else(|| BooleanArray::from(vec![is_and; batch.num_rows()]));
                arr(Arc::new(out))
            }
            PhysExpr::Not(e) => {
                let b = as_bool(e.eval(batch)?.into_array(batch.num_rows())?)?;
                arr(Arc::new(boolean::not(&b)?))
            }
            PhysExpr::IsNull(e) => {
                let a = e.eval(batch)?.into_array(batch.num_rows())?;
                arr(Arc::new(arrow::compute::is_null(&a)?))
            }
            PhysExpr::IsNotNull(e) => {
                let a = e.eval(batch)?.into_array(batch.num_rows())?;
                arr(Arc::new(arrow::compute::is_not_null(&a)?))
            }
            PhysExpr::InList {
                expr,
                list,
                negated,
            } => {
                let v = expr.eval(batch)?.into_array(batch.num_rows())?;
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for i in 0..list.len() {
                    let item = Scalar::new(list.slice(i, 1));
                    let eq = cmp::eq(&v, &item)?;
                    acc = boolean::or_kleene(&acc, &eq)?;
                }
                if *negated {
                    acc = boolean::not(&acc)?;
                }
                arr(Arc::new(acc))
            }
            PhysExpr::Like {
                expr,
                pattern,
                negated,
            } => {
                let v = expr.eval(batch)?.into_array(batch.num_rows())?;
                let p = Scalar::new(pattern.clone());
                let out = if *negated {
                    arrow::compute::kernels::comparison::nlike(&v, &p)?
                } else {
                    arrow::compute::kernels::comparison::like(&v, &p)?
                };
                arr(Arc::new(out))
            }
            PhysExpr::Kernel { call, args } => {
                let cols = args
                    .iter()
                    .map(|a| a.eval(batch)?.into_array(batch.num_rows()))
                    .collect::<Result<Vec<_>>>()?;
                arr(call.eval(batch.num_rows(), &cols)?)
            }
        })
    }

    /// Evaluates a predicate to a selection: true keeps the row, false and null drop it.
    pub fn eval_predicate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let b = as_bool(self.eval(batch)?.into_array(batch.num_rows())?)?;
        Ok(match b.nulls() {
            Some(_) => arrow::compute::prep_null_mask_filter(&b),
            None => b,
        })
    }
}

fn as_bool(a: ArrayRef) -> Result<BooleanArray> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| Error::TypeMismatch(format!("expected a boolean, got {}", a.data_type())))
}

pub(crate) fn cast_checked(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(a, to, &opts)
        .map_err(|e| Error::TypeMismatch(format!("cannot convert {} to {to}: {e}", a.data_type())))
}
