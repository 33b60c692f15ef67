//! A column chunk's pages as the decoder reads them: the byte ranges fetched, decompressed
//! by Parquet's page reader, a dictionary page and plain pages decoded into Arrow arrays of
//! the column's source type, dictionary-encoded pages kept as their index hybrid, and each
//! page's null rows by its definition levels.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, make_array};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::DataType;
use bytes::Bytes;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

use super::Col;
use super::hybrid::unpack_at;

/// A column chunk's pages as read: its dictionary, and the data pages fetched.
pub(super) struct Chunk {
    pub(super) dict: Option<ArrayRef>,
    pub(super) pages: Vec<DataPage>,
}

/// A decompressed data page.
pub(super) struct DataPage {
    /// Its first row in the row group.
    pub(super) first: usize,
    pub(super) rows: usize,
    /// Values it holds (its rows less its nulls).
    pub(super) values: usize,
    /// With nulls: each row's place among the values, [`NULL`] for a null row.
    pub(super) nulls: Option<Vec<u32>>,
    pub(super) body: Body,
}

/// A null row's place among its page's values.
pub(super) const NULL: u32 = u32::MAX;

/// Each of `rows` rows' place among a page's values by its definition levels (an RLE /
/// bit-packed hybrid of width 1), [`NULL`] for a null; `None` when no row is null.
pub(super) fn places(levels: &[u8], rows: usize) -> std::result::Result<Option<Vec<u32>>, String> {
    let (mut runs_buf, mut defined) = (Vec::new(), Vec::new());
    unpack_at(levels, 1, rows, None, &mut runs_buf, &mut defined)?;
    if defined.iter().all(|&d| d == 1) {
        return Ok(None);
    }
    let mut next = 0u32;
    let places = defined
        .iter()
        .map(|&d| match d {
            1 => {
                next += 1;
                next - 1
            }
            _ => NULL,
        })
        .collect();
    Ok(Some(places))
}

pub(super) enum Body {
    /// Dictionary indices: an RLE / bit-packed hybrid of `bit_width` bits.
    Indices { data: Bytes, bit_width: u8 },
    /// Plain values, decoded.
    Values(ArrayRef),
}

/// Rows `[a, b)` of page `i` of a chunk by its page index.
pub(super) fn page_rows(pages: &[PageLocation], i: usize, rows: usize) -> (usize, usize) {
    let a = pages[i].first_row_index.max(0) as usize;
    let b = pages
        .get(i + 1)
        .map_or(rows, |p| p.first_row_index.max(0) as usize);
    (a, b.max(a))
}

/// Whether sorted `pos` holds a row in `[a, b)`.
pub(super) fn holds_any(pos: &[u32], a: usize, b: usize) -> bool {
    let i = pos.partition_point(|&p| (p as usize) < a);
    pos.get(i).is_some_and(|&p| (p as usize) < b)
}

/// Byte ranges of an object as fetched, served to the page reader by file offset.
pub(super) struct Pieces(pub(super) Vec<(u64, Bytes)>);

impl Pieces {
    fn find(&self, start: u64, len: usize) -> parquet::errors::Result<Bytes> {
        for (at, b) in &self.0 {
            if start >= *at && start + len as u64 <= at + b.len() as u64 {
                let s = (start - at) as usize;
                return Ok(b.slice(s..s + len));
            }
        }
        Err(parquet::errors::ParquetError::General(format!(
            "bytes {start}..{} were not read",
            start + len as u64
        )))
    }
}

impl Length for Pieces {
    fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|(a, b)| a + b.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

impl ChunkReader for Pieces {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let (at, b) = self
            .0
            .iter()
            .find(|(at, b)| start >= *at && start < at + b.len() as u64)
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!("byte {start} was not read"))
            })?;
        Ok(b.slice((start - at) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length)
    }
}

/// Which pages of a chunk's page index were read.
pub(super) struct Fetched {
    /// The page index's pages.
    pub(super) pages: Vec<PageLocation>,
    /// Read or not, by page.
    pub(super) keep: Vec<bool>,
}

/// Decompresses a chunk's fetched pages (`fetched`: which pages of its page index were read;
/// `None`: the whole chunk was, without a page index).
pub(super) fn read_chunk(
    md: &ParquetMetaData,
    rg: usize,
    col: &Col,
    pieces: Pieces,
    fetched: Option<Fetched>,
) -> std::result::Result<Chunk, String> {
    let group = md.row_group(rg);
    let meta = group.column(col.leaf);
    let rows = group.num_rows() as usize;
    let locations = fetched.as_ref().map(|f| f.pages.clone());
    let mut reader = SerializedPageReader::new(Arc::new(pieces), meta, rows, locations)
        .map_err(|e| e.to_string())?;
    let mut chunk = Chunk {
        dict: None,
        pages: Vec::new(),
    };
    let mut next_row = 0usize;
    let mut page = 0usize;
    loop {
        let is_dict = match reader.peek_next_page().map_err(|e| e.to_string())? {
            None => break,
            Some(m) => m.is_dict,
        };
        if !is_dict && let Some(f) = &fetched {
            let read = f.keep.get(page).copied().unwrap_or(false);
            next_row = page_rows(&f.pages, page, rows).0;
            page += 1;
            if !read {
                reader.skip_next_page().map_err(|e| e.to_string())?;
                continue;
            }
        }
        let Some(p) = reader.get_next_page().map_err(|e| e.to_string())? else {
            break;
        };
        match p {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                ..
            } => {
                if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
                    return Err(format!("dictionary page encoded as {encoding}"));
                }
                chunk.dict = Some(plain_values(&buf, num_values as usize, col)?);
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                ..
            } => {
                let n = num_values as usize;
                let mut at = 0;
                let mut nulls = None;
                if col.optional {
                    if def_level_encoding != Encoding::RLE {
                        return Err(format!("definition levels encoded as {def_level_encoding}"));
                    }
                    let len = buf
                        .get(..4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                        .ok_or("a page shorter than its levels")?;
                    let levels = buf
                        .get(4..4 + len)
                        .ok_or("a page shorter than its levels")?;
                    nulls = places(levels, n)?;
                    at = 4 + len;
                }
                let page = data_page(next_row, n, nulls, buf.slice(at..), encoding, col, &chunk)?;
                chunk.pages.push(page);
                next_row += n;
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                if num_rows != num_values || (num_nulls != 0 && !col.optional) {
                    return Err("levels that do not match the column".into());
                }
                let n = num_values as usize;
                let (rep, def) = (rep_levels_byte_len as usize, def_levels_byte_len as usize);
                let mut nulls = None;
                if num_nulls != 0 {
                    let levels = buf
                        .get(rep..rep + def)
                        .ok_or("a page shorter than its levels")?;
                    nulls = places(levels, n)?;
                }
                let values = buf.slice((rep + def).min(buf.len())..);
                let page = data_page(next_row, n, nulls, values, encoding, col, &chunk)?;
                chunk.pages.push(page);
                next_row += n;
            }
        }
    }
    Ok(chunk)
}

/// A data page of `rows` rows from `first` as the decoder keeps it: its nulls' places, and
/// its values section (`data`) as indices or plain values.
pub(super) fn data_page(
    first: usize,
    rows: usize,
    nulls: Option<Vec<u32>>,
    data: Bytes,
    encoding: Encoding,
    col: &Col,
    chunk: &Chunk,
) -> std::result::Result<DataPage, String> {
    let values = match &nulls {
        Some(places) => places.iter().filter(|&&p| p != NULL).count(),
        None => rows,
    };
    let body = match encoding {
        Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY => {
            if chunk.dict.is_none() {
                return Err("a dictionary-encoded page without a dictionary".into());
            }
            let bit_width = *data.first().ok_or("an empty page")?;
            if bit_width > 32 {
                return Err(format!("bit width {bit_width}"));
            }
            Body::Indices {
                data: data.slice(1..),
                bit_width,
            }
        }
        Encoding::PLAIN => Body::Values(plain_values(&data, values, col)?),
        e => return Err(format!("a page encoded as {e}")),
    };
    Ok(DataPage {
        first,
        rows,
        values,
        nulls,
        body,
    })
}

/// `n` plain-encoded values of `col` as an Arrow array of its source type.
pub(super) fn plain_values(
    buf: &Bytes,
    n: usize,
    col: &Col,
) -> std::result::Result<ArrayRef, String> {
    let short = || format!("a page shorter than its {n} values");
    let fixed = |width: usize, t: DataType| -> std::result::Result<ArrayRef, String> {
        let bytes = buf.get(..n * width).ok_or_else(short)?;
        // The page's own buffer when its values are aligned, else a copy.
        let buffer = match bytes.as_ptr().align_offset(width) {
            0 => Buffer::from(buf.slice(..n * width)),
            _ => Buffer::from_slice_ref(bytes),
        };
        let data = arrow::array::ArrayData::builder(t)
            .len(n)
            .add_buffer(buffer)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(make_array(data))
    };
    match (col.physical, &col.source) {
        (PhysicalType::INT32 | PhysicalType::FLOAT, t) => fixed(4, t.clone()),
        (PhysicalType::INT64, DataType::Decimal128(p, s)) => {
            let v = fixed(8, DataType::Decimal64(*p, *s))?;
            arrow::compute::cast(&v, &col.source).map_err(|e| e.to_string())
        }
        (PhysicalType::INT64 | PhysicalType::DOUBLE, t) => fixed(8, t.clone()),
        (PhysicalType::BYTE_ARRAY, t) => {
            let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
            let mut values: Vec<u8> = Vec::new();
            offsets.push(0);
            let mut at = 0usize;
            for _ in 0..n {
                let len = buf
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(short)?;
                let s = buf.get(at + 4..at + 4 + len).ok_or_else(short)?;
                values.extend_from_slice(s);
                offsets.push(i32::try_from(values.len()).map_err(|_| "strings past 2 GiB")?);
                at += 4 + len;
            }
            let strings = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_vec(values),
                None,
            )
            .map_err(|e| e.to_string())?;
            let strings: ArrayRef = Arc::new(strings);
            match t {
                DataType::Utf8 => Ok(strings),
                t => arrow::compute::cast(&strings, t).map_err(|e| e.to_string()),
            }
        }
        (p, _) => Err(format!("physical type {p}")),
    }
}
