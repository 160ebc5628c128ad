//! `Mac` from text (leases' `VtepMAC`, the kernel's neighbour entries): accepted means exactly
//! six two-digit hex octets, so what weft writes back is the input, lower-cased.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::mac::Mac;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Mac>() {
        Ok(mac) => {
            assert_eq!(mac.to_string(), text.to_ascii_lowercase(), "lenient MAC accepted");
            assert_eq!(mac.to_string().parse::<Mac>(), Ok(mac));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The same text as a JSON string, the way it arrives inside a lease.
    let json = serde_json::Value::String(text.to_string()).to_string();
    assert_eq!(serde_json::from_str::<Mac>(&json).ok(), text.parse::<Mac>().ok());
});
