/* {name}: a Nearstore aggregate kernel. Per group, the sum of the squares of its first
 * argument (a float64 column); NULLs are skipped, and a group with no value is NULL.
 *
 * Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
 * --file data.parquet --args my_column; in SQL: SELECT g, {lib}(my_column) FROM t GROUP BY g. */
#include "nearstore_kernel.h"

/* Per group: the sum (double) at 0, the count of values (int64) at 8. */
#define STATE_SIZE 16
NEARSTORE_MANIFEST("abi=1\nkind=aggregate\nname={name}\noutput=float64\nstate_size=16\n"
                   "signature=float64\n");

static int update(const ns_batch *b, const ns_groups *g) {
    const ns_column_desc *col = ns_column(b, 0);
    const double *v = ns_f64s(col);
    if (!v) return NS_BAD_INPUT;
    for (uint32_t i = 0; i < b->rows; i++) {
        if (!ns_is_valid(col, i)) continue;
        uint8_t *state = ns_state_of(g, i);
        ns_put_f64(state, 0, ns_get_f64(state, 0) + v[i] * v[i]);
        ns_put_i64(state, 8, ns_get_i64(state, 8) + 1);
    }
    return 0;
}

/* One group's sum, or nothing (NULL) when no value reached it. */
static int finish(const uint8_t *state, ns_agg_output *out) {
    return ns_get_i64(state, 8) > 0 ? ns_push_f64(out, ns_get_f64(state, 0)) : 0;
}

NEARSTORE_AGGREGATE(update, finish, STATE_SIZE)
