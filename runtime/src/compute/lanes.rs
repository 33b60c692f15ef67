//! Host-side work on a column's values while they are staged into a kernel's memory: integer
//! values narrowed to a smaller signed width, and their range found in the same pass. The loops are
//! compiled for AVX-512 and for AVX2 as well as for the baseline, and the widest the CPU has
//! is chosen at run time (the host binary itself targets the x86-64 baseline). Also the group
//! ids of dictionary keys through a small table ([`small_table_lookup`], AVX2 lane permutes).

/// A signed integer as found in an Arrow buffer.
trait Src: Copy {
    /// The value as an `i64` (the low half of a 16-byte value).
    fn get(self) -> i64;
    /// Whether the value is an `i64` (always, but for 16-byte values).
    fn fits(self) -> bool {
        true
    }
}

impl Src for i32 {
    #[inline(always)]
    fn get(self) -> i64 {
        self as i64
    }
}

impl Src for i64 {
    #[inline(always)]
    fn get(self) -> i64 {
        self
    }
}

/// An `i128` as its little-endian halves.
impl Src for [i64; 2] {
    #[inline(always)]
    fn get(self) -> i64 {
        self[0]
    }
    #[inline(always)]
    fn fits(self) -> bool {
        self[1] == self[0] >> 63
    }
}

/// A signed integer a value is narrowed to.
trait Dst: Copy + Default {
    fn from(v: i64) -> Self;
}

macro_rules! dst {
    ($($t:ty)*) => {$(
        impl Dst for $t {
            #[inline(always)]
            fn from(v: i64) -> Self {
                v as $t
            }
        }
    )*};
}
dst!(i8 i16 i32 i64);

/// Narrows `src` into `dst`, finding the range of the values and whether each is an `i64`.
#[inline(always)]
fn narrow_range_to<S: Src, D: Dst>(src: &[S], dst: &mut [D]) -> Option<(i64, i64)> {
    let (mut lo, mut hi, mut fits) = (i64::MAX, i64::MIN, true);
    for (d, s) in dst.iter_mut().zip(src) {
        let y = s.get();
        lo = lo.min(y);
        hi = hi.max(y);
        fits &= s.fits();
        *d = D::from(y);
    }
    fits.then_some((lo, hi))
}

/// The loops compiled for one set of CPU features.
macro_rules! compiled_for {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::{Dst, Src};

            /// # Safety
            /// The CPU has the module's features.
            #[target_feature(enable = $features)]
            pub unsafe fn narrow_range<S: Src, D: Dst>(
                src: &[S],
                dst: &mut [D],
            ) -> Option<(i64, i64)> {
                super::narrow_range_to(src, dst)
            }
        }
    };
}

compiled_for!(avx512, "avx512f,avx512bw,avx512vl,avx512dq");
compiled_for!(avx2, "avx2");

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

fn narrow_range_dispatch<S: Src, D: Dst>(src: &[S], dst: &mut [D]) -> Option<(i64, i64)> {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has the features (checked).
            return unsafe { avx512::narrow_range(src, dst) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature (checked).
            return unsafe { avx2::narrow_range(src, dst) };
        }
    }
    narrow_range_to(src, dst)
}

/// The bits set in `bytes` (a selection bitmap), with the CPU's population count when it has
/// one (the baseline counts in software, about ten instructions a word).
pub fn count_ones(bytes: &[u8]) -> usize {
    #[inline(always)]
    fn count(bytes: &[u8]) -> usize {
        let words = bytes.chunks_exact(8);
        let tail: usize = words
            .remainder()
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum();
        tail + words
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")).count_ones() as usize)
            .sum::<usize>()
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU has `popcnt`.
        #[target_feature(enable = "popcnt")]
        unsafe fn popcnt(bytes: &[u8]) -> usize {
            count(bytes)
        }
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has the feature (checked).
            return unsafe { popcnt(bytes) };
        }
    }
    count(bytes)
}

/// Each row's entry of `table` (at most [`SMALL_TABLE`] entries) at cell
/// `first[i] * size + second[i]`, or `first[i]` with no second column: the group ids of one or
/// two dictionary columns' keys (`exec::groups::dict`). Eight rows per AVX2 instruction (the
/// table in two registers, each row's entry picked by a lane permute); `None` when the table
/// is larger, `second` is not as long as `first`, or the CPU lacks AVX2, and the caller looks
/// rows up one at a time (about three times slower with TPC-H Q1's four flags). Every cell
/// must be within the table (Arrow checks a dictionary's keys against its values); one that is
/// not yields some entry of it, never memory past it.
pub fn small_table_lookup(
    first: &[i32],
    second: Option<(&[i32], u32)>,
    table: &[u32],
) -> Option<Vec<u32>> {
    #[cfg(target_arch = "x86_64")]
    {
        let second = match second {
            Some((keys, size)) if keys.len() == first.len() => Some((keys, size as i32)),
            Some(_) => return None,
            None => None,
        };
        if table.len() <= SMALL_TABLE && std::arch::is_x86_feature_detected!("avx2") {
            let mut padded = [0u32; SMALL_TABLE];
            padded[..table.len()].copy_from_slice(table);
            let mut out = Vec::with_capacity(first.len());
            // SAFETY: the CPU has AVX2 (checked); `out` has room for `first.len()` values,
            // and `second` is as long as `first` (checked).
            unsafe { small_table::lookup(first, second, &padded, out.as_mut_ptr()) };
            // SAFETY: `lookup` wrote each of the first `first.len()` values.
            unsafe { out.set_len(first.len()) };
            return Some(out);
        }
    }
    let _ = (first, second, table);
    None
}

/// The entries a table of [`small_table_lookup`] may have: two registers of eight.
pub const SMALL_TABLE: usize = 16;

#[cfg(target_arch = "x86_64")]
mod small_table {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_blendv_epi8, _mm256_cmpgt_epi32, _mm256_loadu_si256,
        _mm256_mullo_epi32, _mm256_permutevar8x32_epi32, _mm256_set1_epi32, _mm256_storeu_si256,
    };

    /// # Safety
    /// The CPU has AVX2; `out` has room for `first.len()` values; `second`'s keys are as many
    /// as `first`'s.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lookup(
        first: &[i32],
        second: Option<(&[i32], i32)>,
        table: &[u32; super::SMALL_TABLE],
        out: *mut u32,
    ) {
        // One column: its key is the cell, `key * 0 + key`.
        let (second, size) = second.unwrap_or((first, 0));
        let n = first.len();
        // SAFETY: `table` holds 16 values, two registers' worth.
        let (lo, hi) = unsafe {
            (
                _mm256_loadu_si256(table.as_ptr().cast::<__m256i>()),
                _mm256_loadu_si256(table.as_ptr().add(8).cast::<__m256i>()),
            )
        };
        let (s, seven) = (_mm256_set1_epi32(size), _mm256_set1_epi32(7));
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: rows `i..i + 8` are within `first`, `second` and `out` (`i + 8 <= n`).
            let (a, b) = unsafe {
                (
                    _mm256_loadu_si256(first.as_ptr().add(i).cast::<__m256i>()),
                    _mm256_loadu_si256(second.as_ptr().add(i).cast::<__m256i>()),
                )
            };
            let cell = _mm256_add_epi32(_mm256_mullo_epi32(a, s), b);
            // A permute takes a lane's low three bits: cells 8 to 15 from the second register.
            let id = _mm256_blendv_epi8(
                _mm256_permutevar8x32_epi32(lo, cell),
                _mm256_permutevar8x32_epi32(hi, cell),
                _mm256_cmpgt_epi32(cell, seven),
            );
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(out.add(i).cast::<__m256i>(), id) };
            i += 8;
        }
        for j in i..n {
            let cell = first[j].wrapping_mul(size).wrapping_add(second[j]);
            // SAFETY: `j < n`, within `out`.
            unsafe { out.add(j).write(table[cell as usize % super::SMALL_TABLE]) };
        }
    }
}

/// Reads `bytes` (little-endian values of `T`) as `T`s: in place when aligned, else copied.
fn typed<T: pod::Pod>(bytes: &[u8]) -> std::borrow::Cow<'_, [T]> {
    let width = std::mem::size_of::<T>();
    // SAFETY: T is a plain integer type (or an array of them) for which every bit pattern is
    // valid; align_to only yields a correctly aligned middle part.
    let (head, mid, tail) = unsafe { bytes.align_to::<T>() };
    if head.is_empty() && tail.is_empty() {
        return std::borrow::Cow::Borrowed(mid);
    }
    std::borrow::Cow::Owned(bytes.chunks_exact(width).map(T::read).collect())
}

mod pod {
    /// Plain integer data read from little-endian bytes.
    pub trait Pod: Copy {
        fn read(b: &[u8]) -> Self;
    }
    impl Pod for i32 {
        fn read(b: &[u8]) -> Self {
            i32::from_le_bytes(b.try_into().expect("4 bytes"))
        }
    }
    impl Pod for i64 {
        fn read(b: &[u8]) -> Self {
            i64::from_le_bytes(b.try_into().expect("8 bytes"))
        }
    }
    impl Pod for [i64; 2] {
        fn read(b: &[u8]) -> Self {
            [i64::read(&b[..8]), i64::read(&b[8..])]
        }
    }
}

/// The fewest bytes (1, 2, 4 or 8) of a signed integer that holds every value in `lo..=hi`.
pub fn width_for(lo: i64, hi: i64) -> u8 {
    let within = |bits: u32| lo >= -(1i64 << (bits - 1)) && hi < (1i64 << (bits - 1));
    match () {
        _ if within(8) => 1,
        _ if within(16) => 2,
        _ if within(32) => 4,
        _ => 8,
    }
}

/// Writes the signed integers of `from` bytes in `src` into `dst` as signed integers of `to`
/// bytes (`to < from`; every value must fit, or it is truncated).
pub fn narrow(src: &[u8], from: u8, dst: &mut [u8], to: u8) {
    // The range costs nothing next to the loads and stores.
    let _ = narrow_range(src, from, dst, to);
}

/// [`narrow`], also finding the least and greatest value: the values are written narrowed to
/// `to` bytes whether they fit or not, and their range tells which. `None` when a 16-byte
/// value is not an `i64`, there are no values, or `from` is not 4, 8 or 16.
pub fn narrow_range(src: &[u8], from: u8, dst: &mut [u8], to: u8) -> Option<(i64, i64)> {
    fn into<S: Src + pod::Pod>(src: &[S], dst: &mut [u8], to: u8) -> Option<(i64, i64)> {
        fn write<S: Src, D: Dst>(src: &[S], dst: &mut [u8]) -> Option<(i64, i64)> {
            // SAFETY: D is a plain integer type; align_to only yields an aligned middle part.
            let (head, mid, tail) = unsafe { dst.align_to_mut::<D>() };
            if head.is_empty() && tail.is_empty() {
                return narrow_range_dispatch(src, mid);
            }
            let mut tmp = vec![D::default(); src.len()];
            let range = narrow_range_dispatch(src, &mut tmp);
            // SAFETY: D is a plain integer type of no padding; the bytes of `tmp`.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    tmp.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(tmp.as_slice()),
                )
            };
            dst.copy_from_slice(bytes);
            range
        }
        match to {
            1 => write::<S, i8>(src, dst),
            2 => write::<S, i16>(src, dst),
            4 => write::<S, i32>(src, dst),
            _ => write::<S, i64>(src, dst),
        }
    }
    if src.is_empty() {
        return None;
    }
    match from {
        4 => into(&typed::<i32>(src), dst, to),
        8 => into(&typed::<i64>(src), dst, to),
        16 => into(&typed::<[i64; 2]>(src), dst, to),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
        // SAFETY: plain integers, no padding.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
            .to_vec()
    }

    fn range(values: &[u8], width: u8) -> Option<(i64, i64)> {
        let mut out = vec![0u8; values.len() / width as usize * 8];
        narrow_range(values, width, &mut out, 8)
    }

    #[test]
    fn ranges_and_widths() {
        let v: Vec<i64> = vec![5, -129, 300, 7];
        assert_eq!(range(&bytes(&v), 8), Some((-129, 300)));
        assert_eq!(width_for(-129, 300), 2);
        assert_eq!(width_for(-128, 127), 1);
        assert_eq!(width_for(-128, 128), 2);
        assert_eq!(width_for(i32::MIN as i64, i32::MAX as i64), 4);
        assert_eq!(width_for(0, i32::MAX as i64 + 1), 8);
        let d: Vec<i128> = vec![-3, 1 << 40, -(1 << 50)];
        assert_eq!(range(&bytes(&d), 16), Some((-(1 << 50), 1 << 40)));
        let big: Vec<i128> = vec![1, i64::MAX as i128 + 1];
        assert_eq!(range(&bytes(&big), 16), None, "a value beyond i64");
        assert_eq!(range(&[], 8), None);
    }

    #[test]
    fn narrowing_keeps_values_aligned_or_not() {
        let v: Vec<i64> = (-300..300).collect();
        for to in [2u8, 4] {
            let mut out = vec![0u8; v.len() * to as usize + 1];
            // Misaligned on purpose at offset 1, then aligned at 0.
            for at in [1, 0] {
                narrow(&bytes(&v), 8, &mut out[at..at + v.len() * to as usize], to);
                let got: Vec<i64> = out[at..at + v.len() * to as usize]
                    .chunks_exact(to as usize)
                    .map(|c| match to {
                        2 => i16::from_le_bytes([c[0], c[1]]) as i64,
                        _ => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                    })
                    .collect();
                assert_eq!(got, v);
            }
        }
        let d: Vec<i128> = vec![-5, 100, -128, 127];
        let mut out = vec![0u8; 4];
        narrow(&bytes(&d), 16, &mut out, 1);
        assert_eq!(
            out.iter().map(|b| *b as i8).collect::<Vec<_>>(),
            [-5, 100, -128, 127]
        );
        let misaligned = {
            let mut b = vec![0u8];
            b.extend(bytes(&[7i32, -9]));
            b
        };
        assert_eq!(range(&misaligned[1..], 4), Some((-9, 7)));
    }

    #[test]
    fn narrowing_with_the_range_tells_whether_values_fit() {
        let v: Vec<i32> = vec![3, -200, 90];
        let mut out = vec![0u8; 3];
        assert_eq!(narrow_range(&bytes(&v), 4, &mut out, 1), Some((-200, 90)));
        assert!(width_for(-200, 90) > 1, "-200 does not fit a byte");
        let mut out = vec![0u8; 6];
        assert_eq!(narrow_range(&bytes(&v), 4, &mut out, 2), Some((-200, 90)));
        assert_eq!(out, bytes(&[3i16, -200, 90]));
        let big: Vec<i128> = vec![1, i64::MIN as i128 - 1];
        let mut out = vec![0u8; 16];
        assert_eq!(narrow_range(&bytes(&big), 16, &mut out, 8), None);
    }

    #[test]
    fn small_table_lookup_matches_a_row_at_a_time() {
        // Keys of two columns of 3 and 4 cells, and of one of 16; lengths around the
        // eight-row step, so the rows after the last whole eight are looked up too.
        let mut x = 0x9e37_79b9u32;
        let mut next = |m: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % m) as i32
        };
        for n in [0, 1, 7, 8, 9, 31, 8192] {
            let a: Vec<i32> = (0..n).map(|_| next(3)).collect();
            let b: Vec<i32> = (0..n).map(|_| next(4)).collect();
            let wide: Vec<i32> = (0..n).map(|_| next(16)).collect();
            let table: Vec<u32> = (0..13).map(|c| 100 + c * 7 % 13).collect();
            let full: Vec<u32> = (0..16).map(|c| 1000 - c).collect();
            let Some(two) = small_table_lookup(&a, Some((&b, 4)), &table) else {
                assert!(!std::arch::is_x86_feature_detected!("avx2"));
                return;
            };
            let want: Vec<u32> = a
                .iter()
                .zip(&b)
                .map(|(&a, &b)| table[(a * 4 + b) as usize])
                .collect();
            assert_eq!(two, want, "{n} rows of two columns");
            let one = small_table_lookup(&wide, None, &full).expect("16 entries fit");
            let want: Vec<u32> = wide.iter().map(|&k| full[k as usize]).collect();
            assert_eq!(one, want, "{n} rows of one column");
        }
        // Past two registers, or keys of unequal lengths: the caller's lookup.
        assert_eq!(small_table_lookup(&[0], None, &[0; 17]), None);
        assert_eq!(small_table_lookup(&[0, 1], Some((&[0], 2)), &[0; 4]), None);
    }
}
