//! The `nearstore` command line: serve a device, upload tables, run queries.
//!
//! The binary's `main` calls [`run`]; tests drive the same function. The commands are defined
//! in `args` (clap) and implemented one concern per module; `output` formats what they print.

mod admin;
mod args;
mod catalog;
pub mod cluster;
pub mod compare;
mod connect;
pub mod gateway;
mod heap;
pub mod kernel;
mod output;
mod query;
mod serve;
pub mod serve_process;
mod sql;
mod upload;

/// The kernel author's guide (`docs/kernels.md`); its code blocks are compiled as doctests.
#[doc = include_str!("../../docs/kernels.md")]
pub mod kernel_guide {}

use anyhow::Result;

pub use args::{
    BenchCommand, Cli, Command, DEFAULT_DEVICE, DemoArgs, DeviceArg, Format, ModeArg, PutArgs,
    QueryArgs, SqlArgs, TableArgs, TokenArgs, TpchArgs,
};
pub use output::{format_stats, human_bytes, print_batches, progress_bar};
pub use query::{parse_aggregate, parse_kernel_call};
pub use serve::{ServeArgs, serve};

/// The binary's entry point: parses arguments, sets up logging, runs the command.
pub fn main() -> std::process::ExitCode {
    heap::keep_freed_memory();
    let cli = <Cli as clap::Parser>::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEARSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Demo(args) => serve::demo(args).await,
        Command::Put(args) => upload::put(args).await,
        Command::Tables(d) => catalog::tables(d).await,
        Command::Describe(a) => catalog::describe(a).await,
        Command::Drop(a) => catalog::drop_table(a).await,
        Command::Query(args) => query::query(args).await,
        Command::Sql(args) => sql::sql(args).await,
        Command::Gateway(args) => gateway::gateway(args).await,
        Command::Tpch(args) => upload::tpch(args).await,
        Command::Bench(BenchCommand::Compare(args)) => compare::compare(args).await,
        Command::Info(d) => admin::info(d).await,
        Command::Token(args) => admin::token(args),
        Command::Kernel(cmd) => kernel::run(cmd).await,
        Command::Cluster(cmd) => cluster::run(cmd).await,
        Command::Scrub(d) => admin::scrub(d).await,
    }
}
