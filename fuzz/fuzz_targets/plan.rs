//! Plan documents as a device receives them (DoGet tickets, GetFlightInfo commands): decoding
//! and validation must refuse bad input with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = nearstore_proto::Plan::from_json(data) {
        let _ = plan.validate();
        let _ = plan.to_json();
    }
});
