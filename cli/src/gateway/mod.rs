//! `nearstore gateway`: a Flight SQL endpoint over devices, so any Flight SQL client (ADBC,
//! JDBC, pyarrow's `flight_sql`, BI tools) runs SQL with the SDK's pushdown. Each statement is
//! planned by the SDK's SQL session (DataFusion with the pushdown rules, fan-out across the
//! devices, the mode of `--mode`) opened with the caller's bearer token, so a tenant sees its
//! own tables through the gateway as on a device.
//!
//! A statement runs when the client asks for its `FlightInfo` (`GetFlightInfo`), so the info
//! carries the result's exact schema; its batches wait under a ticket for the client's
//! `DoGet` (taken once, dropped after [`service::RESULT_TTL`]). [`service`] is the protocol,
//! [`catalog`] the metadata answers (SqlInfo, type info, tables).

mod catalog;
mod service;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use arrow_flight::flight_service_server::FlightServiceServer;
use nearstore_sdk::Mode;

pub use service::Gateway;

/// `nearstore gateway` arguments.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Device URL (repeat for several devices; a table on several is one table).
    #[arg(long = "device", required = true)]
    pub devices: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50060")]
    pub listen: String,
    /// How statements run: offload, remote, transfer or auto (as `nearstore sql --mode`).
    #[arg(long, default_value = "offload")]
    pub mode: Mode,
}

/// Serves Flight SQL until interrupted.
pub async fn gateway(args: GatewayArgs) -> Result<()> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not HOST:PORT", args.listen))?;
    let mode = args.mode;
    let gateway = Gateway::new(args.devices.clone(), mode);
    // Checks the devices answer before serving (with no token: an open device's tables).
    gateway
        .check_devices()
        .await
        .context("the gateway's devices")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    println!(
        "nearstore Flight SQL gateway on grpc://{local} over {} device(s), mode {}",
        args.devices.len(),
        mode.as_str()
    );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(
            FlightServiceServer::new(gateway)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving Flight SQL")?;
    Ok(())
}
