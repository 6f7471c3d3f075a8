//! Contact CSV files as `flowmark import contacts` and the import endpoint read them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowmark_runtime::import::read(data);
});
