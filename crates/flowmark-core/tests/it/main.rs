//! Integration tests of flowmark-core through its public API: `compile` and `engine::handle`.

mod engine_properties;
mod parse_properties;
mod tidy;

use flowmark_core::{Source, Workflow, compile};

pub fn blueprint(name: &str) -> Workflow {
    let path = format!("{}/../../blueprints/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let compiled = compile(&Source::new(path, text));
    assert!(compiled.diagnostics.is_empty(), "{:#?}", compiled.diagnostics);
    compiled.workflow.unwrap()
}
