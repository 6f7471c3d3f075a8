//! `schema/workflow.schema.json` against the decoder: both accept and refuse the same
//! documents.
//!
//! The schema is written by hand for editors (the decoder is hand-written for its located
//! diagnostics, so there is no type to derive it from); this test keeps the two together. A
//! schema can see a document's shape, not its meaning, so the rule is: the schema refuses a
//! document exactly when `flowmark validate` reports one of the shape errors in `SHAPE`
//! (unknown, misplaced, missing or mistyped keys and values); documents the decoder accepts,
//! or refuses only for what a schema cannot see (CEL, Liquid, targets, roles, reachability,
//! time zones…), the schema accepts. The cases are every blueprint, every golden diagnostic
//! case (`tests/fixtures/invalid/`) and the probes in `tests/fixtures/schema/`. The schema is
//! applied by `jsonschema` (draft 2020-12) to the YAML as `ruamel.yaml` reads it (YAML 1.2,
//! as the decoder and editors read it: `on` is a string, not a boolean).

use std::path::PathBuf;

use serde_json::Value;

/// The diagnostics a JSON Schema can express.
const SHAPE: &[&str] = &[
    "flowmark::unknown-key",
    "flowmark::misplaced-key",
    "flowmark::missing-key",
    "flowmark::wrong-type",
    "flowmark::unknown-value",
    "flowmark::bad-trigger",
    "flowmark::step-kind",
    "flowmark::wait-kind",
    "flowmark::action-kind",
    "flowmark::bad-duration",
    "flowmark::bad-date",
    "flowmark::bad-time",
    "flowmark::bad-weekday",
    "flowmark::branch-otherwise",
    "flowmark::branch-arm",
    "flowmark::split-arms",
    "flowmark::no-steps",
    "flowmark::no-working-days",
    "flowmark::raci-accountable",
    "flowmark::raci-responsible",
    "flowmark::empty-event-name",
    "flowmark::yaml-syntax",
];

/// Prints `accepted` or `refused: <first error>` per file.
const SCRIPT: &str = r#"
import json, sys
from ruamel.yaml import YAML
from jsonschema import Draft202012Validator
validator = Draft202012Validator(json.load(open(sys.argv[1])))
for name in sys.argv[2:]:
    try:
        document = YAML(typ="safe", pure=True).load(open(name))
    except Exception as error:
        print(f"refused: not YAML ({type(error).__name__})")
        continue
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    print("accepted" if not errors else f"refused: {errors[0].message[:160]} at {list(errors[0].absolute_path)}")
"#;

fn yaml_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_schema_and_the_decoder_accept_and_refuse_the_same_documents() {
    let jsonschema = super::pip_install("jsonschema==4.26.0", "jsonschema");
    let ruamel = super::pip_install("ruamel.yaml==0.18.16", "ruamel/yaml");
    let mut files = yaml_files(crate::repo_path("blueprints"));
    files.extend(yaml_files(crate::fixtures().join("invalid")));
    files.extend(yaml_files(crate::fixtures().join("schema")));
    assert!(files.len() >= 25, "{} cases", files.len());

    let output = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(crate::repo_path("schema/workflow.schema.json"))
        .args(&files)
        .env("PYTHONPATH", std::env::join_paths([&jsonschema, &ruamel]).unwrap())
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let verdicts = String::from_utf8(output.stdout).unwrap();
    let verdicts: Vec<&str> = verdicts.lines().collect();
    assert_eq!(verdicts.len(), files.len());

    let mut disagreements = Vec::new();
    let (mut refused_by_both, mut accepted_by_both) = (0, 0);
    for (file, verdict) in files.iter().zip(verdicts) {
        let output = super::flowmark().arg("validate").arg("--json").arg(file).output().unwrap();
        let diagnostics: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let errors: Vec<&str> =
            diagnostics.iter().filter(|d| d["severity"] == "error").filter_map(|d| d["code"].as_str()).collect();
        let shape_errors: Vec<&&str> = errors.iter().filter(|code| SHAPE.contains(code)).collect();
        let schema_refuses = verdict.starts_with("refused");
        let decoder_finds_shape_errors = !shape_errors.is_empty();
        if schema_refuses != decoder_finds_shape_errors {
            disagreements.push(format!("{}: schema {verdict}; decoder {errors:?}", file.display()));
        } else if schema_refuses {
            refused_by_both += 1;
        } else {
            accepted_by_both += 1;
        }
    }
    assert!(disagreements.is_empty(), "the schema and the decoder disagree:\n{}", disagreements.join("\n"));
    assert!(refused_by_both >= 10 && accepted_by_both >= 8, "{refused_by_both} refused, {accepted_by_both} accepted");
}
