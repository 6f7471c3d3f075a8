//! The YAML workflow decoder and validator on arbitrary text; a workflow that compiles is
//! started once by the run state machine, and every diagnostic is rendered as the CLI would.
#![no_main]

use flowmark_core::engine::{Facts, Input, Run, RunId, handle};
use flowmark_core::{Source, Timestamp, compile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = Source::new("fuzz.yaml", text);
    let compiled = compile(&source);
    for diagnostic in &compiled.diagnostics {
        let _ = diagnostic.to_json(&source);
    }
    if let Some(workflow) = compiled.workflow {
        let run = Run::new(RunId(1), &workflow, 1, "fuzz", Timestamp(0));
        let _ = handle(&workflow, run, &Input::Start { event: None }, &Facts::empty(), Timestamp(0));
    }
});
