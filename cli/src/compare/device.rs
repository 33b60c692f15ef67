//! The device the harness starts for itself: `nearstore serve` in a child process on a free
//! loopback port, so that the host side's CPU time is the harness process's alone.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// How long a device may take to generate its data and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(3600);

/// A `nearstore serve` child process.
#[derive(Debug)]
pub struct DeviceChild {
    child: Child,
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
}

impl DeviceChild {
    /// Starts `bin serve` on `data` (generating lineitem at `scale` if the directory is empty),
    /// optionally with an emulated link, and waits until it serves the table.
    pub async fn start(
        bin: &Path,
        data: &Path,
        scale: f64,
        link_gbps: Option<f64>,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--demo-scale",
                &scale.to_string(),
            ])
            .env("NEARSTORE_LOG", "warn")
            .env_remove("NEARSTORE_CONFIG")
            .env_remove("NEARSTORE_LINK_GBPS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(g) = link_gbps {
            cmd.args(["--link-gbps", &g.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the device ({} serve)", bin.display()))?;
        // The device picks its port; its start-up line names it. Its other messages (the
        // generation progress among them) pass through to our stderr.
        let stderr = child.stderr.take().context("device stderr")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut tx = Some(tx);
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("nearstore device serving")
                    && let Some(rest) = line.split(" on grpc://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                eprintln!("{line}");
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            _ => bail!("the device did not start serving (its messages are above)"),
        };
        let mut d = DeviceChild {
            child,
            url: format!("grpc://{addr}"),
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
        let pid = self.child.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf reads a constant of the system; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| ticks * 1e3 / hz as f64)
    }

    /// Stops the device with SIGTERM (it finishes in-flight calls) and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("the device exited with {status} on SIGTERM");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the device did not stop within 30 s of SIGTERM")
            }
        }
    }
}
