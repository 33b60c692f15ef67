//! Output formatting: result batches as a table, CSV or JSON lines, query statistics, byte
//! counts with a binary unit, and progress bars.

use anyhow::Result;
use arrow::record_batch::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use nearstore_proto::QueryStats;

use crate::Format;

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str, counts: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{elapsed_precise}}] [{{wide_bar}}] {counts} ({{eta}})"
    ))
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Prints batches to stdout in `format`.
pub fn print_batches(
    batches: &[RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    format: Format,
) -> Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&[empty])?
                )?;
            } else {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(batches)?
                )?;
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// Human-readable statistics.
pub fn format_stats(s: &QueryStats) -> String {
    let mut topk = if s.topk_rows_in > 0 {
        format!(
            " | top-k pre-selection kept {} of {}",
            s.topk_rows_kept, s.topk_rows_in
        )
    } else {
        String::new()
    };
    if s.topk_rows_skipped > 0 {
        topk += &format!(", {} rows skipped unread by its bound", s.topk_rows_skipped);
    }
    if s.rows_left_out > 0 {
        topk += &format!(
            " | {} rejected rows left out by the aggregate unfiltered",
            s.rows_left_out
        );
    }
    if s.row_groups_by_dictionary > 0 {
        topk += &format!(
            " | {} row groups read by dictionary indices",
            s.row_groups_by_dictionary
        );
    }
    // The hot-column tier, when the device has one: column chunks' media bytes.
    let tier = if s.cache_hit_bytes + s.cache_miss_bytes > 0 {
        format!(
            " | hot tier: {} served from memory, {} read",
            human_bytes(s.cache_hit_bytes),
            human_bytes(s.cache_miss_bytes)
        )
    } else {
        String::new()
    };
    format!(
        "-- device: backend={} ({}) reader={} | read {} from media, sent {} to host | row groups {}/{} pruned, pages {}/{} pruned | rows: {} in kept row groups, {} decoded, {} selected, {} returned{topk} | time: plan {:.1} ms, scan {:.1} ms (filter {:.1} ms), compute {:.1} ms, total {:.1} ms{tier}",
        s.backend,
        s.placement,
        s.reader,
        human_bytes(s.bytes_read_media),
        human_bytes(s.bytes_sent),
        s.row_groups_pruned,
        s.row_groups_total,
        s.pages_pruned,
        s.pages_total,
        s.rows_total,
        s.rows_scanned,
        s.rows_selected,
        s.rows_returned,
        s.plan_us as f64 / 1e3,
        s.scan_us as f64 / 1e3,
        s.filter_us as f64 / 1e3,
        s.compute_us as f64 / 1e3,
        s.total_us as f64 / 1e3,
    )
}

/// Bytes with a binary unit.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_tier_shows_only_when_the_device_has_one() {
        let mut s = QueryStats::default();
        assert!(!format_stats(&s).contains("hot tier"));
        s.cache_hit_bytes = 3 << 20;
        s.cache_miss_bytes = 512;
        assert!(
            format_stats(&s).ends_with("| hot tier: 3.0 MiB served from memory, 512 B read"),
            "{}",
            format_stats(&s)
        );
    }
}
