//! What the gateway tells a Flight SQL client about itself: its SqlInfo (read-only SQL, no
//! transactions, no Substrait), the SQL types its tables use (`GetXdbcTypeInfo`), and where
//! tables live: DataFusion's default catalog and schema (`datafusion.public`), the names a
//! query may qualify tables with.

use std::sync::LazyLock;

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedTransaction, XdbcDataType,
};

/// The catalog every table is in (DataFusion's default).
pub const CATALOG: &str = "datafusion";
/// The schema every table is in.
pub const SCHEMA: &str = "public";
/// The one table type.
pub const TABLE_TYPE: &str = "TABLE";

/// The gateway's SqlInfo.
pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Nearstore gateway");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().expect("static SqlInfo builds")
});

/// The SQL types of the gateway's tables.
pub static TYPE_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types: [(&str, XdbcDataType, Option<i32>, bool); 8] = [
        ("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(32), true),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(64), true),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53), true),
        ("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), true),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None, false),
        ("DATE", XdbcDataType::XdbcDate, None, false),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, None, false),
    ];
    for (name, data_type, column_size, numeric) in types {
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size,
            literal_prefix: (name == "VARCHAR").then(|| "'".into()),
            literal_suffix: (name == "VARCHAR").then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: name == "VARCHAR",
            searchable: Searchable::Full,
            unsigned_attribute: numeric.then_some(false),
            fixed_prec_scale: name == "DECIMAL",
            auto_increment: numeric.then_some(false),
            local_type_name: Some(name.into()),
            minimum_scale: (name == "DECIMAL").then_some(0),
            maximum_scale: (name == "DECIMAL").then_some(38),
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: numeric.then_some(if name == "DECIMAL" { 10 } else { 2 }),
            interval_precision: None,
        });
    }
    b.build().expect("static type info builds")
});
