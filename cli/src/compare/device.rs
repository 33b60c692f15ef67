//! The device the harness starts for itself: `nearstore serve` in a child process on a free
//! loopback port, so that the host side's CPU time is the harness process's alone.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::serve_process::ServeProcess;

/// How long a device may take to generate its data and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(3600);

/// A `nearstore serve` child process.
#[derive(Debug)]
pub struct DeviceChild {
    child: ServeProcess,
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
}

impl DeviceChild {
    /// Starts `bin serve` on `data` (generating lineitem at `scale` if the directory is empty),
    /// optionally with an emulated link and a number of compute workers, and waits until it
    /// serves the table. Its hot-column tier is off: every run decodes from the media (the
    /// warm-cache section starts devices of its own with [`DeviceChild::start_part`]).
    pub async fn start(
        bin: &Path,
        data: &Path,
        scale: f64,
        link_gbps: Option<f64>,
        workers: Option<usize>,
    ) -> Result<Self> {
        Self::start_part(bin, data, scale, link_gbps, None, workers, 0).await
    }

    /// Like [`DeviceChild::start`], generating only part `part.0` (1-based) of `part.1` of
    /// lineitem (one of several devices a table is dealt over), with a hot-column tier of
    /// `cache_mb` MiB.
    pub async fn start_part(
        bin: &Path,
        data: &Path,
        scale: f64,
        link_gbps: Option<f64>,
        part: Option<(usize, usize)>,
        workers: Option<usize>,
        cache_mb: u64,
    ) -> Result<Self> {
        let mut args = vec!["--demo-scale".to_string(), scale.to_string()];
        args.extend(["--cache-mb".to_string(), cache_mb.to_string()]);
        if let Some(w) = workers {
            args.extend(["--workers".to_string(), w.to_string()]);
        }
        if let Some((i, n)) = part {
            args.extend(["--demo-part".to_string(), format!("{i}/{n}")]);
        }
        if let Some(g) = link_gbps {
            args.extend(["--link-gbps".to_string(), g.to_string()]);
        }
        let (bin, data) = (bin.to_path_buf(), data.to_path_buf());
        // The device picks its port; its start-up line names it (waiting for it blocks).
        let child = tokio::task::spawn_blocking(move || {
            ServeProcess::start(&bin, &data, args, START_TIMEOUT)
        })
        .await??;
        let mut d = DeviceChild {
            url: child.url.clone(),
            child,
        };
        d.wait_ready().await?;
        Ok(d)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let options = nearstore_sdk::ClientOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the device exited before serving ({status}); its messages are above");
            }
            if let Ok(mut c) = nearstore_sdk::Client::connect_with(&self.url, options.clone()).await
                && c.describe("lineitem").await.is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("the device did not serve lineitem within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU time (user + system) of the device process so far, milliseconds, from
    /// `/proc/PID/stat`.
    pub fn cpu_ms(&self) -> Option<f64> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf reads a constant of the system; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| ticks * 1e3 / hz as f64)
    }

    /// Peak resident memory of the device process so far (`VmHWM`), MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// Stops the device with SIGTERM (it finishes in-flight calls) and waits for it.
    pub async fn stop(self) -> Result<()> {
        let child = self.child;
        let status =
            tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(30))).await??;
        if !status.success() {
            bail!("the device exited with {status} on SIGTERM");
        }
        Ok(())
    }
}
