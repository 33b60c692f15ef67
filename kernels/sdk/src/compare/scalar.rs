//! The scalar keys (every target but wasm32+simd128).

use super::Lane;

macro_rules! identity {
    ($($t:ty)*) => {$(
        impl Lane for $t {
            type Key = $t;
            #[inline(always)]
            fn key(self) -> $t {
                self
            }
        }
    )*};
}
identity!(i8 i16 i32 i64 i128);

impl Lane for f64 {
    type Key = i64;
    #[inline(always)]
    fn key(self) -> i64 {
        super::f64_order_key(self)
    }
}
