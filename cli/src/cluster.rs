//! `nearstore cluster`: the processes of an Apache DataFusion Ballista cluster whose queries
//! scan devices (`nearstore_ballista`): a scheduler, and executors that run its tasks.
//! `nearstore sql --ballista df://HOST:PORT` sends it a query.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Run a Ballista scheduler that plans queries over device tables.
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor that runs a scheduler's tasks (device scans among them).
    Executor(ExecutorArgs),
}

/// `cluster scheduler` arguments.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on (and advertise to executors).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub listen: SocketAddr,
    /// How long a device's scan task waits for a busy executor near the device before any
    /// executor takes it, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub locality_wait_ms: u64,
}

/// `cluster executor` arguments.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler's address.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: SocketAddr,
    /// Host to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Arrow Flight port (shuffle data between executors and results to clients).
    #[arg(long, default_value_t = 50051)]
    pub flight_port: u16,
    /// gRPC port (task launches from the scheduler).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub tasks: usize,
    /// Executor name [default: a generated one].
    #[arg(long, default_value = "")]
    pub id: String,
    /// Directory for shuffle files [default: a directory under the system's temporary one].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// A device near this executor (repeatable), by the URL clients use for it: the
    /// scheduler runs that device's scan tasks here when this executor has a free slot.
    #[arg(long = "near-device", value_name = "URL")]
    pub near_devices: Vec<String>,
}

/// Runs a `cluster` subcommand until the process is stopped.
pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Scheduler(a) => {
            eprintln!("Ballista scheduler on {}", a.listen);
            let wait = std::time::Duration::from_millis(a.locality_wait_ms);
            nearstore_ballista::scheduler(a.listen, wait).await
        }
        ClusterCommand::Executor(a) => {
            let work_dir = a.work_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "nearstore-executor-{}-{}",
                    a.grpc_port,
                    std::process::id()
                ))
            });
            eprintln!(
                "Ballista executor on {}:{} (flight) / {} (grpc), scheduler {}",
                a.host, a.flight_port, a.grpc_port, a.scheduler
            );
            for d in &a.near_devices {
                eprintln!(
                    "near device {d} (tag {})",
                    nearstore_ballista::placement::near_tag(d)
                );
            }
            nearstore_ballista::executor(nearstore_ballista::ExecutorOptions {
                scheduler: a.scheduler,
                host: a.host,
                flight_port: a.flight_port,
                grpc_port: a.grpc_port,
                tasks: a.tasks,
                id: a.id,
                near_devices: a.near_devices,
                work_dir,
            })
            .await
        }
    }
}
