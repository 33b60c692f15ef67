//! What `bench compare` writes: `report.json`, `report.md`, SVG charts (plotters' SVG backend)
//! and `index.html`, which embeds the charts and tells the story in words.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::{QueryReport, Report};
use crate::human_bytes;

/// Chart files, in the order the page shows them.
pub const CHARTS: [&str; 4] = [
    "crossover.svg",
    "bytes_moved.svg",
    "time_narrow.svg",
    "time_wide.svg",
];

/// Writes every output into `out`.
pub fn write_all(r: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, data: &[u8]| {
        std::fs::write(out.join(name), data)
            .with_context(|| format!("writing {}", out.join(name).display()))
    };
    write("report.json", &serde_json::to_vec_pretty(r)?)?;
    write("report.md", markdown(r).as_bytes())?;
    write(CHARTS[0], crossover_chart(r)?.as_bytes())?;
    write(CHARTS[1], bytes_chart(r)?.as_bytes())?;
    write(CHARTS[2], time_chart(r, "narrow")?.as_bytes())?;
    write(CHARTS[3], time_chart(r, "wide")?.as_bytes())?;
    write("index.html", html(r).as_bytes())?;
    Ok(())
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}

/// `q`'s run over the emulated link of `gbps`, if that link ran.
pub(super) fn at_link(q: &QueryReport, gbps: f64) -> Option<&super::ShapedRun> {
    q.shaped.iter().find(|x| x.link_gbps == gbps)
}

/// A query's cells for each emulated link of the run: offload ms, remote-scan ms, transfer
/// ms, speedup over transfer (empty where the link did not run).
fn link_cells(r: &Report, q: &QueryReport) -> Vec<String> {
    r.links
        .iter()
        .flat_map(|g| match at_link(q, *g) {
            Some(x) => [
                ms(x.offload_ms),
                ms(x.remote_ms),
                ms(x.transfer_ms),
                format!("{:.1}x", x.speedup),
            ],
            None => Default::default(),
        })
        .collect()
}

/// `median (min–max)` of a mode's wall times.
fn spread(f: &super::ModeFigures) -> String {
    format!("{} ({}–{})", ms(f.wall_ms), ms(f.min_ms), ms(f.max_ms))
}

/// Who wins between offload and remote scan at one link, e.g. `offload 1.8x`.
fn winner(offload_ms: f64, remote_ms: f64) -> String {
    if offload_ms <= remote_ms {
        format!("offload {:.1}x", remote_ms / offload_ms.max(1e-3))
    } else {
        format!("**remote {:.1}x**", offload_ms / remote_ms.max(1e-3))
    }
}

/// The headline table: offload against the remote scan a host would run instead.
fn headline(r: &Report) -> String {
    let mut s = String::from(
        "## Offload vs remote scan

",
    );
    s.push_str(
        "Remote scan: the host's own Parquet reader (DataFusion, row-group and page pruning, \
         filters in the decoder) reading the device's file in byte ranges. Times are wall \
         times of the SQL call on the host, median (min–max).\n\n",
    );
    s.push_str(
        "| query | offload bytes | remote bytes | offload ms, loopback | remote ms, loopback |",
    );
    for g in &r.links {
        let _ = write!(s, " winner @{g} Gb/s |");
    }
    s.push_str(" crossover |\n|---|---:|---:|---:|---:|");
    for _ in &r.links {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for q in &r.queries {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} |",
            q.name,
            q.offload.bytes_moved,
            q.remote.bytes_moved,
            spread(&q.offload),
            spread(&q.remote)
        );
        for g in &r.links {
            let cell = at_link(q, *g)
                .map(|x| winner(x.offload_ms, x.remote_ms))
                .unwrap_or_default();
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s, " {} |", q.crossover);
    }
    s.push('\n');
    s
}

/// A query's cell for each reference engine of the run: its median ms (empty if it did not run).
fn engine_cells(r: &Report, q: &QueryReport) -> Vec<String> {
    r.engines
        .keys()
        .map(|e| q.reference.get(e).map(|x| ms(x.ms)).unwrap_or_default())
        .collect()
}

/// The Markdown report: one table a person reads in a pull request.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Offload vs remote scan vs full transfer\n\n");
    s.push_str(&setup_line(r));
    s.push_str("\n\n");
    s.push_str(&headline(r));
    s.push_str(&super::auto::section(r));
    s.push_str(&super::drives::section(r));
    let pair = |title, p: &Option<_>| super::pair::section(title, p.as_ref(), r.runs);
    s.push_str(&pair("Hot-column tier: cold against warm", &r.warm));
    s.push_str(&pair("Compute workers: 1 against all", &r.worker_pair));
    s.push_str(&super::versus::section(r));
    s.push_str("## Every figure\n\n");
    let links: Vec<String> = r.links.iter().map(|g| format!("{g} Gb/s")).collect();
    let engines: Vec<&String> = r.engines.keys().collect();
    s.push_str("| query | rows | equal | offload bytes | remote bytes | transfer bytes | reduction | offload ms | remote ms | transfer ms | speedup |");
    for l in &links {
        let _ = write!(
            s,
            " offload ms @{l} | remote ms @{l} | transfer ms @{l} | speedup @{l} |"
        );
    }
    s.push_str(" device ms (executor) | host CPU ms offload / transfer |");
    for e in &engines {
        let _ = write!(s, " {e} ms |");
    }
    s.push('\n');
    s.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for _ in &links {
        s.push_str("---:|---:|---:|---:|");
    }
    s.push_str("---:|---:|");
    for _ in &engines {
        s.push_str("---:|");
    }
    s.push('\n');
    for q in &r.queries {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1}x | {} | {} | {} | {:.1}x |",
            q.name,
            q.rows,
            if q.equal { "yes" } else { "**NO**" },
            q.offload.bytes_moved,
            q.remote.bytes_moved,
            q.transfer.bytes_moved,
            q.reduction,
            ms(q.offload.wall_ms),
            ms(q.remote.wall_ms),
            ms(q.transfer.wall_ms),
            q.speedup
        );
        for c in link_cells(r, q) {
            let _ = write!(s, " {c} |");
        }
        let _ = write!(
            s,
            " {} ({}) | {} / {} |",
            ms(q.offload.device_ms),
            ms(q.offload.executor_ms),
            ms(q.offload.host_cpu_ms),
            ms(q.transfer.host_cpu_ms)
        );
        for c in engine_cells(r, q) {
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    s.push_str("\n## Targets\n\n| target | measured | |\n|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(s, "| {} | {} | {} |", t.target, t.measured, yes_no(t.met));
    }
    if let Some(n) = &r.reference_note {
        let _ = writeln!(s, "\nReference engines: {n}");
    }
    if !r.failures.is_empty() {
        s.push_str("\n## Failures\n\n");
        for f in &r.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}

fn setup_line(r: &Report) -> String {
    let mut s = if r.scale > 0.0 {
        format!(
            "TPC-H lineitem at scale factor {} ({} rows) on a device the harness started",
            r.scale, r.table_rows
        )
    } else {
        format!("lineitem ({} rows) on an external device", r.table_rows)
    };
    let _ = write!(
        s,
        "; median of {} runs per query and mode, the mode order changing per round; loopback",
        r.runs
    );
    for g in &r.links {
        let _ = write!(s, " and an emulated {g} Gb/s link");
    }
    if let Some(c) = &r.transfer_compression {
        let _ = write!(s, "; full transfer's Arrow IPC compressed with {c}");
    }
    if !r.engines.is_empty() {
        let e: Vec<String> = r.engines.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = write!(
            s,
            "; reference engines {} ({} threads, as the device has compute workers)",
            e.join(", "),
            r.workers
        );
    }
    s.push('.');
    s
}

fn sweep<'a>(r: &'a Report, projection: &str) -> Vec<&'a QueryReport> {
    let mut v: Vec<&QueryReport> = r
        .queries
        .iter()
        .filter(|q| q.selectivity.is_some() && q.projection.as_deref() == Some(projection))
        .collect();
    v.sort_by(|a, b| a.selectivity.partial_cmp(&b.selectivity).expect("finite"));
    v
}

type Series = (String, RGBColor, Vec<(f64, f64)>);

/// The x axis of a chart: its description and label format.
struct XAxis<'a> {
    desc: &'a str,
    fmt: &'a dyn Fn(&f64) -> String,
}

const SELECTIVITY: XAxis<'static> = XAxis {
    desc: "selectivity (share of rows the filter keeps)",
    fmt: &|x| format!("{}%", x * 100.0),
};

/// A log-log line chart of `series`, as SVG text.
fn chart(
    title: &str,
    x: &XAxis<'_>,
    y_desc: &str,
    series: &[Series],
    y_fmt: &dyn Fn(&f64) -> String,
) -> Result<String> {
    let points = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1e-4, 1.0, 1.0, 10.0);
    }
    // Headroom above the data for the legend in the upper left corner.
    let (y0, y1) = (y0.max(1e-3) / 2.0, y1.max(1e-3) * 12.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 460)).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| anyhow!("drawing {title}: {e}");
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(78)
            .build_cartesian_2d((x0 / 1.5..x1 * 1.5).log_scale(), (y0..y1).log_scale())
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc(x.desc)
            .y_desc(y_desc)
            .x_label_formatter(x.fmt)
            .y_label_formatter(y_fmt)
            .draw()
            .map_err(|x| e(&x))?;
        for (label, color, pts) in series {
            let color = *color;
            c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|x| e(&x))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

const OFFLOAD: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TRANSFER: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const OFFLOAD_LINK: RGBColor = RGBColor(0x17, 0xbe, 0xcf);
const TRANSFER_LINK: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const OFFLOAD_WIDE: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const TRANSFER_WIDE: RGBColor = RGBColor(0x94, 0x67, 0xbd);

fn bytes_chart(r: &Report) -> Result<String> {
    let mut series: Vec<Series> = Vec::new();
    for (projection, off, tr) in [
        ("narrow", OFFLOAD, TRANSFER),
        ("wide", OFFLOAD_WIDE, TRANSFER_WIDE),
    ] {
        let qs = sweep(r, projection);
        let pts = |f: &dyn Fn(&QueryReport) -> u64| {
            qs.iter()
                .map(|q| (q.selectivity.unwrap_or(1.0), f(q).max(1) as f64))
                .collect::<Vec<_>>()
        };
        series.push((
            format!("offload, {projection} projection"),
            off,
            pts(&|q| q.offload.bytes_moved),
        ));
        series.push((
            format!("full transfer, {projection} projection"),
            tr,
            pts(&|q| q.transfer.bytes_moved),
        ));
    }
    chart(
        "Bytes moved over the link vs selectivity",
        &SELECTIVITY,
        "bytes moved",
        &series,
        &|y| human_bytes(*y as u64),
    )
}

fn time_chart(r: &Report, projection: &str) -> Result<String> {
    let qs = sweep(r, projection);
    let at = |f: &dyn Fn(&QueryReport) -> Option<f64>| {
        qs.iter()
            .filter_map(|q| Some((q.selectivity?, f(q)?.max(1e-3))))
            .collect::<Vec<_>>()
    };
    let mut series: Vec<Series> = vec![
        (
            "offload, loopback".into(),
            OFFLOAD,
            at(&|q| Some(q.offload.wall_ms)),
        ),
        (
            "full transfer, loopback".into(),
            TRANSFER,
            at(&|q| Some(q.transfer.wall_ms)),
        ),
    ];
    for g in &r.links {
        let shaped = |q: &QueryReport| at_link(q, *g).cloned();
        series.push((
            format!("offload, {g} Gb/s link"),
            OFFLOAD_LINK,
            at(&|q| shaped(q).map(|s| s.offload_ms)),
        ));
        series.push((
            format!("full transfer, {g} Gb/s link"),
            TRANSFER_LINK,
            at(&|q| shaped(q).map(|s| s.transfer_ms)),
        ));
    }
    chart(
        &format!("Wall time vs selectivity, {projection} projection"),
        &SELECTIVITY,
        "wall time (ms, median)",
        &series,
        &|y| format!("{y} ms"),
    )
}

/// Remote-scan time over offload time against the link rate, one line per fixed query and
/// per 1 % sweep point: above 1, offload is faster; where a line crosses 1 is the crossover.
fn crossover_chart(r: &Report) -> Result<String> {
    const COLORS: [RGBColor; 6] = [
        OFFLOAD,
        TRANSFER,
        OFFLOAD_LINK,
        TRANSFER_LINK,
        OFFLOAD_WIDE,
        TRANSFER_WIDE,
    ];
    let shown = r
        .queries
        .iter()
        .filter(|q| q.selectivity.is_none() || q.selectivity == Some(0.01));
    let mut series: Vec<Series> = shown
        .zip(COLORS.iter().cycle())
        .map(|(q, c)| {
            let mut pts: Vec<(f64, f64)> = q
                .shaped
                .iter()
                .map(|x| (x.link_gbps, x.remote_ms / x.offload_ms.max(1e-3)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (q.name.clone(), *c, pts)
        })
        .collect();
    if let (Some(lo), Some(hi)) = (
        r.links.iter().copied().reduce(f64::min),
        r.links.iter().copied().reduce(f64::max),
    ) {
        series.push(("equal time".into(), BLACK, vec![(lo, 1.0), (hi, 1.0)]));
    }
    chart(
        "Remote scan time / offload time vs link rate (above 1: offload wins)",
        &XAxis {
            desc: "emulated link (Gb/s)",
            fmt: &|x| format!("{x}"),
        },
        "remote ms / offload ms (median)",
        &series,
        &|y| format!("{y:.2}"),
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The story of a run, in sentences.
fn story(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let find = |n: &str| r.queries.iter().find(|q| q.name == n);
    if let Some(q) = find("tpch_q6") {
        out.push(format!(
            "TPC-H Q6 offloaded moved {} over the link instead of {} ({:.0}x fewer bytes) and took \
             {} ms instead of {} ms on loopback: the filter and the sum ran next to the data and \
             only the one-row answer crossed the link.",
            human_bytes(q.offload.bytes_moved),
            human_bytes(q.transfer.bytes_moved),
            q.reduction,
            ms(q.offload.wall_ms),
            ms(q.transfer.wall_ms)
        ));
    }
    for p in ["narrow", "wide"] {
        if let Some(q) = find(&format!("sweep_{p}_0.01")) {
            let mut s = format!(
                "At 1 % selectivity with the {p} projection, offload was {:.1}x faster on loopback",
                q.speedup
            );
            for x in &q.shaped {
                let _ = write!(
                    s,
                    " and {:.1}x faster over an emulated {} Gb/s link",
                    x.speedup, x.link_gbps
                );
            }
            s.push('.');
            out.push(s);
        }
    }
    let slower: Vec<&str> = r
        .queries
        .iter()
        .filter(|q| q.speedup < 1.0)
        .map(|q| q.name.as_str())
        .collect();
    if !slower.is_empty() {
        out.push(format!(
            "Offload was slower than full transfer on loopback for {}: where the filter keeps \
             most rows the same bytes cross the link either way, and the device's single query \
             thread does work the host would otherwise share out.",
            slower.join(", ")
        ));
    }
    let mut wins: Vec<String> = Vec::new();
    for q in r.queries.iter().filter(|q| q.selectivity.is_none()) {
        wins.push(format!("{}: {}", q.name, q.crossover));
    }
    if !wins.is_empty() {
        out.push(format!(
            "Against a remote scan (the host's own Parquet reader on the device's file): {}.",
            wins.join("; ")
        ));
    }
    let mismatched: Vec<&str> = r
        .queries
        .iter()
        .filter(|q| !q.equal || q.shaped.iter().any(|s| !s.equal))
        .map(|q| q.name.as_str())
        .collect();
    if mismatched.is_empty() {
        out.push(format!(
            "Every one of the {} queries returned the same rows in all three modes.",
            r.queries.len()
        ));
    } else {
        out.push(format!(
            "Results differed between the modes for: {}.",
            mismatched.join(", ")
        ));
    }
    out
}

/// The HTML page: story, targets, charts, the full table.
pub fn html(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Nearstore: offload vs remote scan vs full transfer</title>\n<style>\
         body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;font-size:13px;margin:1em 0}\
         th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}\
         th:first-child,td:first-child{text-align:left}\
         .met{color:#1a7f37}.missed{color:#c62828;font-weight:bold}.none{color:#777}\
         img{max-width:100%;border:1px solid #eee;margin:0.5em 0}</style></head><body>\n",
    );
    s.push_str("<h1>Offload vs remote scan vs full transfer</h1>\n");
    let _ = writeln!(s, "<p>{}</p>", esc(&setup_line(r)));
    if !r.failures.is_empty() {
        s.push_str("<h2 class=\"missed\">Gate failures</h2><ul>");
        for f in &r.failures {
            let _ = write!(s, "<li>{}</li>", esc(f));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("<h2>What happened</h2>\n<ul>");
    for line in story(r) {
        let _ = write!(s, "<li>{}</li>", esc(&line));
    }
    s.push_str(
        "</ul>\n<h2>Targets</h2>\n<table><tr><th>target</th><th>measured</th><th></th></tr>",
    );
    for t in &r.targets {
        let class = match t.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "none",
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            esc(&t.target),
            esc(&t.measured),
            yes_no(t.met)
        );
    }
    s.push_str("</table>\n<h2>Charts</h2>\n");
    for c in CHARTS {
        let _ = writeln!(s, "<p><img src=\"{c}\" alt=\"{c}\"></p>");
    }
    s.push_str(
        "<h2>Every query</h2>\n<table><tr><th>query</th><th>rows</th><th>equal</th>\
        <th>offload bytes</th><th>remote bytes</th><th>transfer bytes</th><th>reduction</th>\
        <th>offload ms</th><th>remote ms</th><th>transfer ms</th><th>speedup</th>",
    );
    for g in &r.links {
        let _ = write!(
            s,
            "<th>offload ms @{g} Gb/s</th><th>remote ms @{g} Gb/s</th><th>transfer ms @{g} Gb/s</th><th>speedup @{g} Gb/s</th>"
        );
    }
    s.push_str("<th>crossover</th><th>device ms (executor)</th><th>device read</th><th>host CPU ms offload</th><th>host CPU ms transfer</th>");
    for e in r.engines.keys() {
        let _ = write!(s, "<th>{} ms</th>", esc(e));
    }
    s.push_str("</tr>\n");
    for q in &r.queries {
        let _ = write!(
            s,
            "<tr><td title=\"{}\">{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.1}x</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}x</td>",
            esc(&q.sql),
            esc(&q.name),
            q.rows,
            if q.equal { "met" } else { "missed" },
            if q.equal { "yes" } else { "NO" },
            human_bytes(q.offload.bytes_moved),
            human_bytes(q.remote.bytes_moved),
            human_bytes(q.transfer.bytes_moved),
            q.reduction,
            ms(q.offload.wall_ms),
            ms(q.remote.wall_ms),
            ms(q.transfer.wall_ms),
            q.speedup
        );
        for c in link_cells(r, q) {
            let _ = write!(s, "<td>{c}</td>");
        }
        let _ = write!(
            s,
            "<td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&q.crossover),
            ms(q.offload.device_ms),
            ms(q.offload.executor_ms),
            human_bytes(q.offload.bytes_read),
            ms(q.offload.host_cpu_ms),
            ms(q.transfer.host_cpu_ms)
        );
        for c in engine_cells(r, q) {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n<p>Hover a query name for its SQL. Bytes moved are everything the device sent for the call (Arrow IPC and the statistics trailer; a remote scan's range reads); \
        device ms is the device's time for the call, from its receipt to the last byte sent (the executor's part in parentheses); host CPU is the CPU time of the process running the SQL session.</p>\n");
    if let Some(n) = &r.reference_note {
        let _ = writeln!(s, "<p>Reference engines: {}</p>", esc(n));
    }
    s.push_str("</body></html>\n");
    s
}
