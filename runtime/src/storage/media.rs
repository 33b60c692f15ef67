//! A tenant's media bandwidth: a token bucket that the scan's reads wait on, enforced where
//! the bytes are read.

use std::sync::Mutex;

/// A token bucket on bytes read from the media, shared by one tenant's queries: reads wait
/// until the tenant's rate allows them, with a burst of 100 ms worth (at least 1 MiB).
#[derive(Debug)]
pub struct MediaBucket {
    bytes_per_second: f64,
    burst: std::time::Duration,
    /// Theoretical arrival time of the next byte (GCRA).
    tat: Mutex<tokio::time::Instant>,
}

impl MediaBucket {
    /// A bucket of `mb_per_s` megabytes per second.
    pub fn new(mb_per_s: f64) -> Self {
        let bytes_per_second = mb_per_s * 1e6;
        let burst =
            std::time::Duration::from_secs_f64((0.1f64).max((1 << 20) as f64 / bytes_per_second));
        MediaBucket {
            bytes_per_second,
            burst,
            tat: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `bytes` may be read.
    pub async fn take(&self, bytes: u64) {
        let allowed_at = {
            let mut tat = self.tat.lock().expect("media bucket");
            let now = tokio::time::Instant::now();
            let start = (*tat).max(now);
            *tat = start + std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            (*tat).checked_sub(self.burst).unwrap_or(now)
        };
        tokio::time::sleep_until(allowed_at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_media_bucket_paces_reads_after_its_burst() {
        // 10 MB/s with a burst of 1 MiB's worth: 6 MB take 0.6 s less the burst.
        let b = MediaBucket::new(10.0);
        assert_eq!(b.burst.as_secs_f64(), (1 << 20) as f64 / 10e6);
        let t = tokio::time::Instant::now();
        for _ in 0..6 {
            b.take(1_000_000).await;
        }
        let want = std::time::Duration::from_millis(600) - b.burst;
        assert!(
            t.elapsed().abs_diff(want) < std::time::Duration::from_millis(1),
            "{:?}",
            t.elapsed()
        );
    }
}
