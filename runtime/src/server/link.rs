//! Link emulation: paces what the device sends as if it left through a link of a given rate.
//!
//! The link is shared by every stream of the device, as a real port would be: each message
//! occupies the link for `bytes * 8 / rate` seconds, starting when the previous one finished
//! (or now, if the link is idle), and is handed to the transport only when its transmission
//! would have ended. Loopback is then as slow as the emulated fabric, never faster, and the
//! comparison harness can show what offload saves on a 1, 10 or 25 Gb/s link.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A link rate limiter shared by a device's result streams.
#[derive(Debug)]
pub struct Link {
    bits_per_second: Option<f64>,
    /// When the link becomes idle.
    free_at: Mutex<Instant>,
}

impl Link {
    /// A link of `gbps` gigabits per second; `None` is unshaped (the transport's own speed).
    pub fn new(gbps: Option<f64>) -> Self {
        Link {
            bits_per_second: gbps.filter(|g| *g > 0.0).map(|g| g * 1e9),
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// The emulated rate in Gb/s, if shaped.
    pub fn gbps(&self) -> Option<f64> {
        self.bits_per_second.map(|b| b / 1e9)
    }

    /// Waits until `bytes` would have left the device over this link.
    pub async fn send(&self, bytes: usize) {
        let Some(bps) = self.bits_per_second else {
            return;
        };
        let done = {
            let mut free_at = self.free_at.lock().expect("link clock");
            let start = (*free_at).max(Instant::now());
            let done = start + Duration::from_secs_f64(bytes as f64 * 8.0 / bps);
            *free_at = done;
            done
        };
        tokio::time::sleep_until(done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn messages_are_paced_at_the_link_rate_and_share_it() {
        // 1 Gb/s: 125 MB take one second, whether one stream or two share the link.
        let link = std::sync::Arc::new(Link::new(Some(1.0)));
        let t = Instant::now();
        link.send(125_000_000).await;
        assert_eq!(t.elapsed(), Duration::from_secs(1));

        let t = Instant::now();
        let (a, b) = (link.clone(), link.clone());
        let x = tokio::spawn(async move { a.send(62_500_000).await });
        let y = tokio::spawn(async move { b.send(62_500_000).await });
        x.await.unwrap();
        y.await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unshaped_link_does_not_wait() {
        let link = Link::new(None);
        let t = Instant::now();
        link.send(1 << 30).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(Link::new(Some(0.0)).gbps(), None);
    }
}
