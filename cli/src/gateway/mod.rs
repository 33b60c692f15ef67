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
mod encode;
mod service;
mod text;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// TLS certificate chain (PEM); with --tls-key the gateway serves grpc+tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) the devices' TLS certificates are checked against.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Basic-auth users for clients that log in with a user name and password (JDBC's
    /// `user`/`password`): a TOML file of `[[users]]` with `name`, `password_sha256` and the
    /// tenant `token` the user stands for. Without it, clients send the tenant's bearer token.
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this address [default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// The `--users` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    name: String,
    /// Hex SHA-256 of the password (`nearstore token` prints one for a token).
    password_sha256: String,
    token: String,
}

fn read_users(path: &Path) -> Result<HashMap<String, (String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: UsersFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file
        .users
        .into_iter()
        .map(|u| (u.name, (u.password_sha256.to_lowercase(), u.token)))
        .collect())
}

/// Serves Flight SQL until interrupted.
pub async fn gateway(args: GatewayArgs) -> Result<()> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not HOST:PORT", args.listen))?;
    let mode = args.mode;
    let options = nearstore_sdk::ClientOptions {
        tls_ca_pem: crate::connect::read_ca(&args.tls_ca)?,
        ..Default::default()
    };
    let users = match &args.users {
        Some(p) => read_users(p)?,
        None => HashMap::new(),
    };
    let gateway = Gateway::new(args.devices.clone(), mode, options, users);
    // Checks the devices answer before serving (with no token: an open device's tables).
    gateway
        .check_devices()
        .await
        .context("the gateway's devices")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            Some(tonic::transport::Identity::from_pem(read(c)?, read(k)?))
        }
        _ => None,
    };
    if let Some(m) = &args.metrics_listen {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("listening for metrics on {m}"))?;
        println!("gateway metrics on http://{}/metrics", l.local_addr()?);
        let g = gateway.clone();
        tokio::spawn(nearstore_runtime::server::metrics::serve_text(
            l,
            std::sync::Arc::new(move || g.render_metrics()),
        ));
    }
    println!(
        "nearstore Flight SQL gateway on {}://{local} over {} device(s), mode {}",
        if identity.is_some() {
            "grpc+tls"
        } else {
            "grpc"
        },
        args.devices.len(),
        mode.as_str()
    );
    serve(gateway, listener, identity, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves `gateway` on `listener` (grpc+tls with `identity`) until `shutdown`: the command's
/// server, and the bench's.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    identity: Option<tonic::transport::Identity>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20);
    if let Some(identity) = identity {
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("the TLS certificate and key")?;
    }
    // With an incoming stream tonic does not apply its own TCP options: without TCP_NODELAY
    // each small answer waits ~40 ms for the client's delayed ACK.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
            })
        },
    );
    server
        .add_service(
            FlightServiceServer::new(gateway)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving Flight SQL")?;
    Ok(())
}
