/*
 * nearstore_kernel.h: the C SDK for Nearstore kernels (kernel ABI 1). One header, no libc.
 *
 * A kernel is one C file that includes this header once, defines its function and names it
 * with one of NEARSTORE_FILTER, NEARSTORE_MAP or NEARSTORE_AGGREGATE (which generate the
 * exports the device calls, the allocator and the ABI version), and embeds its manifest with
 * NEARSTORE_MANIFEST. Build it with `nearstore kernel build FILE.c`, which runs
 *
 *   clang --target=wasm32 -msimd128 -mbulk-memory -O3 -nostdlib -Wl,--no-entry -o FILE.wasm FILE.c
 *
 * Everything the device hands a kernel lives in the kernel's own linear memory, in Arrow
 * layout: values, a validity bitmap (bit i of byte i / 8, LSB first; absent when the column
 * has no NULLs) and, for strings, int32 offsets. Work a block of NS_BLOCK (64) rows at a time:
 * the compiler vectorises short fixed loops, and the sandbox's interruption checks (one per
 * loop back-edge) are paid once per block.
 *
 * The constants below are the ABI's (the Rust crate nearstore-kernel-abi); a Nearstore test
 * fails when they disagree.
 */
#ifndef NEARSTORE_KERNEL_H
#define NEARSTORE_KERNEL_H

#include <stddef.h>
#include <stdint.h>

/* ---- The ABI ------------------------------------------------------------------------- */

#define NS_ABI_VERSION 1
#define NS_BLOCK 64
#define NS_BATCH_DESC_BYTES 24
#define NS_COLUMN_DESC_BYTES 32
#define NS_STATE_SIZE_MAX 65536

/* Column types (ns_column_desc.type_code). */
#define NS_TYPE_BOOL 1
#define NS_TYPE_INT32 2
#define NS_TYPE_INT64 3
#define NS_TYPE_FLOAT64 4
#define NS_TYPE_DECIMAL128 5
#define NS_TYPE_DATE32 6
#define NS_TYPE_UTF8 7

/* Status codes a kernel returns (negative). */
#define NS_BAD_INPUT (-1)
#define NS_OUTPUT_TOO_SMALL (-2)
#define NS_UNSUPPORTED (-3)
#define NS_NO_MEMORY (-4)
#define NS_OVERFLOW (-5)
#define NS_DIVIDE_BY_ZERO (-6)

/* Names the device looks for. */
#define NS_EXPORT_ABI_VERSION "nearstore_abi_version"
#define NS_EXPORT_ALLOC "nearstore_alloc"
#define NS_EXPORT_FILTER "nearstore_filter"
#define NS_EXPORT_FILTER_BITMAP "nearstore_filter_bitmap"
#define NS_EXPORT_MAP "nearstore_map"
#define NS_EXPORT_AGG_UPDATE "nearstore_agg_update"
#define NS_EXPORT_AGG_FINISH "nearstore_agg_finish"
#define NS_IMPORT_MODULE "nearstore"
#define NS_IMPORT_LOG "log"
#define NS_IMPORT_ABORT "abort"
#define NS_MANIFEST_SECTION "nearstore.manifest"

/* The batch descriptor and a column descriptor, as the device writes them. */
typedef struct {
    uint32_t abi;
    uint32_t rows;
    uint32_t ncols;
    uint32_t cols_ptr;
    uint32_t params_ptr;
    uint32_t params_len;
} ns_batch_desc;

typedef struct {
    uint32_t type_code;
    uint32_t scale;
    uint32_t values_ptr;
    uint32_t values_len;
    uint32_t validity_ptr; /* 0: no NULLs */
    uint32_t offsets_ptr;  /* UTF8 only */
    uint32_t offsets_len;
    uint32_t stored_width; /* always 0 for user kernels */
} ns_column_desc;

_Static_assert(sizeof(ns_batch_desc) == NS_BATCH_DESC_BYTES, "batch descriptor size");
_Static_assert(sizeof(ns_column_desc) == NS_COLUMN_DESC_BYTES, "column descriptor size");

/* The manifest: `key=value` lines (abi, kind, name, signature, output, state_size), embedded
 * as the module's `nearstore.manifest` custom section. Give it once, at file scope, as string
 * literals (adjacent ones are joined):
 *   NEARSTORE_MANIFEST("abi=1\nkind=filter\nname=grep\nsignature=utf8;params=needle\n")
 */
#define NEARSTORE_MANIFEST(text)                                                             \
    __asm__(".section .custom_section.nearstore.manifest,\"\",@\n.ascii " #text "\n.text\n")

/* ---- Host functions ------------------------------------------------------------------ */

__attribute__((import_module("nearstore"), import_name("log"))) void ns__log(const char *ptr,
                                                                           uint32_t len);
__attribute__((import_module("nearstore"), import_name("abort"), noreturn)) void
ns__abort(uint32_t code);

/* Logs a message (the device keeps the first 100 lines of a call, 1 KiB each). */
static inline void ns_log(const char *msg, uint32_t len) { ns__log(msg, len); }
/* Stops the kernel: the query fails with the code. */
static inline void ns_abort(uint32_t code) { ns__abort(code); }

/* ---- Memory -------------------------------------------------------------------------- */

extern unsigned char __heap_base;
static uint32_t ns__heap_next, ns__heap_end;

/* Allocates `size` bytes aligned to `align` (a power of two) from a bump heap that grows the
 * memory; 0 when the sandbox's memory limit is reached. Nothing is freed: a kernel instance
 * lives for one query. The device's own arena comes from here too. */
static inline uint32_t ns_alloc(uint32_t size, uint32_t align) {
    if (ns__heap_end == 0) {
        ns__heap_next = (uint32_t)(uintptr_t)&__heap_base;
        ns__heap_end = (uint32_t)__builtin_wasm_memory_size(0) * 65536u;
    }
    if (align == 0) align = 1;
    if (align & (align - 1)) return 0;
    uint64_t start = ((uint64_t)ns__heap_next + align - 1) & ~(uint64_t)(align - 1);
    uint64_t end = start + (size ? size : 1);
    if (end > 0xFFFFFFFFull) return 0;
    if (end > ns__heap_end) {
        uint64_t pages = (end - ns__heap_end + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
        ns__heap_end += (uint32_t)(pages * 65536);
    }
    ns__heap_next = (uint32_t)end;
    return (uint32_t)start;
}

/* ---- A batch and its columns ---------------------------------------------------------- */

/* A batch as a kernel sees it. For an aggregate kernel the group column is not among them:
 * column 0 is the kernel's first argument. */
typedef struct {
    uint32_t rows;
    uint32_t ncols;
    const ns_column_desc *cols;
    const uint8_t *params;
    uint32_t params_len;
} ns_batch;

/* Reads the descriptor the device wrote at `desc`; NS_BAD_INPUT for another ABI version. */
static inline int ns__read_batch(uint32_t desc, ns_batch *b) {
    const ns_batch_desc *d = (const ns_batch_desc *)(uintptr_t)desc;
    if (d->abi != NS_ABI_VERSION) return NS_BAD_INPUT;
    b->rows = d->rows;
    b->ncols = d->ncols;
    b->cols = (const ns_column_desc *)(uintptr_t)d->cols_ptr;
    b->params = (const uint8_t *)(uintptr_t)d->params_ptr;
    b->params_len = d->params_len;
    return 0;
}

/* Column `i`, or NULL past the last. */
static inline const ns_column_desc *ns_column(const ns_batch *b, uint32_t i) {
    return i < b->ncols ? &b->cols[i] : NULL;
}

/* Typed values, or NULL when the column has another type. */
static inline const int64_t *ns_i64s(const ns_column_desc *c) {
    return c && c->type_code == NS_TYPE_INT64 && !c->stored_width
               ? (const int64_t *)(uintptr_t)c->values_ptr
               : NULL;
}
/* INT32 and DATE32 values. */
static inline const int32_t *ns_i32s(const ns_column_desc *c) {
    return c && (c->type_code == NS_TYPE_INT32 || c->type_code == NS_TYPE_DATE32) &&
                   !c->stored_width
               ? (const int32_t *)(uintptr_t)c->values_ptr
               : NULL;
}
static inline const double *ns_f64s(const ns_column_desc *c) {
    return c && c->type_code == NS_TYPE_FLOAT64 ? (const double *)(uintptr_t)c->values_ptr
                                                : NULL;
}

/* The mask of the first `n` lanes of a block (n = 64 or more: all). */
static inline uint64_t ns_lanes(uint32_t n) { return n >= 64 ? ~0ull : ((1ull << n) - 1); }

/* Reads 64 bits of a bitmap from bit `base` (a multiple of 64), zero past `rows`. */
static inline uint64_t ns__bits(const uint8_t *bits, uint32_t rows, uint32_t base) {
    uint32_t n = rows > base ? rows - base : 0;
    if (n > 64) n = 64;
    uint64_t w = 0;
    for (uint32_t k = 0; k < (n + 7) / 8; k++) w |= (uint64_t)bits[base / 8 + k] << (8 * k);
    return w & ns_lanes(n);
}

/* Validity of rows base..base+63 (base a multiple of 64) as a mask: bit j set when row
 * base + j exists and is not NULL. */
static inline uint64_t ns_validity_block(const ns_column_desc *c, uint32_t rows, uint32_t base) {
    if (!c->validity_ptr) {
        uint32_t n = rows > base ? rows - base : 0;
        return ns_lanes(n);
    }
    return ns__bits((const uint8_t *)(uintptr_t)c->validity_ptr, rows, base);
}

/* Whether row `i` is not NULL. */
static inline int ns_is_valid(const ns_column_desc *c, uint32_t i) {
    if (!c->validity_ptr) return 1;
    return (((const uint8_t *)(uintptr_t)c->validity_ptr)[i / 8] >> (i % 8)) & 1;
}

/* Values of a BOOL column's rows base..base+63 as a mask, zero past `rows`. */
static inline uint64_t ns_bool_block(const ns_column_desc *c, uint32_t rows, uint32_t base) {
    return ns__bits((const uint8_t *)(uintptr_t)c->values_ptr, rows, base);
}

/* The bytes of row `i` of a UTF8 column (not NUL-terminated), its length at *len; NULL (and
 * 0) when the column is not UTF8. */
static inline const uint8_t *ns_str(const ns_column_desc *c, uint32_t i, uint32_t *len) {
    if (c->type_code != NS_TYPE_UTF8 || !c->offsets_ptr) {
        *len = 0;
        return NULL;
    }
    const int32_t *off = (const int32_t *)(uintptr_t)c->offsets_ptr;
    *len = (uint32_t)(off[i + 1] - off[i]);
    return (const uint8_t *)(uintptr_t)c->values_ptr + off[i];
}

/* ---- Parameters ------------------------------------------------------------------------ */

/* Parses a decimal number (sign, digits, a fraction, an exponent) from *p up to `end`,
 * skipping spaces and one ',' after it; advances *p. Exact for up to 19 significant digits
 * with an exponent of at most 22 either way, as the parameters of a query are. Returns 0 on
 * success, NS_BAD_INPUT when there is no number. */
static inline int ns_parse_f64(const uint8_t **p, const uint8_t *end, double *out) {
    static const double pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const uint8_t *s = *p;
    while (s < end && *s == ' ') s++;
    int neg = 0;
    if (s < end && (*s == '-' || *s == '+')) neg = *s++ == '-';
    uint64_t m = 0;
    int digits = 0, exp10 = 0, any = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++, any = 1) {
        if (digits < 19) { m = m * 10 + (uint64_t)(*s - '0'); if (m) digits++; }
        else exp10++;
    }
    if (s < end && *s == '.') {
        for (s++; s < end && *s >= '0' && *s <= '9'; s++, any = 1) {
            if (digits < 19) { m = m * 10 + (uint64_t)(*s - '0'); if (m) digits++; exp10--; }
        }
    }
    if (!any) return NS_BAD_INPUT;
    if (s < end && (*s == 'e' || *s == 'E')) {
        s++;
        int eneg = 0, e = 0, edig = 0;
        if (s < end && (*s == '-' || *s == '+')) eneg = *s++ == '-';
        for (; s < end && *s >= '0' && *s <= '9'; s++, edig = 1)
            if (e < 10000) e = e * 10 + (*s - '0');
        if (!edig) return NS_BAD_INPUT;
        exp10 += eneg ? -e : e;
    }
    double v = (double)m;
    while (exp10 > 22) { v *= 1e22; exp10 -= 22; }
    while (exp10 < -22) { v /= 1e22; exp10 += 22; }
    v = exp10 >= 0 ? v * pow10[exp10] : v / pow10[-exp10];
    *out = neg ? -v : v;
    while (s < end && *s == ' ') s++;
    if (s < end && *s == ',') s++;
    *p = s;
    return 0;
}

/* Parses an integer as ns_parse_f64 does; NS_BAD_INPUT when it has a fraction or is out of
 * int64's range. */
static inline int ns_parse_i64(const uint8_t **p, const uint8_t *end, int64_t *out) {
    const uint8_t *s = *p;
    while (s < end && *s == ' ') s++;
    int neg = 0;
    if (s < end && (*s == '-' || *s == '+')) neg = *s++ == '-';
    uint64_t v = 0;
    int any = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++, any = 1) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (0x8000000000000000ull - d) / 10) return NS_BAD_INPUT;
        v = v * 10 + d;
    }
    if (!any || (!neg && v > 0x7FFFFFFFFFFFFFFFull)) return NS_BAD_INPUT;
    while (s < end && *s == ' ') s++;
    if (s < end && *s == ',') s++;
    else if (s < end) return NS_BAD_INPUT;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    *p = s;
    return 0;
}

/* ---- Filter kernels ------------------------------------------------------------------ */

/* Where a filter writes the rows it keeps: a bitmap or a list of row indices, whichever the
 * device asked for. Fill it with ns_select_block, a block at a time, in order. */
typedef struct {
    uint64_t *bits;  /* bitmap mode */
    uint32_t *index; /* index mode */
    uint32_t cap;
    uint32_t count;
    uint32_t rows;
} ns_selection;

/* Keeps the rows base + j whose bit j is set in `mask` (bits past the batch's last row are
 * ignored). Blocks must come in increasing order. NS_OUTPUT_TOO_SMALL if the output is full. */
static inline int ns_select_block(ns_selection *s, uint32_t base, uint64_t mask) {
    mask &= ns_lanes(s->rows > base ? s->rows - base : 0);
    if (s->bits) {
        if (base / 64 >= s->cap) return mask ? NS_OUTPUT_TOO_SMALL : 0;
        s->bits[base / 64] = mask;
        s->count += (uint32_t)__builtin_popcountll(mask);
        return 0;
    }
    while (mask) {
        if (s->count >= s->cap) return NS_OUTPUT_TOO_SMALL;
        s->index[s->count++] = base + (uint32_t)__builtin_ctzll(mask);
        mask &= mask - 1;
    }
    return 0;
}

static inline int32_t ns__run_filter(uint32_t desc, uint32_t out, uint32_t cap, int bitmap,
                                     int (*f)(const ns_batch *, ns_selection *)) {
    ns_batch b;
    int e = ns__read_batch(desc, &b);
    if (e) return e;
    ns_selection s = {0, 0, cap, 0, b.rows};
    if (bitmap) {
        if (out % 8 || cap < (b.rows + 63) / 64) return NS_BAD_INPUT;
        s.bits = (uint64_t *)(uintptr_t)out;
        __builtin_memset(s.bits, 0, (size_t)((b.rows + 63) / 64) * 8);
    } else {
        if (out % 4) return NS_BAD_INPUT;
        s.index = (uint32_t *)(uintptr_t)out;
    }
    e = f(&b, &s);
    return e ? e : (int32_t)s.count;
}

/* The exports every kernel has. */
#define NS__COMMON_EXPORTS                                                                   \
    __attribute__((export_name("nearstore_abi_version"))) uint32_t nearstore_abi_version(    \
        void) {                                                                              \
        return NS_ABI_VERSION;                                                               \
    }                                                                                        \
    __attribute__((export_name("nearstore_alloc"))) uint32_t nearstore_alloc(uint32_t size,  \
                                                                             uint32_t align) \
    {                                                                                        \
        return ns_alloc(size, align);                                                        \
    }

/* The exports of a filter kernel around `int fn(const ns_batch *, ns_selection *)`, which
 * returns 0 or a negative status. */
#define NEARSTORE_FILTER(fn)                                                                 \
    NS__COMMON_EXPORTS                                                                       \
    __attribute__((export_name("nearstore_filter"))) int32_t nearstore_filter(               \
        uint32_t desc, uint32_t out, uint32_t cap) {                                         \
        return ns__run_filter(desc, out, cap, 0, fn);                                        \
    }                                                                                        \
    __attribute__((export_name("nearstore_filter_bitmap"))) int32_t nearstore_filter_bitmap( \
        uint32_t desc, uint32_t out, uint32_t words) {                                       \
        return ns__run_filter(desc, out, words, 1, fn);                                      \
    }

/* ---- Map kernels --------------------------------------------------------------------- */

/* One value per row (the manifest's output: int64 or float64), valid unless made NULL. */
typedef struct {
    uint64_t *values;
    uint64_t *validity;
    uint32_t rows;
} ns_map_output;

static inline void ns_set_i64(ns_map_output *o, uint32_t i, int64_t v) {
    if (i < o->rows) o->values[i] = (uint64_t)v;
}
static inline void ns_set_f64(ns_map_output *o, uint32_t i, double v) {
    if (i < o->rows) o->values[i] = __builtin_bit_cast(uint64_t, v);
}
static inline void ns_set_null(ns_map_output *o, uint32_t i) {
    if (i < o->rows) o->validity[i / 64] &= ~(1ull << (i % 64));
}
/* Makes NULL the rows of the block at `base` whose bit in `valid` is clear (pass the
 * arguments' ns_validity_block()s ANDed). */
static inline void ns_keep_valid(ns_map_output *o, uint32_t base, uint64_t valid) {
    if (base < o->rows) o->validity[base / 64] &= valid;
}

static inline int32_t ns__run_map(uint32_t desc, uint32_t out, uint32_t rows,
                                  int (*f)(const ns_batch *, ns_map_output *)) {
    ns_batch b;
    int e = ns__read_batch(desc, &b);
    if (e) return e;
    if (b.rows != rows || out % 8) return NS_BAD_INPUT;
    ns_map_output o = {(uint64_t *)(uintptr_t)out, (uint64_t *)(uintptr_t)out + rows, rows};
    __builtin_memset(o.values, 0, (size_t)rows * 8);
    for (uint32_t w = 0; w < (rows + 63) / 64; w++) o.validity[w] = ns_lanes(rows - w * 64);
    e = f(&b, &o);
    return e ? e : (int32_t)rows;
}

/* The exports of a map kernel around `int fn(const ns_batch *, ns_map_output *)`. */
#define NEARSTORE_MAP(fn)                                                                    \
    NS__COMMON_EXPORTS                                                                       \
    __attribute__((export_name("nearstore_map"))) int32_t nearstore_map(                     \
        uint32_t desc, uint32_t out, uint32_t rows) {                                        \
        return ns__run_map(desc, out, rows, fn);                                             \
    }

/* ---- Aggregate kernels --------------------------------------------------------------- */

/* Each row's group and the groups' states (`state_size` bytes each, zero until written). */
typedef struct {
    const int32_t *ids; /* NULL: every row is in group 0 */
    uint8_t *states;
    uint32_t groups;
    uint32_t state_size;
} ns_groups;

/* The state of row `i`'s group. */
static inline uint8_t *ns_state_of(const ns_groups *g, uint32_t i) {
    uint32_t id = g->ids ? (uint32_t)g->ids[i] : 0;
    return g->states + (size_t)id * g->state_size;
}

/* Little-endian 8-byte fields of a state (unaligned access is fine in Wasm). */
static inline int64_t ns_get_i64(const uint8_t *state, uint32_t at) {
    int64_t v;
    __builtin_memcpy(&v, state + at, 8);
    return v;
}
static inline void ns_put_i64(uint8_t *state, uint32_t at, int64_t v) {
    __builtin_memcpy(state + at, &v, 8);
}
static inline double ns_get_f64(const uint8_t *state, uint32_t at) {
    double v;
    __builtin_memcpy(&v, state + at, 8);
    return v;
}
static inline void ns_put_f64(uint8_t *state, uint32_t at, double v) {
    __builtin_memcpy(state + at, &v, 8);
}

/* One group's result: one value (output int64/float64), none (NULL), or a list (list_int64). */
typedef struct {
    uint64_t *out;
    uint32_t cap;
    uint32_t len;
} ns_agg_output;

static inline int ns_push_i64(ns_agg_output *o, int64_t v) {
    if (o->len >= o->cap) return NS_OUTPUT_TOO_SMALL;
    o->out[o->len++] = (uint64_t)v;
    return 0;
}
static inline int ns_push_f64(ns_agg_output *o, double v) {
    return ns_push_i64(o, __builtin_bit_cast(int64_t, v));
}

static inline int32_t ns__run_update(uint32_t desc, uint32_t state, uint32_t groups,
                                     uint32_t size,
                                     int (*f)(const ns_batch *, const ns_groups *)) {
    ns_batch b;
    int e = ns__read_batch(desc, &b);
    if (e) return e;
    if (b.ncols == 0) return NS_BAD_INPUT;
    const ns_column_desc *g = &b.cols[0];
    ns_groups gs = {0, (uint8_t *)(uintptr_t)state, groups, size};
    if (g->type_code == NS_TYPE_INT32) {
        gs.ids = (const int32_t *)(uintptr_t)g->values_ptr;
        for (uint32_t i = 0; i < b.rows; i++)
            if ((uint32_t)gs.ids[i] >= groups) return NS_BAD_INPUT;
    } else if (g->type_code != 0) {
        return NS_BAD_INPUT;
    } else if (groups == 0) {
        return NS_BAD_INPUT;
    }
    b.cols += 1;
    b.ncols -= 1;
    return f(&b, &gs);
}

static inline int32_t ns__run_finish(uint32_t state, uint32_t out, uint32_t cap,
                                     int (*f)(const uint8_t *, ns_agg_output *)) {
    if (out % 8) return NS_BAD_INPUT;
    ns_agg_output o = {(uint64_t *)(uintptr_t)out, cap, 0};
    int e = f((const uint8_t *)(uintptr_t)state, &o);
    return e ? e : (int32_t)o.len;
}

/* The exports of an aggregate kernel (manifest kind=aggregate, state_size=SIZE) around
 * `int update(const ns_batch *, const ns_groups *)` (each row into its group's state) and
 * `int finish(const uint8_t *state, ns_agg_output *)` (one group's state to its result). */
#define NEARSTORE_AGGREGATE(update, finish, size)                                            \
    _Static_assert((size) >= 1 && (size) <= NS_STATE_SIZE_MAX, "state size");               \
    NS__COMMON_EXPORTS                                                                       \
    __attribute__((export_name("nearstore_agg_update"))) int32_t nearstore_agg_update(       \
        uint32_t desc, uint32_t state, uint32_t groups) {                                    \
        return ns__run_update(desc, state, groups, (size), update);                          \
    }                                                                                        \
    __attribute__((export_name("nearstore_agg_finish"))) int32_t nearstore_agg_finish(       \
        uint32_t state, uint32_t out, uint32_t cap) {                                        \
        return ns__run_finish(state, out, cap, finish);                                      \
    }

#endif /* NEARSTORE_KERNEL_H */
