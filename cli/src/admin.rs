//! The device-wide commands: `nearstore info` (information and counters), `scrub` (verify
//! every object's checksum) and `token` (make a tenant's bearer token).

use anyhow::{Context, Result, bail};

use crate::{DeviceArg, TokenArgs};

/// `nearstore info`: the device's information and counters as JSON.
pub(crate) async fn info(d: DeviceArg) -> Result<()> {
    let mut c = d.connect().await?;
    let i = c.device_info().await?;
    println!("{}", serde_json::to_string_pretty(&i)?);
    Ok(())
}

/// `nearstore scrub`: fails when any object is corrupt.
pub(crate) async fn scrub(d: DeviceArg) -> Result<()> {
    let mut c = d.connect().await?;
    let r = c.scrub().await?;
    println!(
        "checked {} objects ({} bytes); {} corrupt",
        r.objects_checked,
        r.bytes_checked,
        r.corrupt.len()
    );
    for (table, object, detail) in &r.corrupt {
        println!("  CORRUPT table={table} object={object}: {detail}");
    }
    if !r.corrupt.is_empty() {
        bail!("{} corrupt objects", r.corrupt.len());
    }
    Ok(())
}

/// A new random token (256 bits from the OS, hex).
fn new_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn token(args: TokenArgs) -> Result<()> {
    let valid = !args.tenant.is_empty()
        && args.tenant.len() <= 64
        && args
            .tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        bail!(
            "tenant name '{}' must be 1-64 characters of [A-Za-z0-9_-]",
            args.tenant
        );
    }
    let token = new_token()?;
    let hash = nearstore_runtime::server::auth::token_hash(&token);
    println!(
        "# token for tenant {} (shown once: give it to the tenant, keep it secret):",
        args.tenant
    );
    println!("#   {token}");
    println!("# add to the device's TOML file (--config):");
    println!("[[tenants]]");
    println!("name = \"{}\"", args.tenant);
    println!("token_sha256 = \"{hash}\"");
    println!("admin = {}", args.admin);
    Ok(())
}
