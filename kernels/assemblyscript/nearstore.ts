// nearstore.ts: the AssemblyScript SDK for Nearstore kernels (kernel ABI 1).
//
// A kernel is one AssemblyScript file beside this one. It imports what it uses from
// "./nearstore", re-exports `nearstore_abi_version` and `nearstore_alloc`, exports the
// functions of its kind (filter: `nearstore_filter` and `nearstore_filter_bitmap`; map:
// `nearstore_map`; aggregate: `nearstore_agg_update` and `nearstore_agg_finish`), each one line
// that hands the kernel's function to the runner below, and gives its manifest in comment lines
// `// nearstore.manifest key=value`, which `nearstore kernel build` embeds as the module's
// `nearstore.manifest` custom section. Build it with `nearstore kernel build FILE.ts`.
//
// Everything the device hands a kernel lives in the kernel's own linear memory in Arrow
// layout (values, a validity bitmap LSB first, int32 string offsets), read here through
// unmanaged views with load<T>(): a kernel allocates nothing per batch. Work a block of
// BLOCK (64) rows at a time. The constants are the ABI's (the Rust crate nearstore-kernel-abi);
// a Nearstore test fails when they disagree.

export const ABI_VERSION: u32 = 1;
export const BLOCK: u32 = 64;
export const BATCH_DESC_BYTES: u32 = 24;
export const COLUMN_DESC_BYTES: u32 = 32;
export const STATE_SIZE_MAX: u32 = 65536;

// Column types (ColumnDesc.typeCode).
export const TYPE_BOOL: u32 = 1;
export const TYPE_INT32: u32 = 2;
export const TYPE_INT64: u32 = 3;
export const TYPE_FLOAT64: u32 = 4;
export const TYPE_DECIMAL128: u32 = 5;
export const TYPE_DATE32: u32 = 6;
export const TYPE_UTF8: u32 = 7;

// Status codes a kernel returns (negative).
export const BAD_INPUT: i32 = -1;
export const OUTPUT_TOO_SMALL: i32 = -2;
export const UNSUPPORTED: i32 = -3;
export const NO_MEMORY: i32 = -4;
export const OVERFLOW: i32 = -5;
export const DIVIDE_BY_ZERO: i32 = -6;

// @ts-ignore: decorator
@external("nearstore", "log")
declare function hostLog(ptr: u32, len: u32): void;
// @ts-ignore: decorator
@external("nearstore", "abort")
declare function hostAbort(code: u32): void;

/** Logs a message (the device keeps the first 100 lines of a call, 1 KiB each). */
export function log(message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(changetype<u32>(bytes), bytes.byteLength);
}

/** Stops the kernel: the query fails with the code. */
export function stop(code: u32): void {
  hostAbort(code);
}

/** What a failed assertion or bounds check calls (`--use abort=nearstore/abortKernel`). */
export function abortKernel(
  message: string | null,
  file: string | null,
  line: u32,
  column: u32,
): void {
  hostAbort(0xa5);
}

/** The ABI version (export it: `export { nearstore_abi_version } from "./nearstore"`). */
export function nearstore_abi_version(): u32 {
  return ABI_VERSION;
}

/** Memory for the device's arena (export it as `nearstore_alloc`); 0 on failure. */
export function nearstore_alloc(size: u32, align: u32): u32 {
  if (align == 0) align = 1;
  if ((align & (align - 1)) != 0) return 0;
  const p = <u32>heap.alloc(<usize>size + align);
  return (p + align - 1) & ~(align - 1);
}

/** The mask of the first `n` lanes of a block. */
// @ts-ignore: decorator
@inline
export function lanes(n: u32): u64 {
  return n >= 64 ? <u64>-1 : (<u64>1 << n) - 1;
}

/** 64 bits of a bitmap from bit `base` (a multiple of 64), zero past `rows`. */
function bits(ptr: u32, rows: u32, base: u32): u64 {
  const n = rows > base ? min(rows - base, 64) : 0;
  let w: u64 = 0;
  for (let k: u32 = 0; k < (n + 7) / 8; k++) {
    w |= <u64>load<u8>(ptr + base / 8 + k) << (8 * k);
  }
  return w & lanes(n);
}

/** A column descriptor as the device wrote it, with typed access to its values. */
@unmanaged
export class ColumnDesc {
  typeCode: u32;
  scale: u32;
  valuesPtr: u32;
  valuesLen: u32;
  validityPtr: u32;
  offsetsPtr: u32;
  offsetsLen: u32;
  storedWidth: u32;

  /** Value `i` of a FLOAT64 column. */
  // @ts-ignore: decorator
  @inline f64(i: u32): f64 {
    return load<f64>(this.valuesPtr + (i << 3));
  }
  /** Value `i` of an INT64 column. */
  // @ts-ignore: decorator
  @inline i64(i: u32): i64 {
    return load<i64>(this.valuesPtr + (i << 3));
  }
  /** Value `i` of an INT32 or DATE32 column. */
  // @ts-ignore: decorator
  @inline i32(i: u32): i32 {
    return load<i32>(this.valuesPtr + (i << 2));
  }
  /** Whether row `i` is not NULL. */
  isValid(i: u32): bool {
    return this.validityPtr == 0 || ((load<u8>(this.validityPtr + i / 8) >> (i % 8)) & 1) != 0;
  }
  /** Validity of rows base..base+63 as a mask (bit j: row base + j exists and is not NULL). */
  validityBlock(rows: u32, base: u32): u64 {
    if (this.validityPtr == 0) return lanes(rows > base ? rows - base : 0);
    return bits(this.validityPtr, rows, base);
  }
  /** Values of a BOOL column's rows base..base+63 as a mask. */
  boolBlock(rows: u32, base: u32): u64 {
    return bits(this.valuesPtr, rows, base);
  }
  /** Address of row `i`'s bytes in a UTF8 column. */
  strPtr(i: u32): u32 {
    return this.valuesPtr + load<i32>(this.offsetsPtr + (i << 2));
  }
  /** Length in bytes of row `i` of a UTF8 column. */
  strLen(i: u32): u32 {
    return load<i32>(this.offsetsPtr + ((i + 1) << 2)) - load<i32>(this.offsetsPtr + (i << 2));
  }
}

/** A batch as a kernel sees it (one instance, refilled per call). For an aggregate kernel
 * the group column is not among its columns: column 0 is the kernel's first argument. */
export class Batch {
  rows: u32 = 0;
  ncols: u32 = 0;
  colsPtr: u32 = 0;
  paramsPtr: u32 = 0;
  paramsLen: u32 = 0;
  /** Where nextF64 / nextI64 read next. */
  cursor: u32 = 0;
  /** Set when nextF64 or nextI64 found no number where one was asked for. */
  paramError: bool = false;

  /** Reads the descriptor at `desc`; false for another ABI version. */
  read(desc: u32): bool {
    if (load<u32>(desc) != ABI_VERSION) return false;
    this.rows = load<u32>(desc, 4);
    this.ncols = load<u32>(desc, 8);
    this.colsPtr = load<u32>(desc, 12);
    this.paramsPtr = load<u32>(desc, 16);
    this.paramsLen = load<u32>(desc, 20);
    this.cursor = this.paramsPtr;
    this.paramError = false;
    return true;
  }

  /** Column `i`, or null past the last. */
  column(i: u32): ColumnDesc | null {
    if (i >= this.ncols) return null;
    return changetype<ColumnDesc>(this.colsPtr + i * COLUMN_DESC_BYTES);
  }

  /** The next comma-separated number of the parameters (sign, digits, a fraction, an
   * exponent; exact for up to 19 significant digits with an exponent of at most 22 either
   * way); NaN, and paramError set, when there is none. */
  nextF64(): f64 {
    const v = this.parseF64();
    if (isNaN(v)) this.paramError = true;
    return v;
  }

  /** The next comma-separated integer of the parameters; 0, and paramError set, when there
   * is none or it leaves int64's range. */
  nextI64(): i64 {
    const end = this.paramsPtr + this.paramsLen;
    let s = this.cursor;
    while (s < end && load<u8>(s) == 32) s++;
    let neg = false;
    if (s < end && (load<u8>(s) == 45 || load<u8>(s) == 43)) {
      neg = load<u8>(s) == 45;
      s++;
    }
    let v: u64 = 0;
    let any = false;
    for (; s < end && load<u8>(s) >= 48 && load<u8>(s) <= 57; s++) {
      const d = <u64>(load<u8>(s) - 48);
      if (v > (<u64>0x8000000000000000 - d) / 10) {
        this.paramError = true;
        return 0;
      }
      v = v * 10 + d;
      any = true;
    }
    while (s < end && load<u8>(s) == 32) s++;
    const sepOk = s == end || load<u8>(s) == 44;
    if (!any || !sepOk || (!neg && v > <u64>0x7fffffffffffffff)) {
      this.paramError = true;
      return 0;
    }
    if (s < end) s++;
    this.cursor = s;
    return neg ? <i64>(0 - v) : <i64>v;
  }

  private parseF64(): f64 {
    const end = this.paramsPtr + this.paramsLen;
    let s = this.cursor;
    while (s < end && load<u8>(s) == 32) s++;
    let neg = false;
    if (s < end && (load<u8>(s) == 45 || load<u8>(s) == 43)) {
      neg = load<u8>(s) == 45;
      s++;
    }
    let m: u64 = 0;
    let digits = 0;
    let exp10 = 0;
    let any = false;
    for (; s < end && load<u8>(s) >= 48 && load<u8>(s) <= 57; s++) {
      any = true;
      if (digits < 19) {
        m = m * 10 + <u64>(load<u8>(s) - 48);
        if (m != 0) digits++;
      } else exp10++;
    }
    if (s < end && load<u8>(s) == 46) {
      for (s++; s < end && load<u8>(s) >= 48 && load<u8>(s) <= 57; s++) {
        any = true;
        if (digits < 19) {
          m = m * 10 + <u64>(load<u8>(s) - 48);
          if (m != 0) digits++;
          exp10--;
        }
      }
    }
    if (!any) return NaN;
    if (s < end && (load<u8>(s) == 101 || load<u8>(s) == 69)) {
      s++;
      let eneg = false;
      let e = 0;
      let edig = false;
      if (s < end && (load<u8>(s) == 45 || load<u8>(s) == 43)) {
        eneg = load<u8>(s) == 45;
        s++;
      }
      for (; s < end && load<u8>(s) >= 48 && load<u8>(s) <= 57; s++) {
        edig = true;
        if (e < 10000) e = e * 10 + (load<u8>(s) - 48);
      }
      if (!edig) return NaN;
      exp10 += eneg ? -e : e;
    }
    let v = <f64>m;
    while (exp10 > 22) {
      v *= 1e22;
      exp10 -= 22;
    }
    while (exp10 < -22) {
      v /= 1e22;
      exp10 += 22;
    }
    v = exp10 >= 0 ? v * pow10(exp10) : v / pow10(-exp10);
    while (s < end && load<u8>(s) == 32) s++;
    if (s < end && load<u8>(s) == 44) s++;
    this.cursor = s;
    return neg ? -v : v;
  }

  /** Whether every parameter has been read. */
  paramsDone(): bool {
    return this.cursor == this.paramsPtr + this.paramsLen;
  }
}

/** 10^k for k in 0..=22, exactly. */
function pow10(k: i32): f64 {
  let v = 1.0;
  for (let i = 0; i < k; i++) v *= 10;
  return v;
}

const BATCH = new Batch();

/** Where a filter writes the rows it keeps, a block at a time, in order (selectBlock). */
export class Selection {
  bitsPtr: u32 = 0; // bitmap mode
  indexPtr: u32 = 0; // index mode
  cap: u32 = 0;
  count: u32 = 0;
  rows: u32 = 0;

  /** Keeps the rows base + j whose bit j is set in `mask`; OUTPUT_TOO_SMALL when full. */
  selectBlock(base: u32, mask: u64): i32 {
    mask &= lanes(this.rows > base ? this.rows - base : 0);
    if (this.bitsPtr != 0) {
      if (base / 64 >= this.cap) return mask != 0 ? OUTPUT_TOO_SMALL : 0;
      store<u64>(this.bitsPtr + (base / 64) * 8, mask);
      this.count += <u32>popcnt(mask);
      return 0;
    }
    while (mask != 0) {
      if (this.count >= this.cap) return OUTPUT_TOO_SMALL;
      store<u32>(this.indexPtr + this.count * 4, base + <u32>ctz(mask));
      this.count++;
      mask &= mask - 1;
    }
    return 0;
  }
}

const SELECTION = new Selection();

/** Runs a filter for `nearstore_filter` (bitmap false) or `nearstore_filter_bitmap` (true). */
export function runFilter(
  desc: u32,
  out: u32,
  cap: u32,
  bitmap: bool,
  f: (b: Batch, s: Selection) => i32,
): i32 {
  if (!BATCH.read(desc)) return BAD_INPUT;
  const s = SELECTION;
  s.cap = cap;
  s.count = 0;
  s.rows = BATCH.rows;
  if (bitmap) {
    if (out % 8 != 0 || cap < (BATCH.rows + 63) / 64) return BAD_INPUT;
    s.bitsPtr = out;
    s.indexPtr = 0;
    memory.fill(out, 0, ((BATCH.rows + 63) / 64) * 8);
  } else {
    if (out % 4 != 0) return BAD_INPUT;
    s.bitsPtr = 0;
    s.indexPtr = out;
  }
  const e = f(BATCH, s);
  return e != 0 ? e : <i32>s.count;
}

/** One value per row (the manifest's output: int64 or float64), valid unless made NULL. */
export class MapOutput {
  valuesPtr: u32 = 0;
  validityPtr: u32 = 0;
  rows: u32 = 0;

  setI64(i: u32, v: i64): void {
    if (i < this.rows) store<i64>(this.valuesPtr + (i << 3), v);
  }
  setF64(i: u32, v: f64): void {
    if (i < this.rows) store<f64>(this.valuesPtr + (i << 3), v);
  }
  setNull(i: u32): void {
    if (i < this.rows) {
      const at = this.validityPtr + (i / 64) * 8;
      store<u64>(at, load<u64>(at) & ~(<u64>1 << (i % 64)));
    }
  }
  /** Makes NULL the rows of the block at `base` whose bit in `valid` is clear. */
  keepValid(base: u32, valid: u64): void {
    if (base < this.rows) {
      const at = this.validityPtr + (base / 64) * 8;
      store<u64>(at, load<u64>(at) & valid);
    }
  }
}

const MAP_OUTPUT = new MapOutput();

/** Runs a map kernel for `nearstore_map`. */
export function runMap(desc: u32, out: u32, rows: u32, f: (b: Batch, o: MapOutput) => i32): i32 {
  if (!BATCH.read(desc)) return BAD_INPUT;
  if (BATCH.rows != rows || out % 8 != 0) return BAD_INPUT;
  const o = MAP_OUTPUT;
  o.valuesPtr = out;
  o.validityPtr = out + rows * 8;
  o.rows = rows;
  memory.fill(out, 0, rows * 8);
  for (let w: u32 = 0; w < (rows + 63) / 64; w++) {
    store<u64>(o.validityPtr + w * 8, lanes(rows - w * 64));
  }
  const e = f(BATCH, o);
  return e != 0 ? e : <i32>rows;
}

/** Each row's group and the groups' states (`stateSize` bytes each, zero until written). */
export class Groups {
  idsPtr: u32 = 0; // 0: every row is in group 0
  statesPtr: u32 = 0;
  groups: u32 = 0;
  stateSize: u32 = 0;

  /** Address of the state of row `i`'s group. */
  stateOf(i: u32): u32 {
    const g: u32 = this.idsPtr == 0 ? 0 : load<u32>(this.idsPtr + (i << 2));
    return this.statesPtr + g * this.stateSize;
  }
}

const GROUPS = new Groups();

/** Runs an aggregate kernel's update for `nearstore_agg_update`. */
export function runUpdate(
  desc: u32,
  state: u32,
  groups: u32,
  stateSize: u32,
  f: (b: Batch, g: Groups) => i32,
): i32 {
  if (!BATCH.read(desc) || BATCH.ncols == 0) return BAD_INPUT;
  const g = changetype<ColumnDesc>(BATCH.colsPtr);
  GROUPS.statesPtr = state;
  GROUPS.groups = groups;
  GROUPS.stateSize = stateSize;
  if (g.typeCode == TYPE_INT32) {
    GROUPS.idsPtr = g.valuesPtr;
    for (let i: u32 = 0; i < BATCH.rows; i++) {
      if (load<u32>(g.valuesPtr + (i << 2)) >= groups) return BAD_INPUT;
    }
  } else if (g.typeCode != 0 || groups == 0) {
    return BAD_INPUT;
  } else {
    GROUPS.idsPtr = 0;
  }
  BATCH.colsPtr += COLUMN_DESC_BYTES;
  BATCH.ncols -= 1;
  return f(BATCH, GROUPS);
}

/** One group's result: one value, none (NULL), or a list (list_int64). */
export class AggOutput {
  outPtr: u32 = 0;
  cap: u32 = 0;
  len: u32 = 0;

  pushI64(v: i64): i32 {
    if (this.len >= this.cap) return OUTPUT_TOO_SMALL;
    store<i64>(this.outPtr + this.len * 8, v);
    this.len++;
    return 0;
  }
  pushF64(v: f64): i32 {
    return this.pushI64(reinterpret<i64>(v));
  }
}

const AGG_OUTPUT = new AggOutput();

/** Runs an aggregate kernel's finish for `nearstore_agg_finish`. */
export function runFinish(state: u32, out: u32, cap: u32, f: (state: u32, o: AggOutput) => i32): i32 {
  if (out % 8 != 0) return BAD_INPUT;
  AGG_OUTPUT.outPtr = out;
  AGG_OUTPUT.cap = cap;
  AGG_OUTPUT.len = 0;
  const e = f(state, AGG_OUTPUT);
  return e != 0 ? e : <i32>AGG_OUTPUT.len;
}
