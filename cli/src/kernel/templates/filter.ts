// {name}: a Nearstore filter kernel. It keeps the rows whose first argument (an int64 column)
// is greater than the number given as the parameter.
//
// Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
// --file data.parquet --args my_column --params 42; in SQL: WHERE {lib}(my_column, '42').
//
// nearstore.manifest abi=1
// nearstore.manifest kind=filter
// nearstore.manifest name={name}
// nearstore.manifest signature=int64;params=threshold
import { BAD_INPUT, BLOCK, Batch, Selection, TYPE_INT64, runFilter } from "./nearstore";
export { nearstore_abi_version, nearstore_alloc } from "./nearstore";

export function nearstore_filter(desc: u32, out: u32, cap: u32): i32 {
  return runFilter(desc, out, cap, false, {lib});
}
export function nearstore_filter_bitmap(desc: u32, out: u32, words: u32): i32 {
  return runFilter(desc, out, words, true, {lib});
}

function {lib}(b: Batch, sel: Selection): i32 {
  const threshold = b.nextI64();
  if (b.paramError || !b.paramsDone()) return BAD_INPUT;
  const col = b.column(0);
  if (col == null || col.typeCode != TYPE_INT64) return BAD_INPUT;
  for (let base: u32 = 0; base < b.rows; base += BLOCK) {
    const n = min(BLOCK, b.rows - base);
    let keep: u64 = 0;
    for (let j: u32 = 0; j < n; j++) {
      keep |= <u64>(col.i64(base + j) > threshold) << j;
    }
    const e = sel.selectBlock(base, keep & col.validityBlock(b.rows, base));
    if (e != 0) return e;
  }
  return 0;
}
