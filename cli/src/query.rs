//! `nearstore query`: a pushdown plan built from the flags (or read from a JSON file), run on
//! the device, its rows and statistics printed.

use anyhow::{Context, Result, bail};
use nearstore_proto::{AggFunc, Plan};
use nearstore_sdk::Query;

use crate::{QueryArgs, format_stats, print_batches};

/// Parses "func(arg) [as name]".
pub fn parse_aggregate(text: &str) -> Result<(AggFunc, Option<String>, String)> {
    let t = text.trim();
    let (call, name) = match t.to_ascii_lowercase().rfind(" as ") {
        Some(i) => (t[..i].trim(), Some(t[i + 4..].trim().to_string())),
        None => (t, None),
    };
    let open = call
        .find('(')
        .with_context(|| format!("aggregate '{text}' should look like sum(column)"))?;
    if !call.ends_with(')') {
        bail!("aggregate '{text}' should look like sum(column)");
    }
    let func = call[..open].trim().to_ascii_lowercase();
    let arg = call[open + 1..call.len() - 1].trim();
    let f = match (func.as_str(), arg) {
        ("count", "*") => AggFunc::CountStar,
        ("count", _) => AggFunc::Count,
        ("sum", _) => AggFunc::Sum,
        ("min", _) => AggFunc::Min,
        ("max", _) => AggFunc::Max,
        ("avg", _) => AggFunc::Avg,
        (other, _) => bail!("unknown aggregate function '{other}' (count, sum, min, max, avg)"),
    };
    let arg = (f != AggFunc::CountStar).then(|| arg.to_string());
    let name = name.unwrap_or_else(|| match &arg {
        Some(a) if a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            format!("{func}_{a}")
        }
        _ => func.clone(),
    });
    Ok((f, arg, name))
}

/// `NAME(COL[,COL...])[:PARAMS]` → name, columns, parameters.
pub fn parse_kernel_call(text: &str) -> Result<(String, Vec<String>, String)> {
    let bad = || {
        anyhow::anyhow!(
            "kernel call '{text}' must look like NAME(COLUMN[,COLUMN...]) or NAME(COLUMN):PARAMS"
        )
    };
    let open = text.find('(').ok_or_else(bad)?;
    let close = text[open..].find(')').map(|i| open + i).ok_or_else(bad)?;
    let name = text[..open].trim();
    let cols: Vec<String> = text[open + 1..close]
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let rest = text[close + 1..].trim_start();
    let params = match rest.strip_prefix(':') {
        Some(p) => p.to_string(),
        None if rest.is_empty() => String::new(),
        None => return Err(bad()),
    };
    if name.is_empty() || cols.is_empty() {
        return Err(bad());
    }
    Ok((name.to_string(), cols, params))
}

fn build_plan(args: &QueryArgs) -> Result<Plan> {
    if let Some(p) = &args.plan {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let mut plan = Plan::from_json(&bytes)?;
        if let Some(b) = args.backend {
            plan.backend = Some(b);
        }
        if args.limit.is_some() {
            plan.limit = args.limit;
        }
        return Ok(plan);
    }
    let table = args.table.clone().context("--table is required")?;
    let mut q = Query::table(table);
    if let Some(f) = &args.filter {
        q = q.filter(f)?;
    }
    for k in &args.kernels {
        let (name, args, params) = parse_kernel_call(k)?;
        q = q.kernel_filter(&name, args, &params);
    }
    if !args.select.is_empty() {
        q = q.select(args.select.iter().map(|s| s.trim().to_string()));
    }
    for a in &args.aggregates {
        let (f, arg, name) = parse_aggregate(a)?;
        q = q.aggregate(f, arg.as_deref(), &name)?;
    }
    if !args.group_by.is_empty() {
        q = q.group_by(args.group_by.iter().map(|s| s.trim().to_string()));
    }
    for o in &args.order_by {
        let mut parts = o.split_whitespace();
        let col = parts.next().context("empty --order-by")?;
        let desc = match parts.next().map(|s| s.to_ascii_lowercase()) {
            None => false,
            Some(d) if d == "desc" => true,
            Some(d) if d == "asc" => false,
            Some(d) => bail!("--order-by direction '{d}' (expected asc or desc)"),
        };
        q = q.order_by(col, desc);
    }
    if let Some(l) = args.limit {
        q = q.limit(l);
    }
    if let Some(b) = args.backend {
        q = q.backend(b);
    }
    Ok(q.build())
}

pub(crate) async fn query(args: QueryArgs) -> Result<()> {
    let plan = build_plan(&args)?;
    let mut client = args.device.connect().await?;
    let result = client.query(&plan).await?;
    print_batches(&result.batches, &result.schema, args.format)?;
    if !args.no_stats {
        eprintln!("{}", format_stats(&result.stats));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_calls_parse() {
        assert_eq!(
            parse_kernel_call("grep(l_comment):special req").unwrap(),
            (
                "grep".into(),
                vec!["l_comment".to_string()],
                "special req".into()
            )
        );
        assert_eq!(
            parse_kernel_call("bbox(x, y):0,0,1,1").unwrap().2,
            "0,0,1,1".to_string()
        );
        assert_eq!(parse_kernel_call("k(a)").unwrap().2, "");
        for bad in ["grep", "grep()", "(a)", "grep(a) x", "grep(a"] {
            assert!(parse_kernel_call(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aggregates_parse() {
        let (f, a, n) = parse_aggregate("sum(l_extendedprice * l_discount) as revenue").unwrap();
        assert_eq!(
            (f, a.as_deref(), n.as_str()),
            (
                AggFunc::Sum,
                Some("l_extendedprice * l_discount"),
                "revenue"
            )
        );
        let (f, a, n) = parse_aggregate("count(*)").unwrap();
        assert_eq!((f, a, n.as_str()), (AggFunc::CountStar, None, "count"));
        let (_, _, n) = parse_aggregate("AVG(l_quantity)").unwrap();
        assert_eq!(n, "avg_l_quantity");
        assert!(parse_aggregate("median(x)").is_err());
        assert!(parse_aggregate("sum x").is_err());
    }
}
