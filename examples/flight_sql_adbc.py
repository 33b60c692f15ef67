"""Any Flight SQL client reaches the devices through `nearstore gateway`: this is ADBC's
Python driver (as pandas, polars and DBeaver's users would use it) running TPC-H queries, a
prepared statement with a bound parameter, the catalog listing, polars, and error cases.

    python flight_sql_adbc.py grpc://127.0.0.1:50060 [TOKEN [USER:PASSWORD]]

Prints one JSON object: each query's rows (as sorted lists of strings), the tables and
columns `adbc_get_objects` lists, and each error case's exception class and message.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl

QUERIES = {
    "q1": """select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty,
                    sum(l_extendedprice) as sum_base_price, avg(l_discount) as avg_disc,
                    count(*) as count_order
             from lineitem where l_shipdate <= date '1998-09-02'
             group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus""",
    "q6": """select sum(l_extendedprice * l_discount) as revenue from lineitem
             where l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01'
               and l_discount between 0.05 and 0.07 and l_quantity < 24""",
    "join": """select o.o_orderpriority, count(*) as n from orders o
               join lineitem l on l.l_orderkey = o.o_orderkey
               where l.l_commitdate < l.l_receiptdate
               group by o.o_orderpriority order by o.o_orderpriority""",
}


def cell(v):
    """A value as text; floats to 6 significant digits, as `1.23457e4`."""
    if isinstance(v, float):
        mantissa, exponent = f"{v:.5e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return str(v)


def rows(table):
    """A table's rows as sorted strings."""
    return sorted("|".join(cell(v) for v in r.values()) for r in table.to_pylist())


def q6_alone(uri, token):
    """Q6 on a connection of its own (one of the concurrent clients)."""
    with connect(uri, token) as conn, conn.cursor() as cur:
        cur.execute(QUERIES["q6"])
        return rows(cur.fetch_arrow_table())


def connect(uri, token):
    kwargs = {}
    if token:
        kwargs["db_kwargs"] = {"adbc.flight.sql.authorization_header": f"Bearer {token}"}
    return flight_sql.connect(uri, **kwargs)


def main():
    uri = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) > 2 else None
    basic = sys.argv[3] if len(sys.argv) > 3 else None
    out = {"queries": {}, "errors": {}}
    with connect(uri, token) as conn:
        with conn.cursor() as cur:
            for name, sql in QUERIES.items():
                cur.execute(sql)
                out["queries"][name] = rows(cur.fetch_arrow_table())
            # A prepared statement with a bound parameter.
            cur.execute("select count(*) as n from lineitem where l_quantity < $1", parameters=(24,))
            out["queries"]["param"] = rows(cur.fetch_arrow_table())
            cur.execute("select count(*) as n from lineitem where l_quantity < ?", parameters=(24,))
            out["queries"]["param_qmark"] = rows(cur.fetch_arrow_table())
            for name, sql in {"syntax": "selec 1", "unknown_table": "select * from nope"}.items():
                try:
                    cur.execute(sql)
                    cur.fetch_arrow_table()
                    out["errors"][name] = None
                except Exception as e:  # the driver's DB-API error classes
                    out["errors"][name] = [type(e).__name__, str(e)]
        objects = conn.adbc_get_objects().read_all().to_pylist()
        tables = {}
        for catalog in objects:
            for schema in catalog["catalog_db_schemas"] or []:
                for t in schema["db_schema_tables"] or []:
                    tables[t["table_name"]] = [c["column_name"] for c in t["table_columns"] or []]
        out["tables"] = tables
        df = pl.read_database("select count(*) as n from lineitem where l_quantity < 24", connection=conn)
        out["polars"] = df.to_dicts()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: q6_alone(uri, token), range(16)))
    out["concurrent"] = sum(a == out["queries"]["q6"] for a in answers)
    if basic:
        # A user name and password: the driver's handshake trades them for the tenant's token.
        user, password = basic.split(":", 1)
        with flight_sql.connect(uri, db_kwargs={"username": user, "password": password}) as conn:
            with conn.cursor() as cur:
                cur.execute(QUERIES["q6"])
                out["queries"]["q6_basic_auth"] = rows(cur.fetch_arrow_table())
    try:
        with connect(uri, "wrong-token") as bad:
            with bad.cursor() as cur:
                cur.execute("select count(*) from lineitem")
                cur.fetch_arrow_table()
        out["errors"]["wrong_token"] = None
    except Exception as e:
        out["errors"]["wrong_token"] = [type(e).__name__, str(e)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
