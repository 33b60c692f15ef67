//! A device in a child process: `nearstore serve` on a loopback port it picks itself, found
//! from its start-up line (printed by `serve.rs`); killed when dropped. The compare
//! harness and the end-to-end tests start their devices with it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The start of the line `nearstore serve` prints to stderr once it listens; the address
/// follows ` on grpc://`.
pub(crate) const SERVING: &str = "nearstore device serving";

/// A `nearstore serve` child process.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
}

impl ServeProcess {
    /// Starts `bin serve --data data --listen 127.0.0.1:0 args…` and waits up to `within` for
    /// the line naming its address. The device logs at `warn` and takes its settings from the
    /// arguments alone (`NEARSTORE_CONFIG` and `NEARSTORE_LINK_GBPS` are not passed on); its
    /// messages pass through to our stderr.
    pub fn start<I, S>(bin: &Path, data: &Path, args: I, within: Duration) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("NEARSTORE_LOG", "warn")
            .env_remove("NEARSTORE_CONFIG")
            .env_remove("NEARSTORE_LINK_GBPS")
            .env_remove("NEARSTORE_LINK_RTT_US")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the device ({} serve)", bin.display()))?;
        // Forward the device's messages (the demo generation's progress among them) and pick
        // its address out of the start-up line.
        let stderr = child.stderr.take().context("device stderr")?;
        let mut process = ServeProcess {
            child,
            url: String::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains(SERVING)
                    && let Some(rest) = line.split(" on grpc://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                eprintln!("{line}");
            }
        });
        match rx.recv_timeout(within) {
            Ok(addr) => process.url = format!("grpc://{addr}"),
            Err(_) => bail!("the device did not start serving (its messages are above)"),
        }
        Ok(process)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Sends SIGTERM (the device finishes in-flight calls) and waits up to `within` for the
    /// process to exit; past that, kills it and fails.
    pub fn terminate(mut self, within: Duration) -> Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > within {
                self.child.kill()?;
                bail!(
                    "the device did not stop within {} s of SIGTERM",
                    within.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
