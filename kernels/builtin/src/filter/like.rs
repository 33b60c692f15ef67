//! `LIKE` on string columns: prefix, suffix and infix shapes, and general patterns of `%`,
//! `_` and `\` escapes matched a UTF-8 character at a time.

use alloc::vec::Vec;

use nearstore_kernel::Column;
use nearstore_kernel::abi::program;

use super::blocks::str_blocks;

/// Whether `needle` occurs in `hay`: candidates found by their first byte, then compared.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let last_start = match hay.len().checked_sub(needle.len()) {
        Some(n) => n,
        None => return false,
    };
    let mut from = 0;
    while let Some(p) = hay[from..=last_start].iter().position(|&b| b == first) {
        let at = from + p;
        if &hay[at + 1..at + needle.len()] == rest {
            return true;
        }
        from = at + 1;
        if from > last_start {
            break;
        }
    }
    false
}

/// One element of a `LIKE` pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    /// This byte.
    Byte(u8),
    /// `_`: one character.
    One,
    /// `%`: any characters.
    Any,
}

/// A `LIKE` pattern's elements: `\` takes the next byte as it is (a trailing one is itself);
/// the bytes of a multi-byte character are never `%`, `_` or `\`.
pub(super) fn like_tokens(p: &[u8]) -> Vec<Tok> {
    let mut out = Vec::with_capacity(p.len());
    let mut bytes = p.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'%' => Tok::Any,
            b'_' => Tok::One,
            b'\\' => Tok::Byte(bytes.next().copied().unwrap_or(b'\\')),
            b => Tok::Byte(b),
        });
    }
    out
}

/// Bytes of the UTF-8 character that starts with `b`.
fn char_len(b: u8) -> usize {
    match b {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Whether `s` (UTF-8) matches the pattern `p`: greedy, going back only to the last `%`
/// (enough, since a later `%` covers whatever an earlier one would), and only ever to a
/// character's first byte.
fn like(s: &[u8], p: &[Tok]) -> bool {
    let (mut si, mut pi) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(Tok::Any) => {
                back = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(Tok::One) => {
                si += char_len(s[si]);
                pi += 1;
                continue;
            }
            Some(Tok::Byte(b)) if *b == s[si] => {
                si += 1;
                pi += 1;
                continue;
            }
            _ => {}
        }
        match back {
            // The last `%` takes one more character.
            Some((after, from)) => {
                let from = from + char_len(s[from]);
                back = Some((after, from));
                (pi, si) = (after, from);
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|t| *t == Tok::Any)
}

/// Masks of the blocks from row `base` of a string column whose values match a `LIKE` of
/// `shape` ([`program::like`]): `text` is the prefix, suffix or infix, `tokens` the pattern of
/// [`program::like::PATTERN`].
#[inline(always)]
pub(super) fn like_blocks(
    col: &Column,
    shape: u8,
    text: &[u8],
    tokens: &[Tok],
    base: usize,
    out: &mut [u64],
) {
    match shape {
        program::like::PREFIX => str_blocks(col, base, out, |s| s.starts_with(text)),
        program::like::SUFFIX => str_blocks(col, base, out, |s| s.ends_with(text)),
        program::like::CONTAINS => str_blocks(col, base, out, |s| contains(s, text)),
        _ => str_blocks(col, base, out, |s| like(s, tokens)),
    }
}
