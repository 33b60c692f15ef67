/* {name}: a Nearstore filter kernel. It keeps the rows whose first argument (an int64
 * column) is greater than the number given as the parameter.
 *
 * Build: nearstore kernel build; try it: nearstore kernel test target/wasm32/{lib}.wasm
 * --file data.parquet --args my_column --params 42; in SQL: WHERE {lib}(my_column, '42'). */
#include "nearstore_kernel.h"

NEARSTORE_MANIFEST("abi=1\nkind=filter\nname={name}\nsignature=int64;params=threshold\n");

static int {lib}(const ns_batch *b, ns_selection *sel) {
    const uint8_t *p = b->params, *end = b->params + b->params_len;
    int64_t threshold;
    if (ns_parse_i64(&p, end, &threshold) || p != end) return NS_BAD_INPUT;
    const ns_column_desc *col = ns_column(b, 0);
    const int64_t *v = ns_i64s(col);
    if (!v) return NS_BAD_INPUT;
    for (uint32_t base = 0; base < b->rows; base += NS_BLOCK) {
        uint64_t keep = 0;
        for (uint32_t j = 0; j < NS_BLOCK && base + j < b->rows; j++)
            keep |= (uint64_t)(v[base + j] > threshold) << j;
        int e = ns_select_block(sel, base, keep & ns_validity_block(col, b->rows, base));
        if (e) return e;
    }
    return 0;
}

NEARSTORE_FILTER({lib})
