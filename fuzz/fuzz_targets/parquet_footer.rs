//! Parquet footers from untrusted uploads: the metadata decoder the device's upload validation
//! uses must refuse damaged footers with an error, never panic or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(&bytes);
});
