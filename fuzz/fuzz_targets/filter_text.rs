//! Filters in text form (`nearstore query --filter`, `Query::filter`): the parser must refuse
//! bad input with an error, never panic, and what it accepts must print and re-parse.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(e) = nearstore_proto::Expr::parse(text)
    {
        let _ = nearstore_proto::Expr::parse(&e.to_string());
    }
});
