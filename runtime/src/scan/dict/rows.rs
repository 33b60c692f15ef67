//! Rows of a row group found and gathered by their pages: a test's answers applied to the
//! rows still kept (`narrow`), and a column's values at the rows kept (`gather`).

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, DictionaryArray, Int32Array, UInt32Array};
use arrow::buffer::{Buffer, ScalarBuffer};
use arrow::datatypes::{DataType, Int32Type};

use super::hybrid::{Run, unpack_at};
use super::pages::{Body, Chunk, DataPage, NULL};
use super::{Answers, Col};

/// Buffers reused from page to page.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) runs: Vec<Run>,
    pub(super) at: Vec<u32>,
    pub(super) indices: Vec<u32>,
    /// A page's every index, where the rows read are many ([`indices_at`]).
    pub(super) page: Vec<u32>,
    /// Per row read of a page with nulls: whether it is null ([`page_indices`]).
    pub(super) null: Vec<bool>,
}

/// For `rows` (sorted) of `page`: into `s.indices`, the place in the page's source (its
/// chunk's dictionary of `dict_len` entries, or its plain values) of each non-null row's
/// value, in order; returns whether some row is null, and then `s.null` tells for each row.
pub(super) fn page_indices(
    page: &DataPage,
    rows: &[u32],
    dict_len: Option<usize>,
    s: &mut Scratch,
) -> std::result::Result<bool, String> {
    let first = page.first as u32;
    s.at.clear();
    let whole = rows.len() == page.rows;
    let any_null = match &page.nulls {
        // Every row of the page: no places needed for its indices.
        None if whole && matches!(page.body, Body::Indices { .. }) => false,
        None => {
            s.at.extend(rows.iter().map(|&p| p - first));
            false
        }
        Some(places) => {
            s.null.clear();
            for &p in rows {
                let place = *places
                    .get((p - first) as usize)
                    .ok_or("a row past its page")?;
                s.null.push(place == NULL);
                if place != NULL {
                    s.at.push(place);
                }
            }
            true
        }
    };
    match &page.body {
        Body::Indices { data, bit_width } => {
            let whole = whole && !any_null;
            indices_at(data, *bit_width, page.values, whole, s)?;
            check_indices(&s.indices, dict_len.ok_or("no dictionary")?)?;
        }
        Body::Values(v) => {
            std::mem::swap(&mut s.indices, &mut s.at);
            check_indices(&s.indices, v.len())?;
        }
    }
    Ok(any_null)
}

/// Narrows `pos` (sorted rows of the row group) to the rows whose answers pass.
pub(super) fn narrow(
    chunk: &Chunk,
    answers: &Answers,
    pos: &mut Vec<u32>,
    s: &mut Scratch,
) -> std::result::Result<(), String> {
    let mut kept = 0usize;
    let dict_len = chunk.dict.as_ref().map(|d| d.len());
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let table = match &page.body {
            Body::Indices { .. } => answers.dictionary.as_deref().ok_or("no dictionary")?,
            Body::Values(_) => answers.plain[i].as_deref().ok_or("no answers for a page")?,
        };
        let (from, read) = (span.start, span.end);
        let any_null = page_indices(page, &pos[from..read], dict_len, s)?;
        if !any_null {
            for (q, &ix) in s.indices.iter().enumerate() {
                pos[kept] = pos[from + q];
                kept += table[ix as usize] as usize;
            }
            continue;
        }
        let mut values = s.indices.iter();
        for q in 0..read - from {
            let pass = match s.null[q] {
                true => answers.null,
                false => table[*values.next().ok_or("fewer values than rows")? as usize],
            };
            pos[kept] = pos[from + q];
            kept += pass as usize;
        }
    }
    pos.truncate(kept);
    Ok(())
}

/// The pages of `chunk` that hold rows of sorted `pos`, each with its span of `pos`; an error
/// when a row is in no page read.
pub(super) fn spans(
    chunk: &Chunk,
    pos: &[u32],
) -> std::result::Result<Vec<(usize, Range<usize>)>, String> {
    let mut out = Vec::new();
    let mut read = 0usize;
    for (i, page) in chunk.pages.iter().enumerate() {
        let from = read;
        let end = (page.first + page.rows) as u32;
        read += pos[read..].partition_point(|&p| p < end);
        if from == read {
            continue;
        }
        if (pos[from] as usize) < page.first {
            return Err(format!("row {} is in no page read", pos[from]));
        }
        out.push((i, from..read));
    }
    if read < pos.len() {
        return Err(format!("row {} is in no page read", pos[read]));
    }
    Ok(out)
}

/// The values of `col` at rows `pos` (sorted) as its output type: fixed-width values read
/// straight from their dictionary or plain page ([`gather_primitive`]), others by `take`.
pub(super) fn gather(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    use arrow::datatypes as t;
    match (&col.output, &col.source) {
        (DataType::Dictionary(..), _) => gather_by_take(chunk, col, pos, s),
        (_, DataType::Int32) => gather_primitive::<t::Int32Type>(chunk, col, pos, s),
        (_, DataType::Date32) => gather_primitive::<t::Date32Type>(chunk, col, pos, s),
        (_, DataType::Int64) => gather_primitive::<t::Int64Type>(chunk, col, pos, s),
        (_, DataType::Decimal64(..)) => gather_primitive::<t::Decimal64Type>(chunk, col, pos, s),
        (_, DataType::Decimal128(..)) => gather_primitive::<t::Decimal128Type>(chunk, col, pos, s),
        (_, DataType::Float32) => gather_primitive::<t::Float32Type>(chunk, col, pos, s),
        (_, DataType::Float64) => gather_primitive::<t::Float64Type>(chunk, col, pos, s),
        _ => gather_by_take(chunk, col, pos, s),
    }
}

/// [`gather`] for a column of fixed-width values `T`: each row's value read from its
/// dictionary at its index (a page without nulls unpacked whole when it holds a quarter of
/// its rows or more) or from its plain page.
pub(super) fn gather_primitive<T: arrow::datatypes::ArrowPrimitiveType>(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    use arrow::array::{AsArray, PrimitiveArray};
    let typed = |a: &ArrayRef| -> std::result::Result<ScalarBuffer<T::Native>, String> {
        let a = a.as_primitive_opt::<T>().ok_or("values of another type")?;
        Ok(a.values().clone())
    };
    let dict = chunk.dict.as_ref().map(typed).transpose()?;
    let mut out: Vec<T::Native> = Vec::with_capacity(pos.len());
    // Validity, when some page read has nulls.
    let mut valid: Option<Vec<bool>> = chunk
        .pages
        .iter()
        .any(|p| p.nulls.is_some())
        .then(|| Vec::with_capacity(pos.len()));
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let rows = &pos[span];
        let first = page.first as u32;
        let plain = match &page.body {
            Body::Values(v) => Some(typed(v)?),
            Body::Indices { .. } => None,
        };
        let source: &[T::Native] = match (&plain, &dict) {
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => return Err("no dictionary".into()),
        };
        match unpack_dense(page, rows.len(), source.len(), s)? {
            true => {
                let all = &s.page;
                out.extend(
                    rows.iter()
                        .map(|&p| source[all[(p - first) as usize] as usize]),
                );
                if let Some(v) = &mut valid {
                    v.extend(std::iter::repeat_n(true, rows.len()));
                }
            }
            false => {
                let any_null = page_indices(page, rows, Some(source.len()), s)?;
                if !any_null {
                    out.extend(s.indices.iter().map(|&ix| source[ix as usize]));
                    if let Some(v) = &mut valid {
                        v.extend(std::iter::repeat_n(true, rows.len()));
                    }
                    continue;
                }
                let v = valid.as_mut().expect("a page with nulls");
                let mut values = s.indices.iter();
                for &null in &s.null {
                    v.push(!null);
                    out.push(match null {
                        true => T::Native::default(),
                        false => source[*values.next().ok_or("fewer values than rows")? as usize],
                    });
                }
            }
        }
    }
    let nulls = valid.map(arrow::buffer::NullBuffer::from);
    let array =
        PrimitiveArray::<T>::new(ScalarBuffer::from(out), nulls).with_data_type(col.output.clone());
    Ok(Arc::new(array))
}

/// [`gather`] by `take` from each page's source (its dictionary, or a plain page's values):
/// an Arrow dictionary column takes the indices as its keys.
pub(super) fn gather_by_take(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    let mut pieces: Vec<ArrayRef> = Vec::new();
    let mut source: Option<&ArrayRef> = None;
    let mut indices: Vec<u32> = Vec::with_capacity(pos.len());
    let mut valid: Vec<bool> = Vec::new();
    let dict_len = chunk.dict.as_ref().map(|d| d.len());
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let rows = &pos[span];
        let from_source = match &page.body {
            Body::Indices { .. } => chunk.dict.as_ref().ok_or("no dictionary")?,
            Body::Values(v) => v,
        };
        if let Some(cur) = source
            && !Arc::ptr_eq(cur, from_source)
        {
            let (ix, v) = (std::mem::take(&mut indices), std::mem::take(&mut valid));
            pieces.push(build(col, cur, ix, v)?);
        }
        source = Some(from_source);
        // Many rows of a dictionary page without nulls: their indices picked from the page
        // unpacked whole.
        if matches!(page.body, Body::Indices { .. })
            && unpack_dense(page, rows.len(), dict_len.ok_or("no dictionary")?, s)?
        {
            let first = page.first as u32;
            match rows.len() == page.rows {
                true => indices.extend_from_slice(&s.page),
                false => indices.extend(rows.iter().map(|&p| s.page[(p - first) as usize])),
            }
            if !valid.is_empty() {
                valid.extend(std::iter::repeat_n(true, rows.len()));
            }
            continue;
        }
        let any_null = page_indices(page, rows, dict_len, s)?;
        if !any_null {
            indices.extend_from_slice(&s.indices);
            if !valid.is_empty() {
                valid.extend(std::iter::repeat_n(true, rows.len()));
            }
            continue;
        }
        // The rows before this page's, all valid.
        if valid.is_empty() {
            valid.resize(indices.len(), true);
        }
        let mut values = s.indices.iter();
        for &null in &s.null {
            valid.push(!null);
            indices.push(match null {
                true => 0,
                false => *values.next().ok_or("fewer values than rows")?,
            });
        }
    }
    let Some(cur) = source else {
        return Ok(arrow::array::new_empty_array(&col.output));
    };
    pieces.push(build(col, cur, indices, valid)?);
    match pieces.as_slice() {
        [one] => Ok(one.clone()),
        many => {
            let refs: Vec<&dyn Array> = many.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs).map_err(|e| e.to_string())
        }
    }
}

/// `source` at `indices` as `col`'s output type (null where `valid`, when not empty, says
/// so): an Arrow dictionary column takes the indices as its keys.
pub(super) fn build(
    col: &Col,
    source: &ArrayRef,
    indices: Vec<u32>,
    valid: Vec<bool>,
) -> std::result::Result<ArrayRef, String> {
    let nulls = (!valid.is_empty()).then(|| arrow::buffer::NullBuffer::from(valid));
    let len = indices.len();
    let bits = Buffer::from_vec(indices);
    match &col.output {
        DataType::Dictionary(..) => {
            // Indices checked against the dictionary's length fit an `i32`: the same bits.
            let keys = Int32Array::new(ScalarBuffer::new(bits, 0, len), nulls);
            if source.len() > i32::MAX as usize {
                return Err("a dictionary past i32 keys".into());
            }
            // SAFETY: every index was checked against its source's length (`check_indices`,
            // in `page_indices` and above) before it was gathered here, and a null row's key
            // is 0 under a null; so each valid key is an index of `source`, as
            // `new_unchecked` requires.
            let d = unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, source.clone()) };
            Ok(Arc::new(d))
        }
        _ => {
            let indices = UInt32Array::new(ScalarBuffer::new(bits, 0, len), nulls);
            arrow::compute::take(source.as_ref(), &indices, None).map_err(|e| e.to_string())
        }
    }
}

/// Whether reading `read` of a page's `rows` rows unpacks the page whole: a quarter of them or
/// more.
fn dense(read: usize, rows: usize) -> bool {
    read * 4 >= rows
}

/// For `read` rows of a dictionary page without nulls that are [`dense`]: its every index
/// unpacked into `s.page` and checked against `dict_len`; `false` (nothing done) for any
/// other page.
fn unpack_dense(
    page: &DataPage,
    read: usize,
    dict_len: usize,
    s: &mut Scratch,
) -> std::result::Result<bool, String> {
    let (Body::Indices { data, bit_width }, None) = (&page.body, &page.nulls) else {
        return Ok(false);
    };
    if !dense(read, page.rows) {
        return Ok(false);
    }
    unpack_at(data, *bit_width, page.rows, None, &mut s.runs, &mut s.page)?;
    check_indices(&s.page, dict_len)?;
    Ok(true)
}

pub(super) fn check_indices(indices: &[u32], len: usize) -> std::result::Result<(), String> {
    let max = indices.iter().copied().max().unwrap_or(0);
    if !indices.is_empty() && max as usize >= len {
        return Err(format!("dictionary index {max} past its {len} entries"));
    }
    Ok(())
}

/// The hybrid's values into `s.indices`: every value, unpacked in groups, for the `whole`
/// page; else at page rows `s.at` (sorted), picked from the page unpacked whole when they are
/// a quarter of its rows or more, else each read where it lies.
pub(super) fn indices_at(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    whole: bool,
    s: &mut Scratch,
) -> std::result::Result<(), String> {
    if whole {
        return unpack_at(data, bit_width, rows, None, &mut s.runs, &mut s.indices);
    }
    if !dense(s.at.len(), rows) {
        return unpack_at(
            data,
            bit_width,
            rows,
            Some(&s.at),
            &mut s.runs,
            &mut s.indices,
        );
    }
    unpack_at(data, bit_width, rows, None, &mut s.runs, &mut s.page)?;
    s.indices.clear();
    for &r in &s.at {
        let v = s
            .page
            .get(r as usize)
            .ok_or("a row past the page's values")?;
        s.indices.push(*v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid written by hand: a repeated run, a bit-packed run, read whole and at rows.
    #[test]
    fn a_hybrid_reads_alike_whole_and_at_rows() {
        // bit width 3: 5 × value 6, then 16 values 0..16 mod 8 bit-packed.
        let mut data = vec![5 << 1, 6];
        data.push(((2u8) << 1) | 1);
        let values: Vec<u32> = (0..16).map(|i| i % 8).collect();
        let mut bits = vec![0u8; 6];
        for (i, v) in values.iter().enumerate() {
            for b in 0..3 {
                if v >> b & 1 == 1 {
                    let bit = i * 3 + b;
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        data.extend(bits);
        let mut expect = vec![6u32; 5];
        expect.extend(&values);
        let mut s = Scratch::default();
        indices_at(&data, 3, 21, true, &mut s).unwrap();
        assert_eq!(s.indices, expect);
        // Few rows (each read where it lies) and many (picked from the page unpacked).
        let few = [0u32, 11, 20];
        let many = [0u32, 4, 5, 6, 7, 11, 20];
        for at in [&few[..], &many[..]] {
            s.at = at.to_vec();
            indices_at(&data, 3, 21, false, &mut s).unwrap();
            let want: Vec<u32> = at.iter().map(|&i| expect[i as usize]).collect();
            assert_eq!(s.indices, want);
        }
        // Fewer values than rows, a header past the end: errors, not panics.
        assert!(indices_at(&data, 3, 40, true, &mut s).is_err());
        for at in [&few[..], &many[..]] {
            s.at = at.to_vec();
            assert!(indices_at(&data[..1], 3, 21, false, &mut s).is_err());
        }
    }
}
