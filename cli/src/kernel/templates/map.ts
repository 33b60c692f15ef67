// {name}: a Nearstore map kernel. One float64 value per row: its first argument (a float64
// column) times the factor given as the parameter; NULL where the argument is NULL.
//
// Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
// --file data.parquet --args my_column --params 2.5; in SQL: SELECT {lib}(my_column, '2.5').
//
// nearstore.manifest abi=1
// nearstore.manifest kind=map
// nearstore.manifest name={name}
// nearstore.manifest output=float64
// nearstore.manifest signature=float64;params=factor
import { BAD_INPUT, BLOCK, Batch, MapOutput, TYPE_FLOAT64, runMap } from "./nearstore";
export { nearstore_abi_version, nearstore_alloc } from "./nearstore";

export function nearstore_map(desc: u32, out: u32, rows: u32): i32 {
  return runMap(desc, out, rows, {lib});
}

function {lib}(b: Batch, out: MapOutput): i32 {
  const factor = b.nextF64();
  if (b.paramError || !b.paramsDone()) return BAD_INPUT;
  const col = b.column(0);
  if (col == null || col.typeCode != TYPE_FLOAT64) return BAD_INPUT;
  for (let base: u32 = 0; base < b.rows; base += BLOCK) {
    const n = min(BLOCK, b.rows - base);
    for (let j: u32 = 0; j < n; j++) {
      out.setF64(base + j, col.f64(base + j) * factor);
    }
    out.keepValid(base, col.validityBlock(b.rows, base));
  }
  return 0;
}
