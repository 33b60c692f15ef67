//! Auto mode in the report: per query and link, the mode Auto ran and its regret — Auto's
//! median wall time / the fastest mode's median, Auto run in the same rounds as the three
//! modes, reusing the decision of a first run before them — with that first run's regret,
//! and the worst regret of the run, which the target holds to [`REGRET_TARGET`].

use std::fmt::Write as _;

use super::{AutoChoice, QueryReport, Report};

/// Auto's promised worst regret.
pub const REGRET_TARGET: f64 = 1.2;

/// Every choice of the run with where it was made: (query, link label, choice).
fn choices(r: &Report) -> Vec<(&QueryReport, String, &AutoChoice)> {
    let mut out = Vec::new();
    for q in &r.queries {
        if let Some(a) = &q.auto {
            out.push((q, "loopback".to_string(), a));
        }
        for s in &q.shaped {
            if let Some(a) = &s.auto {
                out.push((q, format!("{} Gb/s", s.link_gbps), a));
            }
        }
    }
    out
}

/// The worst regret of the run and where it happened, if Auto ran.
pub fn worst(r: &Report) -> Option<(f64, String)> {
    choices(r)
        .into_iter()
        .max_by(|a, b| a.2.regret.total_cmp(&b.2.regret))
        .map(|(q, at, a)| (a.regret, format!("{} at {at} ({})", q.name, a.mode)))
}

/// The Markdown section: a row per query, a cell per link (`offload 1.02`).
pub fn section(r: &Report) -> String {
    if worst(r).is_none() {
        return String::new();
    }
    let mut s = format!(
        "## Auto's choices\n\nAuto's first run of a query decides, before the rounds, from \
         the rates the device and the host learnt on the queries before it (and one warm-up \
         query per device start); then Auto runs the query beside the three modes, as often \
         as each and in the same rounds (whose order changes so that each runs after every \
         other alike), reusing that decision (the session keeps a decision for the same query \
         text for {} s). Each cell: the mode chosen, then its regret = Auto's median wall \
         time / the fastest mode's median (1.00 is the best choice), then in parentheses the \
         deciding run's, which paid for the decision.\n\n| query | loopback |",
        nearstore_sdk::DECISION_TTL.as_secs()
    );
    for g in &r.links {
        let _ = write!(s, " {g} Gb/s |");
    }
    s.push_str(" decision ms (loopback) |\n|---|---|");
    for _ in &r.links {
        s.push_str("---|");
    }
    s.push_str("---:|\n");
    let cell = |a: Option<&AutoChoice>| {
        a.map(|a| {
            let mark = if a.regret > REGRET_TARGET { "**" } else { "" };
            format!(
                "{} {mark}{:.2}{mark} ({:.2})",
                a.mode, a.regret, a.first_regret
            )
        })
        .unwrap_or_default()
    };
    for q in &r.queries {
        let _ = write!(s, "| {} | {} |", q.name, cell(q.auto.as_ref()));
        for g in &r.links {
            let a = super::render::at_link(q, *g).and_then(|x| x.auto.as_ref());
            let _ = write!(s, " {} |", cell(a));
        }
        let decide = q.auto.as_ref().map_or(0.0, |a| a.decide_ms);
        let _ = writeln!(s, " {decide:.1} |");
    }
    if let Some((w, at)) = worst(r) {
        let _ = writeln!(s, "\nWorst regret: {w:.2}, {at}.");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::ShapedRun;

    #[test]
    fn the_worst_regret_is_found_over_every_link() {
        let choice = |mode: &str, regret| AutoChoice {
            mode: mode.into(),
            regret,
            first_regret: 2.0 * regret,
            ..Default::default()
        };
        let r = Report {
            links: vec![10.0],
            queries: vec![QueryReport {
                name: "q".into(),
                auto: Some(choice("offload", 1.01)),
                shaped: vec![ShapedRun {
                    link_gbps: 10.0,
                    auto: Some(choice("remote", 1.4)),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (w, at) = worst(&r).unwrap();
        assert_eq!(w, 1.4);
        assert_eq!(at, "q at 10 Gb/s (remote)");
        let md = section(&r);
        assert!(
            md.contains("| q | offload 1.01 (2.02) | remote **1.40** (2.80) |"),
            "{md}"
        );
        assert_eq!(section(&Report::default()), "");
    }
}
