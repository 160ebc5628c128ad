//! The network config (`<prefix>/config`) as raw text: anything the store holds must parse to a
//! config or an error, and a config that parses must satisfy the invariants the agent and the
//! allocator build on.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    // The store holds text; a key whose value is not UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    common::check_config(text);
});
