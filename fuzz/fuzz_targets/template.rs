//! Liquid templates: the first line-separated part is compiled as text and as HTML, its
//! output variables are read, and it is rendered with the rest, read as JSON, as its data.
#![no_main]

use flowmark_core::expr::Scope;
use flowmark_core::template::{Template, output_variables};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (source, rest) = text.split_once("\n---\n").unwrap_or((text, "{}"));
    let _ = output_variables(source);
    let value: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
    let scope = Scope::new().with("contact", &value).with("event", &value).with("env", &value);
    if let Ok(template) = Template::compile(source) {
        let _ = template.render(&scope);
    }
    if let Ok(template) = Template::compile_html(source) {
        let _ = template.render(&scope);
    }
});
