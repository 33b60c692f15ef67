//! Bound (typed) expressions: plan expressions resolved against a table's schema, with literals
//! coerced to the types they meet, and their native evaluation with Arrow kernels (SQL
//! three-valued logic throughout).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Datum, Float64Array, Int64Array, NullArray, Scalar,
    StringArray, UInt32Array, new_empty_array, new_null_array,
};
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use nearstore_proto::{ArithOp, CmpOp, Expr, Literal, TypedLiteral};

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
        call: Arc<super::kernel_call::KernelCall>,
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
    pub fn kernel_calls(&self) -> Vec<Arc<super::kernel_call::KernelCall>> {
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
            PhysExpr::Column { name, .. } => {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::Internal(format!("column '{name}' missing from the decoded batch"))
                })?;
                arr(col.clone())
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

fn cast_checked(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(a, to, &opts)
        .map_err(|e| Error::TypeMismatch(format!("cannot convert {} to {to}: {e}", a.data_type())))
}

/// Binds plan expressions to one table's schema.
pub struct Binder<'a> {
    table: &'a str,
    schema: &'a Schema,
    kernels: Option<KernelResolver<'a>>,
}

impl std::fmt::Debug for Binder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder")
            .field("table", &self.table)
            .field("kernels", &self.kernels.is_some())
            .finish()
    }
}

/// Finds a registered kernel by name: its compiled program and the sandbox that runs it.
pub type KernelResolver<'a> = &'a (
        dyn Fn(
    &str,
) -> Result<(
    Arc<crate::compute::wasm::Program>,
    Arc<crate::compute::wasm::Sandbox>,
)> + Sync
    );

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

fn is_numeric(t: &DataType) -> bool {
    t.is_integer()
        || t.is_floating()
        || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    )
}

/// The type both numeric operands are converted to.
fn common_numeric(a: &DataType, b: &DataType) -> DataType {
    match (a, b) {
        _ if a.is_floating() || b.is_floating() => DataType::Float64,
        (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) => {
            let s = (*s1).max(*s2);
            let int_digits = (*p1 as i8 - *s1).max(*p2 as i8 - *s2);
            DataType::Decimal128(((int_digits + s) as u8).min(38), s)
        }
        (DataType::Decimal128(p, s), i) | (i, DataType::Decimal128(p, s)) if is_integer(i) => {
            let int_digits = (*p as i8 - *s).max(19);
            DataType::Decimal128(((int_digits + *s) as u8).min(38), *s)
        }
        _ if a.is_unsigned_integer() && b.is_unsigned_integer() => DataType::UInt64,
        _ => DataType::Int64,
    }
}

impl<'a> Binder<'a> {
    /// A binder for `table` with `schema`.
    pub fn new(table: &'a str, schema: &'a Schema) -> Self {
        Binder {
            table,
            schema,
            kernels: None,
        }
    }

    /// Lets the plan call registered kernels, found by `resolver`.
    pub fn with_kernels(mut self, resolver: KernelResolver<'a>) -> Self {
        self.kernels = Some(resolver);
        self
    }

    /// The column's type, or an unknown-column error listing what exists.
    pub fn column(&self, name: &str) -> Result<PhysExpr> {
        match self.schema.field_with_name(name) {
            Ok(f) => Ok(PhysExpr::Column {
                name: name.to_string(),
                data_type: f.data_type().clone(),
            }),
            Err(_) => Err(Error::UnknownColumn {
                table: self.table.to_string(),
                column: name.to_string(),
                available: self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Binds a value expression.
    pub fn bind(&self, expr: &Expr) -> Result<PhysExpr> {
        Ok(match expr {
            Expr::Col(c) => self.column(c)?,
            Expr::Lit(l) => PhysExpr::Literal(literal_array(l)?),
            Expr::Cmp { op, left, right } => {
                let (l, r) = self.unify(self.bind(left)?, self.bind(right)?, op.as_str())?;
                PhysExpr::Cmp {
                    op: *op,
                    left: Box::new(l),
                    right: Box::new(r),
                }
            }
            Expr::Arith { op, left, right } => {
                let (l, r) = (self.bind(left)?, self.bind(right)?);
                for side in [&l, &r] {
                    let t = side.data_type();
                    if !is_numeric(&t) && t != DataType::Null {
                        return Err(Error::TypeMismatch(format!(
                            "arithmetic needs numbers, got {t} in {expr}"
                        )));
                    }
                }
                let (l, r) = self.unify(l, r, "arithmetic")?;
                let data_type = arith_type(*op, &l.data_type(), &r.data_type())?;
                PhysExpr::Arith {
                    op: *op,
                    left: Box::new(l),
                    right: Box::new(r),
                    data_type,
                }
            }
            Expr::And(v) => {
                PhysExpr::And(v.iter().map(|e| self.bind_bool(e)).collect::<Result<_>>()?)
            }
            Expr::Or(v) => {
                PhysExpr::Or(v.iter().map(|e| self.bind_bool(e)).collect::<Result<_>>()?)
            }
            Expr::Not(e) => PhysExpr::Not(Box::new(self.bind_bool(e)?)),
            Expr::IsNull(e) => PhysExpr::IsNull(Box::new(self.bind(e)?)),
            Expr::IsNotNull(e) => PhysExpr::IsNotNull(Box::new(self.bind(e)?)),
            Expr::Between {
                expr: e,
                low,
                high,
                negated,
            } => {
                let ge = self.bind(&Expr::cmp(CmpOp::GtEq, (**e).clone(), (**low).clone()))?;
                let le = self.bind(&Expr::cmp(CmpOp::LtEq, (**e).clone(), (**high).clone()))?;
                let both = PhysExpr::And(vec![ge, le]);
                if *negated {
                    PhysExpr::Not(Box::new(both))
                } else {
                    both
                }
            }
            Expr::In {
                expr: e,
                list,
                negated,
            } => {
                let v = self.bind(e)?;
                let t = v.data_type();
                let items = list
                    .iter()
                    .map(|l| {
                        coerce_literal(l, &t)
                            .map_err(|m| Error::TypeMismatch(format!("IN list: {m}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&dyn Array> = items.iter().map(|a| a.as_ref()).collect();
                let list = if refs.is_empty() {
                    new_empty_array(&t)
                } else {
                    arrow::compute::concat(&refs)?
                };
                PhysExpr::InList {
                    expr: Box::new(v),
                    list,
                    negated: *negated,
                }
            }
            Expr::Like {
                expr: e,
                pattern,
                negated,
            } => {
                let v = self.bind(e)?;
                let t = v.data_type();
                if !is_string(&t) {
                    return Err(Error::TypeMismatch(format!(
                        "LIKE needs a string, got {t} in {expr}"
                    )));
                }
                let p: ArrayRef = Arc::new(StringArray::from(vec![pattern.as_str()]));
                PhysExpr::Like {
                    expr: Box::new(v),
                    pattern: cast_checked(&p, &t)?,
                    negated: *negated,
                }
            }
            Expr::Kernel { .. } => {
                let k = self.bind_kernel(expr)?;
                if let PhysExpr::Kernel { call, .. } = &k
                    && call.kind() == crate::compute::wasm::sandbox::KernelKind::Aggregate
                {
                    return Err(Error::TypeMismatch(format!(
                        "kernel '{}' is an aggregate kernel: call it as an aggregate \
                         ({{\"func\": \"kernel\", \"expr\": {{\"kernel\": …}}}}), not in an expression",
                        call.name
                    )));
                }
                k
            }
        })
    }

    /// Binds a kernel call of any kind (the aggregate binder takes aggregate kernels).
    pub fn bind_kernel(&self, expr: &Expr) -> Result<PhysExpr> {
        Ok(match expr {
            Expr::Kernel { name, args, params } => {
                let resolve = self.kernels.ok_or_else(|| {
                    Error::Unsupported(format!("kernel '{name}' can only run on a device"))
                })?;
                let cols = args
                    .iter()
                    .map(|a| self.column(a))
                    .collect::<Result<Vec<_>>>()?;
                for (a, c) in args.iter().zip(&cols) {
                    let t = c.data_type();
                    if super::kernel_call::arg_type(&t).is_none() {
                        return Err(Error::TypeMismatch(format!(
                            "kernel '{name}': column {a} is {t}; kernels take int32, int64, \
                             float64, decimal128, date32 and utf8 columns"
                        )));
                    }
                }
                let (program, sandbox) = resolve(name)?;
                PhysExpr::Kernel {
                    call: Arc::new(super::kernel_call::KernelCall::new(
                        name, program, sandbox, params,
                    )),
                    args: cols,
                }
            }
            other => {
                return Err(Error::MalformedPlan(format!(
                    "expected a kernel call, got {other}"
                )));
            }
        })
    }

    /// Binds an expression that must be boolean (a predicate).
    pub fn bind_bool(&self, expr: &Expr) -> Result<PhysExpr> {
        let e = self.bind(expr)?;
        match e.data_type() {
            DataType::Boolean => Ok(e),
            DataType::Null => Ok(PhysExpr::Cast {
                expr: Box::new(e),
                to: DataType::Boolean,
            }),
            t => Err(Error::TypeMismatch(format!(
                "expected a boolean condition, got {t} in {expr}"
            ))),
        }
    }

    /// Makes two operands the same type: literals adopt the other side's type when they can
    /// exactly; otherwise both are converted to a common type.
    fn unify(&self, l: PhysExpr, r: PhysExpr, what: &str) -> Result<(PhysExpr, PhysExpr)> {
        let (lt, rt) = (l.data_type(), r.data_type());
        if lt == rt {
            return Ok((l, r));
        }
        // A literal meeting a non-literal adopts its type when exact.
        if let PhysExpr::Literal(a) = &r
            && let Some(c) = retype_literal(a, &lt, &l, what)?
        {
            return Ok((l, PhysExpr::Literal(c)));
        }
        if let PhysExpr::Literal(a) = &l
            && let Some(c) = retype_literal(a, &rt, &r, what)?
        {
            return Ok((PhysExpr::Literal(c), r));
        }
        let common = if lt == DataType::Null {
            rt.clone()
        } else if rt == DataType::Null {
            lt.clone()
        } else if is_numeric(&lt) && is_numeric(&rt) {
            common_numeric(&lt, &rt)
        } else if is_string(&lt) && is_string(&rt) {
            DataType::Utf8
        } else if is_temporal(&lt) && is_temporal(&rt) {
            DataType::Date64
        } else {
            return Err(Error::TypeMismatch(format!(
                "cannot compare {} ({lt}) with {} ({rt})",
                describe(&l),
                describe(&r)
            )));
        };
        let conv = |e: PhysExpr| -> Result<PhysExpr> {
            if e.data_type() == common {
                return Ok(e);
            }
            if let PhysExpr::Literal(a) = &e {
                return Ok(PhysExpr::Literal(cast_checked(a, &common)?));
            }
            Ok(PhysExpr::Cast {
                expr: Box::new(e),
                to: common.clone(),
            })
        };
        Ok((conv(l)?, conv(r)?))
    }
}

fn describe(e: &PhysExpr) -> String {
    match e {
        PhysExpr::Column { name, .. } => format!("column {name}"),
        PhysExpr::Literal(a) => {
            let shown = arrow::util::display::array_value_to_string(a, 0).unwrap_or_default();
            if is_string(a.data_type()) {
                format!("literal '{shown}'")
            } else {
                format!("literal {shown}")
            }
        }
        _ => "expression".to_string(),
    }
}

/// Converts literal `a` to `target` (the type of `other`) when that is exact. `Ok(None)` means
/// "not exactly, but a common type may do"; an error means the kinds cannot meet at all.
fn retype_literal(
    a: &ArrayRef,
    target: &DataType,
    other: &PhysExpr,
    what: &str,
) -> Result<Option<ArrayRef>> {
    let from = a.data_type();
    if *from == DataType::Null {
        return Ok(Some(new_null_array(target, 1)));
    }
    let compatible = (is_numeric(from) && is_numeric(target))
        || (is_string(from) && (is_string(target) || is_temporal(target)))
        || (is_temporal(from) && is_temporal(target))
        || (*from == DataType::Boolean && *target == DataType::Boolean);
    if !compatible {
        return Err(Error::TypeMismatch(format!(
            "cannot use {} ({from}) with {} ({target}) in {what}",
            describe(&PhysExpr::Literal(a.clone())),
            describe(other)
        )));
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let Ok(c) = cast_with_options(a, target, &opts) else {
        if is_string(from) && is_temporal(target) {
            return Err(Error::TypeMismatch(format!(
                "{} is not a valid {target} for {}",
                describe(&PhysExpr::Literal(a.clone())),
                describe(other)
            )));
        }
        return Ok(None);
    };
    // Exact only if converting back gives the same value.
    match cast_with_options(&c, from, &opts) {
        Ok(back) if back.as_ref() == a.as_ref() => Ok(Some(c)),
        _ if is_string(from) && is_temporal(target) => Ok(Some(c)),
        _ => Ok(None),
    }
}

fn arith_type(op: ArithOp, l: &DataType, r: &DataType) -> Result<DataType> {
    let (a, b) = (new_empty_array(l), new_empty_array(r));
    let out = match op {
        ArithOp::Add => numeric::add(&a, &b),
        ArithOp::Sub => numeric::sub(&a, &b),
        ArithOp::Mul => numeric::mul(&a, &b),
        ArithOp::Div => numeric::div(&a, &b),
    }
    .map_err(|e| Error::TypeMismatch(format!("cannot apply arithmetic to {l} and {r}: {e}")))?;
    Ok(out.data_type().clone())
}

/// The natural one-element array of a literal.
pub fn literal_array(l: &Literal) -> Result<ArrayRef> {
    Ok(match l {
        Literal::Null => Arc::new(NullArray::new(1)),
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int(i) => Arc::new(Int64Array::from(vec![*i])),
        Literal::Float(f) => Arc::new(Float64Array::from(vec![*f])),
        Literal::Str(s) => Arc::new(StringArray::from(vec![s.as_str()])),
        Literal::Typed(TypedLiteral::Date(d)) => {
            let days = parse_date(d).ok_or_else(|| {
                Error::TypeMismatch(format!("'{d}' is not a date (expected YYYY-MM-DD)"))
            })?;
            Arc::new(Date32Array::from(vec![days]))
        }
        Literal::Typed(TypedLiteral::Decimal(s)) => decimal_literal(s)?,
    })
}

fn parse_date(s: &str) -> Option<i32> {
    let a: ArrayRef = Arc::new(StringArray::from(vec![s]));
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let d = cast_with_options(&a, &DataType::Date32, &opts).ok()?;
    let d = d.as_any().downcast_ref::<Date32Array>()?;
    d.is_valid(0).then(|| d.value(0))
}

fn decimal_literal(s: &str) -> Result<ArrayRef> {
    let bad = || Error::TypeMismatch(format!("'{s}' is not a decimal number"));
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let all: String = format!("{int_part}{frac_part}");
    let trimmed = all.trim_start_matches('0');
    let precision = trimmed.len().max(frac_part.len()).max(1);
    if precision > 38 {
        return Err(Error::TypeMismatch(format!(
            "decimal '{s}' has more than 38 digits"
        )));
    }
    let mut v: i128 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().map_err(|_| bad())?
    };
    if neg {
        v = -v;
    }
    let arr = arrow::array::Decimal128Array::from(vec![v])
        .with_precision_and_scale(precision as u8, frac_part.len() as i8)?;
    Ok(Arc::new(arr))
}

/// Converts a literal to `target`, exactly, for IN lists.
fn coerce_literal(l: &Literal, target: &DataType) -> std::result::Result<ArrayRef, String> {
    let a = literal_array(l).map_err(|e| e.to_string())?;
    let probe = PhysExpr::Column {
        name: "value".into(),
        data_type: target.clone(),
    };
    match retype_literal(&a, target, &probe, "IN") {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(format!("{l} cannot be represented exactly as {target}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> RecordBatch {
        let price = arrow::array::Decimal128Array::from(vec![Some(1000), Some(2550), None])
            .with_precision_and_scale(15, 2)
            .unwrap();
        RecordBatch::try_from_iter(vec![
            (
                "q",
                Arc::new(Int64Array::from(vec![Some(1), Some(30), None])) as ArrayRef,
            ),
            ("p", Arc::new(price) as ArrayRef),
            (
                "s",
                Arc::new(StringArray::from(vec!["apple", "banana", "cherry"])) as ArrayRef,
            ),
            (
                "d",
                Arc::new(Date32Array::from(vec![8766, 9000, 9131])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn run(text: &str) -> Result<Vec<bool>> {
        let b = batch();
        let schema = b.schema();
        let e = Binder::new("t", &schema).bind_bool(&Expr::parse(text).unwrap())?;
        Ok(e.eval_predicate(&b)?.iter().map(|v| v.unwrap()).collect())
    }

    #[test]
    fn sql_semantics_and_coercions() {
        assert_eq!(run("q < 24").unwrap(), vec![true, false, false]);
        assert_eq!(run("NOT q < 24").unwrap(), vec![false, true, false]);
        assert_eq!(
            run("q IS NULL OR p = 25.5").unwrap(),
            vec![false, true, true]
        );
        assert_eq!(
            run("p BETWEEN 10 AND 20").unwrap(),
            vec![true, false, false]
        );
        assert_eq!(run("p > 10.001").unwrap(), vec![false, true, false]);
        assert_eq!(
            run("s LIKE 'b%' OR s IN ('cherry')").unwrap(),
            vec![false, true, true]
        );
        assert_eq!(
            run("d >= DATE '1994-01-01' AND d < '1995-01-01'").unwrap(),
            vec![true, true, false]
        );
        assert_eq!(run("q * 2 + 1 = 61").unwrap(), vec![false, true, false]);
        assert_eq!(
            run("q NOT IN (1, NULL)").unwrap(),
            vec![false, false, false]
        );
    }

    #[test]
    fn specific_errors() {
        let e = run("nope < 1").unwrap_err();
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e}");
        assert!(e.to_string().contains("columns: q, p, s, d"), "{e}");
        let e = run("q < 'abc'").unwrap_err();
        assert!(matches!(e, Error::TypeMismatch(_)), "{e}");
        assert!(e.to_string().contains("'abc'"), "{e}");
        let e = run("d < 'not a date'").unwrap_err();
        assert!(matches!(e, Error::TypeMismatch(_)), "{e}");
        let e = run("s + 1 > 2").unwrap_err();
        assert!(matches!(e, Error::TypeMismatch(_)), "{e}");
        let e = run("q").unwrap_err();
        assert!(e.to_string().contains("boolean"), "{e}");
    }
}
