// bbox: keeps the rows whose point (x = argument 0, y = argument 1, both float64) lies in the
// box given as parameters `xmin,ymin,xmax,ymax` (edges included), as SQL's
// `x BETWEEN xmin AND xmax AND y BETWEEN ymin AND ymax` does. Rows with a NULL coordinate are
// not kept. The AssemblyScript twin of the Rust example kernels/examples/bbox.
//
// nearstore.manifest abi=1
// nearstore.manifest kind=filter
// nearstore.manifest name=bbox
// nearstore.manifest signature=float64,float64;params=xmin,ymin,xmax,ymax
import { BAD_INPUT, BLOCK, Batch, Selection, TYPE_FLOAT64, runFilter } from "../nearstore";
export { nearstore_abi_version, nearstore_alloc } from "../nearstore";

export function nearstore_filter(desc: u32, out: u32, cap: u32): i32 {
  return runFilter(desc, out, cap, false, bbox);
}
export function nearstore_filter_bitmap(desc: u32, out: u32, words: u32): i32 {
  return runFilter(desc, out, words, true, bbox);
}

function bbox(b: Batch, sel: Selection): i32 {
  const xmin = b.nextF64();
  const ymin = b.nextF64();
  const xmax = b.nextF64();
  const ymax = b.nextF64();
  if (b.paramError || !b.paramsDone()) {
    return BAD_INPUT;
  }
  const xc = b.column(0);
  const yc = b.column(1);
  if (xc == null || yc == null) return BAD_INPUT;
  if (xc.typeCode != TYPE_FLOAT64 || yc.typeCode != TYPE_FLOAT64) return BAD_INPUT;
  for (let base: u32 = 0; base < b.rows; base += BLOCK) {
    const n = min(BLOCK, b.rows - base);
    let m: u64 = 0;
    for (let j: u32 = 0; j < n; j++) {
      const x = xc.f64(base + j);
      const y = yc.f64(base + j);
      // Non-short-circuit: no branch per row.
      const inside = <u32>(x >= xmin) & <u32>(x <= xmax) & <u32>(y >= ymin) & <u32>(y <= ymax);
      m |= <u64>inside << j;
    }
    const e = sel.selectBlock(base, m & xc.validityBlock(b.rows, base) & yc.validityBlock(b.rows, base));
    if (e != 0) return e;
  }
  return 0;
}
