//! The parser never panics and always points inside the text, whatever it is given.
//!
//! Two generators: arbitrary text with YAML-ish characters, and the blueprints with a random
//! slice cut out and random text put in (the mistakes people make while editing).

use flowmark_core::{Severity, Source, compile};
use proptest::prelude::*;

fn check(text: &str) {
    let source = Source::new("fuzz.yaml", text.to_owned());
    let compiled = compile(&source);
    let has_error = compiled.diagnostics.iter().any(|d| d.severity == Severity::Error);
    assert_eq!(compiled.workflow.is_some(), !has_error, "a workflow comes back exactly when there is no error");
    for d in &compiled.diagnostics {
        assert!(d.span.offset + d.span.len <= text.len(), "span inside the text: {d:?}");
        assert!(text.is_char_boundary(d.span.offset) && text.is_char_boundary(d.span.offset + d.span.len));
        let _ = d.to_json(&source);
    }
}

const BLUEPRINTS: [&str; 2] = [
    include_str!("../../../../blueprints/whitepaper-nurture.yaml"),
    include_str!("../../../../blueprints/blog-post.yaml"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "[a-z:{}\\[\\],\\- \n'\"|>#&*!%@0-9.é]{0,300}") {
        check(&text);
    }

    #[test]
    fn edited_blueprints_never_panic(which in 0usize..2, cut_start in 0usize..4000, cut_len in 0usize..80, insert in "[a-z:{}\\[\\] \n'\"0-9é]{0,12}") {
        let text = BLUEPRINTS[which];
        let mut start = cut_start.min(text.len());
        while !text.is_char_boundary(start) { start -= 1; }
        let mut end = (start + cut_len).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        let edited = format!("{}{}{}", &text[..start], insert, &text[end..]);
        check(&edited);
    }
}
