//! The catalog commands: `nearstore tables` (list), `describe` (columns and objects) and
//! `drop`.

use anyhow::Result;

use crate::{DeviceArg, TableArgs};

/// `nearstore tables`: one line per table.
pub(crate) async fn tables(d: DeviceArg) -> Result<()> {
    let mut c = d.connect().await?;
    let tables = c.tables().await?;
    if tables.is_empty() {
        println!("(no tables)");
    }
    for t in tables {
        println!(
            "{:<24} {:>12} rows {:>12} bytes {:>3} objects {:>3} columns",
            t.name,
            t.rows,
            t.bytes,
            t.objects.len(),
            t.columns.len()
        );
    }
    Ok(())
}

/// `nearstore describe`: a table's size, columns and objects.
pub(crate) async fn describe(a: TableArgs) -> Result<()> {
    let mut c = a.device.connect().await?;
    let t = c.describe(&a.table).await?;
    println!("table {}: {} rows, {} bytes", t.name, t.rows, t.bytes);
    for col in &t.columns {
        println!(
            "  {:<24} {}{}",
            col.name,
            col.data_type,
            if col.nullable { "" } else { " NOT NULL" }
        );
    }
    for o in &t.objects {
        println!(
            "  object {} rows={} bytes={} row_groups={} sha256={}",
            o.id, o.rows, o.bytes, o.row_groups, o.sha256
        );
    }
    Ok(())
}

/// `nearstore drop`.
pub(crate) async fn drop_table(a: TableArgs) -> Result<()> {
    let mut c = a.device.connect().await?;
    c.drop_table(&a.table).await?;
    println!("dropped {}", a.table);
    Ok(())
}
