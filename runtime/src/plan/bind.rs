//! Binding: plan expressions resolved against a table's schema (unknown columns, type
//! mismatches and bad literals are errors here, before any I/O), with literals coerced to the
//! types they meet.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, NullArray, StringArray,
    new_empty_array, new_null_array,
};
use arrow::compute::kernels::numeric;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use nearstore_proto::{ArithOp, CmpOp, Expr, Literal, TypedLiteral};

use super::expr::{PhysExpr, cast_checked};
use super::kernel::{KernelKind, KernelResolver, arg_type};
use crate::error::{Error, Result};

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
                    && call.kind() == KernelKind::Aggregate
                {
                    return Err(Error::TypeMismatch(format!(
                        "kernel '{}' is an aggregate kernel: call it as an aggregate \
                         ({{\"func\": \"kernel\", \"expr\": {{\"kernel\": …}}}}), not in an expression",
                        call.name()
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
                    if arg_type(&t).is_none() {
                        return Err(Error::TypeMismatch(format!(
                            "kernel '{name}': column {a} is {t}; kernels take int32, int64, \
                             float64, decimal128, date32 and utf8 columns"
                        )));
                    }
                }
                PhysExpr::Kernel {
                    call: resolve(name, params)?,
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
    use arrow::record_batch::RecordBatch;

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
