/* grep: keeps the rows whose string column (argument 0) contains the parameter bytes, as
 * SQL's `col LIKE '%needle%'` does (NULL strings are not kept; an empty needle keeps every
 * non-NULL row). The C twin of the Rust example kernels/examples/grep.
 *
 * Build: nearstore kernel build grep.c; in SQL: WHERE grep(s, 'special'). */
#include "../nearstore_kernel.h"

NEARSTORE_MANIFEST("abi=1\nkind=filter\nname=grep\nsignature=utf8;params=needle\n");

/* Whether `needle` occurs in `hay`: a scan for the first byte, then a compare. */
static int contains(const uint8_t *hay, uint32_t n, const uint8_t *needle, uint32_t m) {
    if (m == 0) return 1;
    if (n < m) return 0;
    for (uint32_t i = 0; i + m <= n; i++) {
        if (hay[i] != needle[0]) continue;
        uint32_t k = 1;
        while (k < m && hay[i + k] == needle[k]) k++;
        if (k == m) return 1;
    }
    return 0;
}

static int grep(const ns_batch *b, ns_selection *sel) {
    const ns_column_desc *col = ns_column(b, 0);
    if (!col || col->type_code != NS_TYPE_UTF8) return NS_BAD_INPUT;
    for (uint32_t base = 0; base < b->rows; base += NS_BLOCK) {
        uint64_t valid = ns_validity_block(col, b->rows, base), keep = 0;
        for (uint32_t j = 0; j < NS_BLOCK && base + j < b->rows; j++) {
            uint32_t len;
            const uint8_t *s = ns_str(col, base + j, &len);
            if ((valid >> j & 1) && contains(s, len, b->params, b->params_len)) keep |= 1ull << j;
        }
        int e = ns_select_block(sel, base, keep);
        if (e) return e;
    }
    return 0;
}

NEARSTORE_FILTER(grep)
