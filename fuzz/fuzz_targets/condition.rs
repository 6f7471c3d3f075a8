//! CEL conditions: the first line is compiled (as a segment's, which may count events) and
//! evaluated against the rest, read as JSON, bound as `contact`, `event` and `events`.
#![no_main]

use flowmark_core::expr::{Condition, Scope};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (expression, rest) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(condition) = Condition::compile(expression, &["contact", "event", "events"]) else { return };
    let _ = condition.event_counts();
    let value: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
    let scope = Scope::new().with("contact", &value).with("event", &value).with("events", &value);
    let _ = condition.eval(&scope);
});
