//! Scalar expressions of the plan, and a parser for their SQL-like text form
//! (`l_quantity < 24 AND l_shipdate >= DATE '1994-01-01'`).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Deepest expression tree accepted: bounds recursion on the device.
pub const EXPR_DEPTH_MAX: usize = 64;

/// A scalar expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// A column of the table.
    Col(String),
    /// A literal value.
    Lit(Literal),
    /// A comparison.
    Cmp {
        /// Operator.
        op: CmpOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// Arithmetic.
    Arith {
        /// Operator.
        op: ArithOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// Conjunction of all operands.
    And(Vec<Expr>),
    /// Disjunction of all operands.
    Or(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
    /// `expr [NOT] BETWEEN low AND high` (inclusive).
    Between {
        /// Tested value.
        expr: Box<Expr>,
        /// Lower bound.
        low: Box<Expr>,
        /// Upper bound.
        high: Box<Expr>,
        /// `NOT BETWEEN`.
        #[serde(default)]
        negated: bool,
    },
    /// `expr [NOT] IN (list)`.
    In {
        /// Tested value.
        expr: Box<Expr>,
        /// Candidate literals.
        list: Vec<Literal>,
        /// `NOT IN`.
        #[serde(default)]
        negated: bool,
    },
    /// `expr IS NULL`.
    IsNull(Box<Expr>),
    /// `expr IS NOT NULL`.
    IsNotNull(Box<Expr>),
    /// `expr [NOT] LIKE pattern` with `%` and `_` wildcards.
    Like {
        /// Tested string.
        expr: Box<Expr>,
        /// Pattern.
        pattern: String,
        /// `NOT LIKE`.
        #[serde(default)]
        negated: bool,
    },
    /// A registered filter kernel over columns: true for the rows it selects.
    Kernel {
        /// The kernel's registered name.
        name: String,
        /// Columns handed to the kernel, in order.
        args: Vec<String>,
        /// Parameters handed to the kernel as bytes (text: a pattern, numbers, JSON).
        #[serde(default)]
        params: String,
    },
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    NotEq,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    LtEq,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    GtEq,
}

impl CmpOp {
    /// The operator with its operands swapped (`a < b` is `b > a`).
    pub fn flip(self) -> Self {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::NotEq => CmpOp::NotEq,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::LtEq => CmpOp::GtEq,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::GtEq => CmpOp::LtEq,
        }
    }

    /// SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::NotEq => "!=",
            CmpOp::Lt => "<",
            CmpOp::LtEq => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtEq => ">=",
        }
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArithOp {
    /// `+`
    #[serde(rename = "+")]
    Add,
    /// `-`
    #[serde(rename = "-")]
    Sub,
    /// `*`
    #[serde(rename = "*")]
    Mul,
    /// `/`
    #[serde(rename = "/")]
    Div,
}

/// A literal. Plain JSON values map to the obvious types; dates and exact decimals are tagged:
/// `{"date": "1994-01-01"}`, `{"decimal": "0.06"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// String.
    Str(String),
    /// Tagged literal.
    Typed(TypedLiteral),
}

/// Literals whose type a plain JSON value cannot carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypedLiteral {
    /// A calendar date, `YYYY-MM-DD`.
    Date(String),
    /// An exact decimal number in text form, e.g. `"0.06"`.
    Decimal(String),
}

impl std::fmt::Display for Literal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Null => write!(f, "NULL"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Typed(TypedLiteral::Date(d)) => write!(f, "DATE '{d}'"),
            Literal::Typed(TypedLiteral::Decimal(d)) => write!(f, "{d}"),
        }
    }
}

impl Expr {
    /// A column reference.
    pub fn col(name: impl Into<String>) -> Self {
        Expr::Col(name.into())
    }

    /// A literal.
    pub fn lit(value: Literal) -> Self {
        Expr::Lit(value)
    }

    /// A comparison.
    pub fn cmp(op: CmpOp, left: Expr, right: Expr) -> Self {
        Expr::Cmp {
            op,
            left: Box::new(left),
            right: Box::new(right),
        }
    }

    /// Arithmetic.
    pub fn arith(op: ArithOp, left: Expr, right: Expr) -> Self {
        Expr::Arith {
            op,
            left: Box::new(left),
            right: Box::new(right),
        }
    }

    /// Columns this expression reads, in first-use order, without duplicates.
    pub fn columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit_columns(&mut |c| {
            if !out.iter().any(|o: &String| o == c) {
                out.push(c.to_string());
            }
        });
        out
    }

    fn visit_columns(&self, f: &mut dyn FnMut(&str)) {
        match self {
            Expr::Col(c) => f(c),
            Expr::Lit(_) => {}
            Expr::Cmp { left, right, .. } | Expr::Arith { left, right, .. } => {
                left.visit_columns(f);
                right.visit_columns(f);
            }
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.visit_columns(f)),
            Expr::Not(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => e.visit_columns(f),
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.visit_columns(f);
                low.visit_columns(f);
                high.visit_columns(f);
            }
            Expr::In { expr, .. } | Expr::Like { expr, .. } => expr.visit_columns(f),
            Expr::Kernel { args, .. } => args.iter().for_each(|a| f(a)),
        }
    }

    /// Calls `f` on the name of every kernel the expression calls.
    pub fn visit_kernels_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        match self {
            Expr::Col(_) | Expr::Lit(_) => {}
            Expr::Cmp { left, right, .. } | Expr::Arith { left, right, .. } => {
                left.visit_kernels_mut(f);
                right.visit_kernels_mut(f);
            }
            Expr::And(v) | Expr::Or(v) => v.iter_mut().for_each(|e| e.visit_kernels_mut(f)),
            Expr::Not(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => e.visit_kernels_mut(f),
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.visit_kernels_mut(f);
                low.visit_kernels_mut(f);
                high.visit_kernels_mut(f);
            }
            Expr::In { expr, .. } | Expr::Like { expr, .. } => expr.visit_kernels_mut(f),
            Expr::Kernel { name, .. } => f(name),
        }
    }

    /// Tree depth (a leaf has depth 1).
    pub fn depth(&self) -> usize {
        1 + match self {
            Expr::Col(_) | Expr::Lit(_) => 0,
            Expr::Cmp { left, right, .. } | Expr::Arith { left, right, .. } => {
                left.depth().max(right.depth())
            }
            Expr::And(v) | Expr::Or(v) => v.iter().map(Expr::depth).max().unwrap_or(0),
            Expr::Not(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => e.depth(),
            Expr::Between {
                expr, low, high, ..
            } => expr.depth().max(low.depth()).max(high.depth()),
            Expr::In { expr, .. } | Expr::Like { expr, .. } => expr.depth(),
            Expr::Kernel { .. } => 0,
        }
    }

    /// Rejects trees deeper than [`EXPR_DEPTH_MAX`].
    pub fn check_depth(&self) -> Result<()> {
        let d = self.depth();
        if d > EXPR_DEPTH_MAX {
            return Err(Error::MalformedPlan(format!(
                "expression is {d} levels deep; the limit is {EXPR_DEPTH_MAX}"
            )));
        }
        Ok(())
    }

    /// Parses the SQL-like text form.
    pub fn parse(text: &str) -> Result<Expr> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            depth: 0,
        };
        let e = p.expr()?;
        if p.pos != p.tokens.len() {
            return Err(Error::MalformedPlan(format!(
                "unexpected '{}' in expression",
                p.tokens[p.pos].text()
            )));
        }
        e.check_depth()?;
        Ok(e)
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn join(f: &mut std::fmt::Formatter<'_>, v: &[Expr], sep: &str) -> std::fmt::Result {
            write!(f, "(")?;
            for (i, e) in v.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "{e}")?;
            }
            write!(f, ")")
        }
        match self {
            Expr::Col(c) => write!(f, "{c}"),
            Expr::Lit(l) => write!(f, "{l}"),
            Expr::Cmp { op, left, right } => write!(f, "({left} {} {right})", op.as_str()),
            Expr::Arith { op, left, right } => {
                let s = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                };
                write!(f, "({left} {s} {right})")
            }
            Expr::And(v) => join(f, v, "AND"),
            Expr::Or(v) => join(f, v, "OR"),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => write!(
                f,
                "({expr} {}BETWEEN {low} AND {high})",
                if *negated { "NOT " } else { "" }
            ),
            Expr::In {
                expr,
                list,
                negated,
            } => {
                write!(f, "({expr} {}IN (", if *negated { "NOT " } else { "" })?;
                for (i, l) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{l}")?;
                }
                write!(f, "))")
            }
            Expr::IsNull(e) => write!(f, "({e} IS NULL)"),
            Expr::IsNotNull(e) => write!(f, "({e} IS NOT NULL)"),
            Expr::Like {
                expr,
                pattern,
                negated,
            } => write!(
                f,
                "({expr} {}LIKE '{}')",
                if *negated { "NOT " } else { "" },
                pattern.replace('\'', "''")
            ),
            Expr::Kernel { name, args, params } => write!(
                f,
                "KERNEL {name}({}; '{}')",
                args.join(", "),
                params.replace('\'', "''")
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Number(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Op(o) => (*o).to_string(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
}

fn lex(text: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '"' {
            if c == '"' {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&x| x == '"')
                    .map(|p| start + p)
                    .ok_or_else(|| Error::MalformedPlan("unterminated quoted identifier".into()))?;
                out.push(Tok::Ident(chars[start..end].iter().collect()));
                i = end + 1;
            } else {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || chars[i] == 'e'
                    || chars[i] == 'E'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            out.push(Tok::Number(chars[start..i].iter().collect()));
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(Error::MalformedPlan("unterminated string literal".into())),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" | "<>" => Some("!="),
                _ => None,
            };
            if let Some(op) = op {
                out.push(Tok::Op(op));
                i += 2;
                continue;
            }
            let tok = match c {
                '<' => Tok::Op("<"),
                '>' => Tok::Op(">"),
                '=' => Tok::Op("="),
                '+' => Tok::Op("+"),
                '-' => Tok::Op("-"),
                '*' => Tok::Op("*"),
                '/' => Tok::Op("/"),
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                other => {
                    return Err(Error::MalformedPlan(format!(
                        "unexpected character '{other}' in expression"
                    )));
                }
            };
            out.push(tok);
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn peek_kw(&self, kw: &str) -> bool {
        self.peek().is_some_and(|t| t.is_kw(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<()> {
        match self.peek() {
            Some(t) if *t == tok => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(Error::MalformedPlan(format!(
                "expected '{}' but found '{}'",
                tok.text(),
                t.text()
            ))),
            None => Err(Error::MalformedPlan(format!(
                "expected '{}' at end of expression",
                tok.text()
            ))),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > EXPR_DEPTH_MAX {
            return Err(Error::MalformedPlan(format!(
                "expression nests deeper than {EXPR_DEPTH_MAX} levels"
            )));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr> {
        self.enter()?;
        let mut terms = vec![self.and()?];
        while self.eat_kw("OR") {
            terms.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr> {
        let mut terms = vec![self.not()?];
        while self.eat_kw("AND") {
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::And(terms)
        })
    }

    fn not(&mut self) -> Result<Expr> {
        if self.eat_kw("NOT") {
            self.enter()?;
            let e = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr> {
        let left = self.additive()?;
        if let Some(Tok::Op(op)) = self.peek() {
            let op = match *op {
                "=" => Some(CmpOp::Eq),
                "!=" => Some(CmpOp::NotEq),
                "<" => Some(CmpOp::Lt),
                "<=" => Some(CmpOp::LtEq),
                ">" => Some(CmpOp::Gt),
                ">=" => Some(CmpOp::GtEq),
                _ => None,
            };
            if let Some(op) = op {
                self.pos += 1;
                let right = self.additive()?;
                return Ok(Expr::cmp(op, left, right));
            }
        }
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            if !self.eat_kw("NULL") {
                return Err(Error::MalformedPlan("expected NULL after IS [NOT]".into()));
            }
            return Ok(if negated {
                Expr::IsNotNull(Box::new(left))
            } else {
                Expr::IsNull(Box::new(left))
            });
        }
        let negated = self.eat_kw("NOT");
        if self.eat_kw("BETWEEN") {
            let low = self.additive()?;
            if !self.eat_kw("AND") {
                return Err(Error::MalformedPlan("expected AND in BETWEEN".into()));
            }
            let high = self.additive()?;
            return Ok(Expr::Between {
                expr: Box::new(left),
                low: Box::new(low),
                high: Box::new(high),
                negated,
            });
        }
        if self.eat_kw("IN") {
            self.expect(Tok::LParen)?;
            let mut list = Vec::new();
            loop {
                match self.additive()? {
                    Expr::Lit(l) => list.push(l),
                    other => {
                        return Err(Error::MalformedPlan(format!(
                            "IN lists hold literals only, found {other}"
                        )));
                    }
                }
                if self.peek() == Some(&Tok::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            self.expect(Tok::RParen)?;
            return Ok(Expr::In {
                expr: Box::new(left),
                list,
                negated,
            });
        }
        if self.eat_kw("LIKE") {
            return match self.peek().cloned() {
                Some(Tok::Str(pattern)) => {
                    self.pos += 1;
                    Ok(Expr::Like {
                        expr: Box::new(left),
                        pattern,
                        negated,
                    })
                }
                _ => Err(Error::MalformedPlan("LIKE takes a quoted pattern".into())),
            };
        }
        if negated {
            return Err(Error::MalformedPlan(
                "expected BETWEEN, IN or LIKE after NOT".into(),
            ));
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("+")) => ArithOp::Add,
                Some(Tok::Op("-")) => ArithOp::Sub,
                _ => break,
            };
            self.pos += 1;
            let right = self.multiplicative()?;
            left = Expr::arith(op, left, right);
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => ArithOp::Mul,
                Some(Tok::Op("/")) => ArithOp::Div,
                _ => break,
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::arith(op, left, right);
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.peek() == Some(&Tok::Op("-")) {
            self.pos += 1;
            return match self.peek().cloned() {
                Some(Tok::Number(n)) => {
                    self.pos += 1;
                    number(&format!("-{n}"))
                }
                _ => {
                    let e = self.unary()?;
                    Ok(Expr::arith(ArithOp::Sub, Expr::Lit(Literal::Int(0)), e))
                }
            };
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr> {
        let Some(tok) = self.peek().cloned() else {
            return Err(Error::MalformedPlan("expression ends too early".into()));
        };
        self.pos += 1;
        match tok {
            Tok::Number(n) => number(&n),
            Tok::Str(s) => Ok(Expr::Lit(Literal::Str(s))),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(e)
            }
            Tok::Ident(id) => {
                if id.eq_ignore_ascii_case("NULL") {
                    return Ok(Expr::Lit(Literal::Null));
                }
                if id.eq_ignore_ascii_case("TRUE") {
                    return Ok(Expr::Lit(Literal::Bool(true)));
                }
                if id.eq_ignore_ascii_case("FALSE") {
                    return Ok(Expr::Lit(Literal::Bool(false)));
                }
                if id.eq_ignore_ascii_case("DATE")
                    && let Some(Tok::Str(d)) = self.peek().cloned()
                {
                    self.pos += 1;
                    return Ok(Expr::Lit(Literal::Typed(TypedLiteral::Date(d))));
                }
                Ok(Expr::Col(id))
            }
            other => Err(Error::MalformedPlan(format!(
                "unexpected '{}' in expression",
                other.text()
            ))),
        }
    }
}

fn number(text: &str) -> Result<Expr> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Expr::Lit(Literal::Int(i)));
    }
    if text.contains(['e', 'E']) {
        return text
            .parse::<f64>()
            .map(|f| Expr::Lit(Literal::Float(f)))
            .map_err(|_| Error::MalformedPlan(format!("bad number '{text}'")));
    }
    // Plain decimals stay exact: `0.06` compared with a Decimal128 column must not round.
    if text.parse::<f64>().is_ok() {
        return Ok(Expr::Lit(Literal::Typed(TypedLiteral::Decimal(
            text.into(),
        ))));
    }
    Err(Error::MalformedPlan(format!("bad number '{text}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_q6_predicate() {
        let e = Expr::parse(
            "l_shipdate >= DATE '1994-01-01' AND l_shipdate < date '1995-01-01' \
             AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
        )
        .unwrap();
        let Expr::And(terms) = &e else {
            panic!("not a conjunction: {e}")
        };
        assert_eq!(terms.len(), 4);
        assert_eq!(
            terms[3],
            Expr::cmp(
                CmpOp::Lt,
                Expr::col("l_quantity"),
                Expr::Lit(Literal::Int(24))
            )
        );
        assert_eq!(e.columns(), vec!["l_shipdate", "l_discount", "l_quantity"]);
        // Display output parses back to the same tree.
        assert_eq!(Expr::parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn precedence_and_errors() {
        let e = Expr::parse("a + b * 2 > 3 OR NOT c IS NULL").unwrap();
        assert_eq!(e.to_string(), "(((a + (b * 2)) > 3) OR (NOT (c IS NULL)))");
        for bad in ["a <", "a = 'x", "(a = 1", "a IN (b)", "a # 1", "a NOT 3"] {
            let err = Expr::parse(bad).unwrap_err();
            assert!(matches!(err, Error::MalformedPlan(_)), "{bad}: {err}");
        }
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(Expr::parse(&deep).is_err());
    }

    #[test]
    fn json_form_is_readable() {
        let e = Expr::parse("x IN (1, 'a', NULL) AND d = DATE '1998-09-02' AND p = 0.06").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#"{"in":{"expr":{"col":"x"},"list":[1,"a",null],"negated":false}}"#),
            "{json}"
        );
        assert!(json.contains(r#"{"date":"1998-09-02"}"#), "{json}");
        assert!(json.contains(r#"{"decimal":"0.06"}"#), "{json}");
        let back: Expr = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
