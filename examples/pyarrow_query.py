"""Query a Nearstore device from Python with nothing but pyarrow.

    python3 examples/pyarrow_query.py [grpc://127.0.0.1:50051] [TABLE]

The ticket of DoGet is the JSON plan; the last message of the stream carries the device's
statistics as JSON in its app_metadata.
"""
import json
import sys

import pyarrow as pa
import pyarrow.flight as flight

url = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"
table = sys.argv[2] if len(sys.argv) > 2 else "lineitem"

plan = {
    "version": 1,
    "table": table,
    "filter": {"cmp": {"op": "<", "left": {"col": "l_quantity"}, "right": {"lit": 24}}},
    "aggregates": [
        {"func": "count_star", "name": "n"},
        {"func": "sum", "expr": {"col": "l_extendedprice"}, "name": "revenue"},
    ],
}

client = flight.FlightClient(url)
reader = client.do_get(flight.Ticket(json.dumps(plan).encode()))
batches, stats = [], None
while True:
    try:
        chunk = reader.read_chunk()
    except StopIteration:
        break
    if chunk.data is not None:
        batches.append(chunk.data)
    if chunk.app_metadata is not None:
        stats = json.loads(chunk.app_metadata.to_pybytes())
result = pa.Table.from_batches(batches, schema=reader.schema)
print(result.to_pylist())
print(f"device read {stats['bytes_read_media']} bytes, sent {stats['bytes_sent']}")
