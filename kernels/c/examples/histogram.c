/* histogram: an aggregate kernel counting the values of a numeric column (argument 0:
 * float64, int64 or int32) in equal-width buckets over [lo, hi), parameters `lo,hi,buckets`
 * (at most 256 buckets). Value x falls in bucket floor((x - lo) * buckets / (hi - lo)); NULLs
 * and values outside the range are not counted. The result is a list of `buckets` counts per
 * group. The C twin of the Rust example kernels/examples/histogram.
 *
 * In SQL: SELECT g, histogram(x, '0,100,10') FROM t GROUP BY g */
#include "../nearstore_kernel.h"

#define BUCKETS_MAX 256
/* Per group: the bucket count (int64), then one int64 count per bucket. */
#define STATE_SIZE (8 + 8 * BUCKETS_MAX)

NEARSTORE_MANIFEST("abi=1\nkind=aggregate\nname=histogram\noutput=list_int64\nstate_size=2056\n"
                   "signature=float64;params=lo,hi,buckets\n");
_Static_assert(STATE_SIZE == 2056, "the manifest's state_size");

static int parse(const ns_batch *b, double *lo, double *hi, int64_t *n) {
    const uint8_t *p = b->params, *end = b->params + b->params_len;
    if (ns_parse_f64(&p, end, lo) || ns_parse_f64(&p, end, hi) || ns_parse_i64(&p, end, n))
        return NS_BAD_INPUT;
    if (p != end || !(*lo < *hi) || *n < 1 || *n > BUCKETS_MAX) return NS_BAD_INPUT;
    return 0;
}

static int update(const ns_batch *b, const ns_groups *g) {
    double lo, hi;
    int64_t n;
    if (parse(b, &lo, &hi, &n)) return NS_BAD_INPUT;
    const ns_column_desc *col = ns_column(b, 0);
    if (!col) return NS_BAD_INPUT;
    const double *f = ns_f64s(col);
    const int64_t *l = ns_i64s(col);
    const int32_t *i32 = col->type_code == NS_TYPE_INT32 ? ns_i32s(col) : NULL;
    if (!f && !l && !i32) return NS_BAD_INPUT;
    for (uint32_t base = 0; base < b->rows; base += NS_BLOCK) {
        uint64_t valid = ns_validity_block(col, b->rows, base);
        for (uint32_t j = 0; j < NS_BLOCK && base + j < b->rows; j++) {
            uint32_t i = base + j;
            uint8_t *state = ns_state_of(g, i);
            ns_put_i64(state, 0, n);
            double x = f ? f[i] : l ? (double)l[i] : (double)i32[i];
            if (!(valid >> j & 1) || !(x >= lo && x < hi)) continue;
            uint64_t k = (uint64_t)((x - lo) * (double)n / (hi - lo));
            if (k > (uint64_t)n - 1) k = (uint64_t)n - 1;
            uint32_t at = 8 + 8 * (uint32_t)k;
            ns_put_i64(state, at, ns_get_i64(state, at) + 1);
        }
    }
    return 0;
}

/* One group's counts (an empty list for a group no row reached). */
static int finish(const uint8_t *state, ns_agg_output *out) {
    int64_t n = ns_get_i64(state, 0);
    if (n < 0 || n > BUCKETS_MAX) return NS_BAD_INPUT;
    for (int64_t k = 0; k < n; k++) {
        int e = ns_push_i64(out, ns_get_i64(state, 8 + 8 * (uint32_t)k));
        if (e) return e;
    }
    return 0;
}

NEARSTORE_AGGREGATE(update, finish, STATE_SIZE)
