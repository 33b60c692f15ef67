//! Link emulation: paces what the device sends as if it left through a link of a given rate.
//!
//! The link is shared by every stream of the device, as a real port would be: each message
//! occupies the link for `bytes * 8 / rate` seconds, starting when the previous one finished
//! (or now, if the link is idle), and is handed to the transport only when its transmission
//! would have ended. Loopback is then as slow as the emulated fabric, never faster, and the
//! comparison harness can show what offload saves on a 1, 10 or 25 Gb/s link. A shaped link
//! also has a round-trip time (default [`DEFAULT_RTT`]): every call waits it once before its
//! first byte leaves, so a reader that makes many small calls pays for each, as over a fabric.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use nearstore_proto::rate::{Mean, Rate};

/// Round-trip time of a shaped link unless configured: a call across a data-centre fabric.
pub const DEFAULT_RTT: Duration = Duration::from_micros(100);

/// Messages a result stream may prepare ahead of the link (a NIC's transmit queue).
const QUEUE: usize = 8;

/// How far behind its schedule the link may fall before it counts as idle. A message released
/// late (a busy runtime) must not push back every later one, or a stream of small messages
/// would run at half the rate.
const IDLE_AFTER: Duration = Duration::from_millis(5);

/// How late the runtime's timer may wake: tokio's timer wheel ticks in milliseconds, so a
/// 100 µs sleep takes 1–1.5 ms. [`wait_until`] sleeps the last stretch of this length on a
/// thread instead.
const TICK: Duration = Duration::from_millis(2);

/// What [`wait_until`] spins rather than sleeps at the end of a wait: the kernel's default
/// timer slack and a thread's wake-up.
const SPIN: Duration = Duration::from_micros(70);

/// A link rate limiter shared by a device's result streams.
#[derive(Debug)]
pub struct Link {
    bits_per_second: Option<f64>,
    rtt: Duration,
    /// When the link becomes idle.
    free_at: Mutex<Instant>,
    /// What it was seen to carry: throughput while a message waited on it, and the round
    /// trips calls paid.
    seen: Mutex<(Rate, Mean)>,
}

impl Link {
    /// A link of `gbps` gigabits per second with the [`DEFAULT_RTT`]; `None` is unshaped (the
    /// transport's own speed and latency).
    pub fn new(gbps: Option<f64>) -> Self {
        Link {
            bits_per_second: gbps.filter(|g| *g > 0.0).map(|g| g * 1e9),
            rtt: DEFAULT_RTT,
            free_at: Mutex::new(Instant::now()),
            seen: Mutex::new((Rate::new(1024.0 * 1024.0 * 1024.0), Mean::default())),
        }
    }

    /// The same link with round-trip time `rtt` (only a shaped link has one).
    pub fn with_rtt(mut self, rtt: Duration) -> Self {
        self.rtt = rtt;
        self
    }

    /// The round-trip time a call pays on this link: zero when unshaped.
    pub fn rtt(&self) -> Duration {
        if self.bits_per_second.is_some() {
            self.rtt
        } else {
            Duration::ZERO
        }
    }

    /// Waits one round trip (a call's request out and its first byte back).
    pub async fn round_trip(&self) {
        let rtt = self.rtt();
        let t = Instant::now();
        if !rtt.is_zero() {
            wait_until(t + rtt).await;
        }
        let took = t.elapsed().as_secs_f64() * 1e6;
        self.seen.lock().expect("link telemetry").1.add(took);
    }

    /// What the link was seen to carry: bytes per second while a message waited on it (the
    /// emulated rate when shaped, the transport's pace otherwise), and the mean round trip a
    /// call paid, µs.
    pub fn carried(&self) -> (Option<f64>, Option<f64>) {
        let seen = self.seen.lock().expect("link telemetry");
        (seen.0.per_sec(), seen.1.get())
    }

    /// Records `bytes` that spent `took` on the link (waiting for it and leaving through it).
    fn note(&self, bytes: usize, took: Duration) {
        self.seen
            .lock()
            .expect("link telemetry")
            .0
            .add(bytes as f64, took);
    }

    /// The emulated rate in Gb/s, if shaped.
    pub fn gbps(&self) -> Option<f64> {
        self.bits_per_second.map(|b| b / 1e9)
    }

    /// Books the link for `bytes` ready now: returns when their transmission ends (after
    /// whatever is booked already), or `None` on an unshaped link.
    pub fn reserve(&self, bytes: usize) -> Option<Instant> {
        let bps = self.bits_per_second?;
        let mut free_at = self.free_at.lock().expect("link clock");
        let now = Instant::now();
        let start = if now > *free_at + IDLE_AFTER {
            now
        } else {
            *free_at
        };
        let done = start + Duration::from_secs_f64(bytes as f64 * 8.0 / bps);
        *free_at = done;
        Some(done)
    }

    /// How long the link stays busy with what is booked already (zero when idle or unshaped).
    pub fn busy_for(&self) -> Duration {
        if self.bits_per_second.is_none() {
            return Duration::ZERO;
        }
        let free_at = *self.free_at.lock().expect("link clock");
        free_at.saturating_duration_since(Instant::now())
    }

    /// Waits until `bytes` would have left the device over this link.
    pub async fn send(&self, bytes: usize) {
        if let Some(done) = self.reserve(bytes) {
            wait_until(done).await;
        }
    }
}

/// Waits until `deadline` to within the OS's sleep precision (tens of µs) rather than the
/// runtime timer's millisecond: the runtime's timer up to [`TICK`] before it, a blocking-pool
/// thread's sleep for the rest. An emulated 100 µs round trip then costs about 100 µs, not
/// a timer tick, and a millisecond query's pacing is not rounded up to whole ticks.
async fn wait_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > TICK {
        tokio::time::sleep_until(deadline - TICK).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let end = std::time::Instant::now() + rest;
        // A join error is a panic in the closure: there is nothing to wait for then.
        let _ = tokio::task::spawn_blocking(move || {
            // A thread's sleep ends up to the kernel's timer slack (50 µs) late: it sleeps
            // short of that and spins the rest.
            if let Some(nap) = rest.checked_sub(SPIN) {
                std::thread::sleep(nap);
            }
            while std::time::Instant::now() < end {
                std::hint::spin_loop();
            }
        })
        .await;
    }
    // Under a paused clock (tests) a thread's sleep does not move the runtime's clock.
    if Instant::now() < deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// A sender of `(message, bytes)` that hands each message to `out` when its transmission over
/// `link` ends. The producer goes on preparing the next messages meanwhile (up to a queue's
/// worth), so encoding overlaps transmission as it does in front of a real link.
pub fn paced<T: Send + 'static>(link: Arc<Link>, out: mpsc::Sender<T>) -> mpsc::Sender<(T, usize)> {
    let (tx, mut rx) = mpsc::channel::<(T, usize)>(QUEUE);
    tokio::spawn(async move {
        while let Some((item, bytes)) = rx.recv().await {
            // The time from here to the hand-off is the message's time on the link: the
            // emulated transmission, or the transport's back-pressure.
            let t = Instant::now();
            link.send(bytes).await;
            if out.send(item).await.is_err() {
                return; // the client is gone
            }
            link.note(bytes, t.elapsed());
        }
    });
    tx
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
    async fn a_paced_stream_overlaps_preparation_with_transmission() {
        // Ten 12.5 MB messages at 1 Gb/s, each taking 50 ms to prepare: the link, not the sum
        // of preparation and transmission, sets the pace (1 s + the first message's 50 ms).
        let link = Arc::new(Link::new(Some(1.0)));
        let (out, mut rx) = mpsc::channel::<u32>(1);
        let tx = paced(link.clone(), out);
        let t = Instant::now();
        let producer = tokio::spawn(async move {
            for i in 0..10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send((i, 12_500_000)).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        producer.await.unwrap();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(t.elapsed(), Duration::from_millis(1050));
        // What the link learnt: 1 Gb/s, from the messages' time on it.
        let (rate, _) = link.carried();
        assert!((rate.unwrap() - 125e6).abs() < 1.0, "{rate:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn late_wake_ups_do_not_slow_the_link() {
        // 1000 messages of 125 kB at 1 Gb/s (1 ms each) released by a timer that wakes 0.7 ms
        // late every time: still one second in all, not 1.7.
        let link = Link::new(Some(1.0));
        let t = Instant::now();
        for _ in 0..1000 {
            link.send(125_000).await;
            tokio::time::advance(Duration::from_micros(700)).await;
        }
        let took = t.elapsed();
        assert!(took <= Duration::from_millis(1001), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shaped_link_charges_a_round_trip_per_call() {
        let link = Link::new(Some(10.0)).with_rtt(Duration::from_millis(2));
        let t = Instant::now();
        link.round_trip().await;
        assert_eq!(t.elapsed(), Duration::from_millis(2));
        assert_eq!(link.carried().1, Some(2000.0));
        assert_eq!(Link::new(Some(1.0)).rtt(), DEFAULT_RTT);
        assert_eq!(
            Link::new(None).with_rtt(Duration::from_secs(1)).rtt(),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unshaped_link_does_not_wait() {
        let link = Link::new(None);
        let t = Instant::now();
        link.send(1 << 30).await;
        link.round_trip().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(Link::new(Some(0.0)).gbps(), None);
    }
}
