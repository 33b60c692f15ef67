// {name}: a Nearstore aggregate kernel. Per group, the sum of the squares of its first
// argument (a float64 column); NULLs are skipped, and a group with no value is NULL.
//
// Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
// --file data.parquet --args my_column; in SQL: SELECT g, {lib}(my_column) FROM t GROUP BY g.
//
// nearstore.manifest abi=1
// nearstore.manifest kind=aggregate
// nearstore.manifest name={name}
// nearstore.manifest output=float64
// nearstore.manifest state_size=16
// nearstore.manifest signature=float64
import { AggOutput, BAD_INPUT, Batch, Groups, TYPE_FLOAT64, runFinish, runUpdate } from "./nearstore";
export { nearstore_abi_version, nearstore_alloc } from "./nearstore";

// Per group: the sum (f64) at 0, the count of values (i64) at 8. The manifest says the same.
const STATE_SIZE: u32 = 16;

export function nearstore_agg_update(desc: u32, state: u32, groups: u32): i32 {
  return runUpdate(desc, state, groups, STATE_SIZE, update);
}
export function nearstore_agg_finish(state: u32, out: u32, cap: u32): i32 {
  return runFinish(state, out, cap, finish);
}

function update(b: Batch, g: Groups): i32 {
  const col = b.column(0);
  if (col == null || col.typeCode != TYPE_FLOAT64) return BAD_INPUT;
  for (let i: u32 = 0; i < b.rows; i++) {
    if (!col.isValid(i)) continue;
    const s = g.stateOf(i);
    const v = col.f64(i);
    store<f64>(s, load<f64>(s) + v * v);
    store<i64>(s, load<i64>(s, 8) + 1, 8);
  }
  return 0;
}

// One group's sum, or nothing (NULL) when no value reached it.
function finish(state: u32, out: AggOutput): i32 {
  return load<i64>(state, 8) > 0 ? out.pushF64(load<f64>(state)) : 0;
}
