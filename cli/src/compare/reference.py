"""Reference engines for `nearstore bench compare`: the same SQL run by DuckDB and by DataFusion
directly on the device's Parquet file, as a user would run it instead of offloading.

Reads a JSON request on stdin: {"parquet": PATH, "threads": N, "runs": N, "out": PATH,
"queries": [{"name": ..., "sql": ...}]} and writes one JSON object to the file "out" (stdout
is left to the engines, which may print progress):
{"engines": {"duckdb": VERSION, ...}, "results": {NAME: {ENGINE: {"ms": MEDIAN, "rows": N}}},
"errors": {ENGINE: MESSAGE}}. An engine that is not installed is reported under "errors".
"""

import json
import statistics
import sys
import time


def timed(run, runs):
    times = []
    rows = 0
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        rows = run()
        times.append((time.perf_counter() - t) * 1e3)
    return {"ms": statistics.median(times), "rows": rows}


def duckdb_engine(req):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {int(req['threads'])}")
    con.execute("SET enable_progress_bar = false")
    path = req["parquet"].replace("'", "''")
    con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet('{path}')")

    def runner(sql):
        # Arrow out, as the device's client gets it (no per-row Python objects).
        return lambda: con.execute(sql).to_arrow_table().num_rows

    return duckdb.__version__, runner


def datafusion_engine(req):
    import datafusion

    config = datafusion.SessionConfig().with_target_partitions(int(req["threads"]))
    ctx = datafusion.SessionContext(config)
    ctx.register_parquet("lineitem", req["parquet"])

    def runner(sql):
        return lambda: sum(b.num_rows for b in ctx.sql(sql).collect())

    return datafusion.__version__, runner


def main():
    req = json.load(sys.stdin)
    out = {"engines": {}, "results": {}, "errors": {}}
    for name, make in (("duckdb", duckdb_engine), ("datafusion", datafusion_engine)):
        try:
            version, runner = make(req)
        except Exception as e:  # not installed, or cannot open the file
            out["errors"][name] = f"{type(e).__name__}: {e}"
            continue
        out["engines"][name] = version
        for q in req["queries"]:
            try:
                r = timed(runner(q["sql"]), req["runs"])
            except Exception as e:
                out["errors"][f"{name}/{q['name']}"] = f"{type(e).__name__}: {e}"
                continue
            out["results"].setdefault(q["name"], {})[name] = r
    with open(req["out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
