//! The six comparisons as types, so a block compare is compiled once per operator.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32::*;

/// One comparison, on scalars and on each lane width.
pub trait Pred {
    /// An ordering (`<`, `>`), not equality: on 64-bit lanes x86 runs it on the port
    /// that also narrows (see `simd::sixteen`).
    const ORDERED: bool;
    fn holds<T: PartialOrd>(a: T, b: T) -> bool;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn x2(a: v128, b: v128) -> v128;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn x4(a: v128, b: v128) -> v128;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn x8(a: v128, b: v128) -> v128;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn x16(a: v128, b: v128) -> v128;
}

macro_rules! preds {
    ($($name:ident $op:tt $ordered:literal $x2:ident $x4:ident $x8:ident $x16:ident;)*) => {$(
        pub struct $name;
        impl Pred for $name {
            const ORDERED: bool = $ordered;
            #[inline(always)]
            fn holds<T: PartialOrd>(a: T, b: T) -> bool {
                a $op b
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            #[inline(always)]
            fn x2(a: v128, b: v128) -> v128 {
                $x2(a, b)
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            #[inline(always)]
            fn x4(a: v128, b: v128) -> v128 {
                $x4(a, b)
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            #[inline(always)]
            fn x8(a: v128, b: v128) -> v128 {
                $x8(a, b)
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            #[inline(always)]
            fn x16(a: v128, b: v128) -> v128 {
                $x16(a, b)
            }
        }
    )*};
}

preds! {
    Eq == false i64x2_eq i32x4_eq i16x8_eq i8x16_eq;
    Lt < true i64x2_lt i32x4_lt i16x8_lt i8x16_lt;
    Gt > true i64x2_gt i32x4_gt i16x8_gt i8x16_gt;
}
