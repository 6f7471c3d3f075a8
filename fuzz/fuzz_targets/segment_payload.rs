//! Segment-shaped calls as the ingestion endpoints read them: any JSON, as every call kind,
//! alone and as a batch item under a batch context.
#![no_main]

use flowmark_core::Timestamp;
use flowmark_server::segment::{KINDS, read};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    for kind in KINDS {
        let _ = read(kind, &value, None, Timestamp(0));
        let _ = read(kind, &value, value.get("context"), Timestamp(i64::MAX));
    }
    if let Some(Value::Array(items)) = value.get("batch") {
        for item in items {
            let kind = item.get("type").and_then(Value::as_str).unwrap_or("track");
            let _ = read(kind, item, value.get("context"), Timestamp(0));
        }
    }
});
