"""Reference engines for `nearstore bench compare`: the same SQL run by DuckDB and by DataFusion
directly on the device's Parquet file, as a user would run it instead of offloading.

Reads a JSON request, one line on stdin: {"parquet": PATH, "threads": N, "runs": N, "out": PATH,
"dir": PATH, "queries": [{"name": ..., "sql": ...}]} and writes one JSON object to the file
"out" (stdout is left to the engines, which may print progress):
{"engines": {"duckdb": VERSION, ...}, "results": {NAME: {ENGINE: {"ms": WARM_MEDIAN,
"cold_ms": FIRST_RUN, "rows": N, "arrow": PATH}}}, "errors": {ENGINE: MESSAGE}}. Each result
is written as an Arrow IPC file under "dir" for the harness to compare value by value. The
first run of a query is the cold one; the warm figure is the median of "runs" runs after it.
An engine that is not installed is reported under "errors". With "serve": true, DuckDB
instead runs one query at a time as the harness asks (`serve`), to be timed alternately with
the device.
"""

import json
import os
import statistics
import sys
import time


def timed(run, runs):
    t = time.perf_counter()
    table = run()
    cold = (time.perf_counter() - t) * 1e3
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        table = run()
        times.append((time.perf_counter() - t) * 1e3)
    return {"ms": statistics.median(times), "cold_ms": cold, "rows": table.num_rows}, table


def write_arrow(table, path):
    import pyarrow.ipc

    with pyarrow.ipc.new_file(path, table.schema) as w:
        w.write_table(table)


def duckdb_engine(req):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {int(req['threads'])}")
    con.execute("SET enable_progress_bar = false")
    path = req["parquet"].replace("'", "''")
    con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet('{path}')")

    def runner(sql):
        # Arrow out, as the device's client gets it (no per-row Python objects).
        return lambda: con.sql(sql).to_arrow_table()

    return duckdb.__version__, runner


def datafusion_engine(req):
    import datafusion

    config = datafusion.SessionConfig().with_target_partitions(int(req["threads"]))
    ctx = datafusion.SessionContext(config)
    ctx.register_parquet("lineitem", req["parquet"])

    def runner(sql):
        return lambda: ctx.sql(sql).to_arrow_table()

    return datafusion.__version__, runner


def serve(req):
    """Side by side with the device: DuckDB only, its setup as above. After a line `ready`,
    each line read names a query by its index in "queries"; the query runs once, and its wall
    time goes to stdout as a line `ms MILLISECONDS`."""
    _, runner = duckdb_engine(req)
    runs = [runner(q["sql"]) for q in req["queries"]]
    print("ready", flush=True)
    for line in sys.stdin:
        run = runs[int(line)]
        t = time.perf_counter()
        run()
        print(f"ms {(time.perf_counter() - t) * 1e3}", flush=True)


def main():
    # The request is the first line (the side-by-side mode reads query numbers after it).
    req = json.loads(sys.stdin.readline())
    if req.get("serve"):
        serve(req)
        return
    out = {"engines": {}, "results": {}, "errors": {}}
    for name, make in (("duckdb", duckdb_engine), ("datafusion", datafusion_engine)):
        try:
            version, runner = make(req)
        except Exception as e:  # not installed, or cannot open the file
            out["errors"][name] = f"{type(e).__name__}: {e}"
            continue
        out["engines"][name] = version
        for i, q in enumerate(req["queries"]):
            try:
                r, table = timed(runner(q["sql"]), req["runs"])
                r["arrow"] = os.path.join(req["dir"], f"{name}-{i}.arrow")
                write_arrow(table, r["arrow"])
            except Exception as e:
                out["errors"][f"{name}/{q['name']}"] = f"{type(e).__name__}: {e}"
                continue
            out["results"].setdefault(q["name"], {})[name] = r
    with open(req["out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
