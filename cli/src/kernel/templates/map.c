/* {name}: a Nearstore map kernel. One float64 value per row: its first argument (a float64
 * column) times the factor given as the parameter; NULL where the argument is NULL.
 *
 * Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
 * --file data.parquet --args my_column --params 2.5; in SQL: SELECT {lib}(my_column, '2.5'). */
#include "nearstore_kernel.h"

NEARSTORE_MANIFEST("abi=1\nkind=map\nname={name}\noutput=float64\nsignature=float64;params=factor\n");

static int {lib}(const ns_batch *b, ns_map_output *out) {
    const uint8_t *p = b->params, *end = b->params + b->params_len;
    double factor;
    if (ns_parse_f64(&p, end, &factor) || p != end) return NS_BAD_INPUT;
    const ns_column_desc *col = ns_column(b, 0);
    const double *v = ns_f64s(col);
    if (!v) return NS_BAD_INPUT;
    for (uint32_t base = 0; base < b->rows; base += NS_BLOCK) {
        for (uint32_t j = 0; j < NS_BLOCK && base + j < b->rows; j++)
            ns_set_f64(out, base + j, v[base + j] * factor);
        ns_keep_valid(out, base, ns_validity_block(col, b->rows, base));
    }
    return 0;
}

NEARSTORE_MAP({lib})
