//! Translating DataFusion expressions into the plan IR ([`to_plan_expr`]): only what the
//! device computes exactly as DataFusion would; anything else stays on the host.

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::{ArithOp, CmpOp, Expr, Literal, TypedLiteral};

use super::udf::kernel_udf;

/// The AND of pushed filters: `None` for none, the filter itself for one.
pub(super) fn conjunction(mut filters: Vec<Expr>) -> Option<Expr> {
    match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Expr::And(filters)),
    }
}

/// Translates a DataFusion expression into the plan IR; `None` when the device cannot
/// evaluate it with DataFusion's semantics. `schema` types the columns the expression reads;
/// column qualifiers are ignored (the expression reads one table).
pub fn to_plan_expr(e: &DfExpr, schema: &DFSchema) -> Option<Expr> {
    let e = datafusion::logical_expr::expr_rewriter::unnormalize_col(e.clone());
    translate(&e, schema)
}

fn translate(e: &DfExpr, schema: &DFSchema) -> Option<Expr> {
    use datafusion::logical_expr::expr::InList;
    use datafusion::logical_expr::{Between, BinaryExpr, Like};
    let tr = |e: &DfExpr| translate(e, schema);
    Some(match e {
        DfExpr::Column(c) => Expr::Col(c.name.clone()),
        DfExpr::Literal(v, _) => Expr::Lit(to_literal(v)?),
        DfExpr::ScalarFunction(f) => kernel_call(f)?,
        DfExpr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (l, r) = (tr(left)?, tr(right)?);
            let cmp = |op| Expr::cmp(op, l.clone(), r.clone());
            let arith = |op| {
                arithmetic_is_faithful(op, left, right, schema)
                    .then(|| Expr::arith(op, l.clone(), r.clone()))
            };
            match op {
                Operator::Eq => cmp(CmpOp::Eq),
                Operator::NotEq => cmp(CmpOp::NotEq),
                Operator::Lt => cmp(CmpOp::Lt),
                Operator::LtEq => cmp(CmpOp::LtEq),
                Operator::Gt => cmp(CmpOp::Gt),
                Operator::GtEq => cmp(CmpOp::GtEq),
                Operator::And => Expr::And(vec![l, r]),
                Operator::Or => Expr::Or(vec![l, r]),
                Operator::Plus => arith(ArithOp::Add)?,
                Operator::Minus => arith(ArithOp::Sub)?,
                Operator::Multiply => arith(ArithOp::Mul)?,
                Operator::Divide => arith(ArithOp::Div)?,
                _ => return None,
            }
        }
        DfExpr::Not(inner) => Expr::Not(Box::new(tr(inner)?)),
        DfExpr::IsNull(inner) => Expr::IsNull(Box::new(tr(inner)?)),
        DfExpr::IsNotNull(inner) => Expr::IsNotNull(Box::new(tr(inner)?)),
        DfExpr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => Expr::Between {
            expr: Box::new(tr(expr)?),
            low: Box::new(tr(low)?),
            high: Box::new(tr(high)?),
            negated: *negated,
        },
        DfExpr::InList(InList {
            expr,
            list,
            negated,
        }) => Expr::In {
            expr: Box::new(tr(expr)?),
            list: list
                .iter()
                .map(|l| match l {
                    DfExpr::Literal(v, _) => to_literal(v),
                    _ => None,
                })
                .collect::<Option<_>>()?,
            negated: *negated,
        },
        DfExpr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
        }) => match &**pattern {
            DfExpr::Literal(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p)), _) => {
                Expr::Like {
                    expr: Box::new(tr(expr)?),
                    pattern: p.clone(),
                    negated: *negated,
                }
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// Whether the device computes `left op right` with DataFusion's result. The operands carry
/// DataFusion's coerced types, and the device's arithmetic agrees with it for
/// - floats: the same IEEE operations;
/// - decimals, `+ - *`: exact in both (the device may widen the scale; the value is the same);
///
/// and disagrees for
/// - decimal division, whose result scale follows the dividend's scale: DataFusion keeps
///   each operand's own type (`100 / l_quantity` divides a scale-0 value), the device first
///   converts a literal or a narrower operand to the other side's type (scale 2), so the
///   quotients are truncated at different scales;
/// - integer `+ - *`: DataFusion wraps on overflow, the device fails the query;
/// - dates, intervals and anything else that is not a number: the device's arithmetic is
///   numeric only.
///
/// Integer division agrees (truncating; both fail on division by zero).
fn arithmetic_is_faithful(op: ArithOp, left: &DfExpr, right: &DfExpr, schema: &DFSchema) -> bool {
    use arrow::datatypes::DataType;
    use datafusion::logical_expr::ExprSchemable;
    let (Ok(l), Ok(r)) = (left.get_type(schema), right.get_type(schema)) else {
        return false;
    };
    let decimal = |t: &DataType| matches!(t, DataType::Decimal128(..));
    if l.is_floating() && r.is_floating() {
        true
    } else if decimal(&l) && decimal(&r) {
        op != ArithOp::Div
    } else if l.is_integer() && r.is_integer() {
        op == ArithOp::Div
    } else {
        false
    }
}

fn to_literal(v: &ScalarValue) -> Option<Literal> {
    if v.is_null() {
        return Some(Literal::Null);
    }
    Some(match v {
        ScalarValue::Boolean(Some(b)) => Literal::Bool(*b),
        ScalarValue::Int8(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int16(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int32(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int64(Some(i)) => Literal::Int(*i),
        ScalarValue::UInt8(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::UInt16(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::UInt32(Some(i)) => Literal::Int(*i as i64),
        // The plan travels as JSON, which has no NaN or infinity (they would arrive as NULL).
        ScalarValue::Float64(Some(f)) if f.is_finite() => Literal::Float(*f),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Literal::Str(s.clone()),
        ScalarValue::Date32(Some(_)) => Literal::Typed(TypedLiteral::Date(v.to_string())),
        ScalarValue::Decimal128(Some(x), _, s) => {
            Literal::Typed(TypedLiteral::Decimal(decimal_text(*x, *s)?))
        }
        _ => return None,
    })
}

fn decimal_text(v: i128, scale: i8) -> Option<String> {
    if scale < 0 {
        return None;
    }
    let s = scale as u32;
    let neg = v < 0;
    let a = v.unsigned_abs();
    let p = 10u128.pow(s);
    let text = if s == 0 {
        format!("{a}")
    } else {
        format!("{}.{:0width$}", a / p, a % p, width = s as usize)
    };
    Some(if neg { format!("-{text}") } else { text })
}

/// A call of a registered kernel (`grep(l_comment, 'special')`): columns, then optionally one
/// string literal, the parameters.
fn kernel_call(f: &datafusion::logical_expr::expr::ScalarFunction) -> Option<Expr> {
    let k = kernel_udf(f)?;
    let (args, params) = kernel_args(&f.args)?;
    Some(Expr::Kernel {
        name: k.name.clone(),
        args,
        params,
    })
}

/// A kernel call's arguments: columns, then optionally one string literal (the parameters).
pub(super) fn kernel_args(call_args: &[DfExpr]) -> Option<(Vec<String>, String)> {
    let mut args = Vec::new();
    let mut params = None;
    for (i, a) in call_args.iter().enumerate() {
        match a {
            DfExpr::Column(c) if params.is_none() => args.push(c.name.clone()),
            DfExpr::Literal(
                ScalarValue::Utf8(Some(p))
                | ScalarValue::Utf8View(Some(p))
                | ScalarValue::LargeUtf8(Some(p)),
                _,
            ) if i + 1 == call_args.len() => params = Some(p.clone()),
            _ => return None,
        }
    }
    Some((args, params.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{col, lit};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, true),
            Field::new("q", DataType::Decimal128(15, 2), true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Date32, true),
        ]))
        .unwrap()
    }

    fn dec(v: i128, p: u8, s: i8) -> DfExpr {
        DfExpr::Literal(ScalarValue::Decimal128(Some(v), p, s), None)
    }

    #[test]
    fn translates_what_the_device_runs() {
        let s = schema();
        let e = col("a")
            .lt(lit(24i64))
            .and(col("b").between(lit(1i32), lit(5i32)));
        let p = to_plan_expr(&e, &s).unwrap();
        assert_eq!(p.to_string(), "((a < 24) AND (b BETWEEN 1 AND 5))");
        let d = dec(-5, 15, 2);
        assert_eq!(
            to_plan_expr(&d, &s).unwrap(),
            Expr::Lit(Literal::Typed(TypedLiteral::Decimal("-0.05".into())))
        );
        let date = DfExpr::Literal(ScalarValue::Date32(Some(8766)), None);
        assert_eq!(
            to_plan_expr(&date, &s).unwrap().to_string(),
            "DATE '1994-01-01'"
        );
        // Qualified columns (as DataFusion pushes them) read the same table.
        let q = DfExpr::Column(datafusion::common::Column::new(Some("t"), "a")).gt(lit(1i64));
        assert_eq!(to_plan_expr(&q, &s).unwrap().to_string(), "(a > 1)");
        // A cast of a column is not something the device evaluates.
        let cast = datafusion::logical_expr::cast(col("a"), DataType::Float64);
        assert!(to_plan_expr(&cast.gt(lit(1.0)), &s).is_none());
    }

    #[test]
    fn arithmetic_is_pushed_only_where_the_device_agrees() {
        let s = schema();
        let pushed = |e: DfExpr| to_plan_expr(&e.gt(lit(1i64)), &s).is_some();
        // Floats: the same IEEE operations.
        for e in [
            col("f") + lit(1.0),
            col("f") - lit(1.0),
            col("f") * lit(2.0),
            col("f") / lit(3.0),
        ] {
            assert!(pushed(e.clone()), "{e}");
        }
        // Decimal + - * are exact on both sides.
        assert!(pushed(dec(100, 20, 0) - col("q")));
        assert!(pushed(col("q") * col("q")));
        // Decimal division truncates at the dividend's scale, which the device changes.
        assert!(!pushed(dec(100, 20, 0) / col("q")));
        assert!(!pushed(col("q") / dec(3, 20, 0)));
        // Integer division agrees; + - * overflow differently (wrap on the host, error on
        // the device).
        assert!(pushed(col("a") / lit(7i64)));
        assert!(!pushed(col("a") * lit(4_611_686_018_427_387_904i64)));
        assert!(!pushed(col("a") + lit(1i64)));
        assert!(!pushed(col("a") - lit(1i64)));
        // Date arithmetic is not numeric: the device would reject it.
        let days = DfExpr::Literal(ScalarValue::Date32(Some(9131)), None);
        assert!(!pushed(col("d") - days));
    }

    #[test]
    fn non_finite_floats_stay_on_the_host() {
        // JSON carries no NaN or infinity: pushed, they would arrive as NULL.
        let s = schema();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(to_plan_expr(&col("f").lt(lit(v)), &s).is_none(), "{v}");
        }
        assert!(to_plan_expr(&col("f").lt(lit(-0.0)), &s).is_some());
    }
}
