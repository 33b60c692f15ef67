//! The crossover of offload and remote scan: the link rate above which the host reading the
//! device's Parquet itself wins, interpolated between the emulated links measured.
//!
//! A remote scan's time falls as the link gets faster (it moves the compressed column chunks
//! the host's pruning keeps); offload's barely moves (it sends a reduced result). Between two
//! measured links where the sign of `remote - offload` changes, the crossover is interpolated
//! linearly in the logarithm of the rate, as the link rates are spaced.

use super::ShapedRun;

/// The crossover rate (if the winner changes between two measured links) and a sentence.
pub(super) fn crossover(shaped: &[ShapedRun]) -> (Option<f64>, String) {
    let mut runs: Vec<&ShapedRun> = shaped.iter().collect();
    runs.sort_by(|a, b| a.link_gbps.total_cmp(&b.link_gbps));
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return (None, "no emulated link ran".into());
    };
    let gap = |r: &ShapedRun| r.remote_ms - r.offload_ms;
    for w in runs.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (da, db) = (gap(a), gap(b));
        if (da > 0.0) != (db > 0.0) {
            let (la, lb) = (a.link_gbps.ln(), b.link_gbps.ln());
            let at = (la + (lb - la) * da / (da - db)).exp();
            let text = if da > 0.0 {
                format!("remote scan wins above ~{at:.1} Gb/s")
            } else {
                format!("offload wins above ~{at:.1} Gb/s")
            };
            return (Some(at), text);
        }
    }
    let text = if gap(first) > 0.0 {
        format!(
            "offload wins at every link measured ({}–{} Gb/s)",
            first.link_gbps, last.link_gbps
        )
    } else {
        format!(
            "remote scan wins at every link measured ({}–{} Gb/s)",
            first.link_gbps, last.link_gbps
        )
    };
    (None, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(link_gbps: f64, offload_ms: f64, remote_ms: f64) -> ShapedRun {
        ShapedRun {
            link_gbps,
            offload_ms,
            remote_ms,
            ..Default::default()
        }
    }

    #[test]
    fn the_crossover_is_interpolated_in_log_rate_where_the_winner_changes() {
        // Remote 100 ms slower at 1 Gb/s, 100 ms faster at 100 Gb/s: halfway in log rate.
        let (at, text) = crossover(&[run(100.0, 200.0, 100.0), run(1.0, 200.0, 300.0)]);
        assert!((at.unwrap() - 10.0).abs() < 1e-9, "{at:?}");
        assert!(text.starts_with("remote scan wins above ~10.0"), "{text}");

        let (at, text) = crossover(&[run(1.0, 50.0, 500.0), run(25.0, 50.0, 60.0)]);
        assert_eq!(at, None);
        assert!(
            text.contains("offload wins at every link measured (1–25"),
            "{text}"
        );

        let (at, text) = crossover(&[run(10.0, 90.0, 40.0), run(25.0, 90.0, 30.0)]);
        assert_eq!(at, None);
        assert!(text.starts_with("remote scan wins at every link"), "{text}");

        assert_eq!(crossover(&[]).0, None);
    }
}
