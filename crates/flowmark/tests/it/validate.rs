//! `flowmark validate`: golden tests of the rendered diagnostics, one fixture per mistake.
//!
//! Each fixture under `tests/fixtures/invalid/` holds a kind of mistake people make; the
//! snapshot pins what they read: `file:line:col`, the snippet, the label, what was expected,
//! and the hint. Exit code 1 on every one of them; 0 on the blueprints.

use crate::{fixtures, flowmark, repo_path};

fn validate(name: &str) -> String {
    let output = flowmark().current_dir(fixtures().join("invalid")).args(["validate", name]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{name} must fail validation");
    String::from_utf8(output.stdout).unwrap()
}

macro_rules! golden {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                insta::assert_snapshot!(validate($file));
            }
        )*
    };
}

golden! {
    yaml_syntax => "yaml-syntax.yaml",
    unknown_key_with_did_you_mean => "unknown-key.yaml",
    bad_durations => "bad-duration.yaml",
    unknown_step_target => "unknown-target.yaml",
    unreachable_step => "unreachable.yaml",
    loop_without_wait => "loop-without-wait.yaml",
    branch_without_otherwise => "branch-without-otherwise.yaml",
    cel_syntax_and_unknown_variable => "cel.yaml",
    liquid_syntax => "liquid.yaml",
    template_bombs => "template-bombs.yaml",
    unknown_roles_raci_and_impossible_quorum => "roles.yaml",
    parallel_branches_reach_different_joins => "parallel.yaml",
    raci_and_caps => "raci.yaml",
    keys_that_would_be_ignored => "ignored-keys.yaml",
    many_problems_in_one_file => "many-problems.yaml",
    template_variables => "template-variables.yaml",
    working_days => "working-days.yaml",
}

/// A file with warnings only: printed like errors, and the file still validates (exit 0).
#[test]
fn numbers_compared_with_strings() {
    let output =
        flowmark().current_dir(fixtures().join("invalid")).args(["validate", "mixed-types.yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "warnings do not fail validation");
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}

#[test]
fn json_output_lists_every_problem_with_positions() {
    let output = flowmark()
        .current_dir(fixtures().join("invalid"))
        .args(["validate", "--json", "many-problems.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    insta::assert_json_snapshot!(json);
}

#[test]
fn blueprints_are_valid() {
    let names = ["whitepaper-nurture", "blog-post", "lead-routing", "webinar-follow-up"];
    let mut command = flowmark();
    command.arg("validate");
    for name in names {
        command.arg(repo_path(&format!("blueprints/{name}.yaml")));
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    // Without a warning either (the nurture journey orders its score only after scoring it).
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.lines().filter(|line| line.ends_with(".yaml: ok")).count(), names.len(), "{printed}");
}

#[test]
fn a_file_with_only_warnings_is_said_to_be_ok() {
    let dir = tempdir();
    let path = dir.join("warnings-only.yaml");
    let text = "id: hello\nsubject: contact\ntrigger: { event: Signed Up }\nsteps:\n  - id: hi\n    action: { email: { subject: \"Hi {{ contact.first_name }}\", text: hello } }\n";
    std::fs::write(&path, text).unwrap();
    let output = flowmark().arg("validate").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("flowmark::template-no-default"), "{stdout}");
    assert!(stdout.trim_end().ends_with("warnings-only.yaml: ok, with 1 warning"), "{stdout}");
}

#[test]
fn unreadable_files_are_operating_errors() {
    let output = flowmark().args(["validate", "does-not-exist.yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read does-not-exist.yaml"));
    let dir = tempdir();
    let path = dir.join("binary.yaml");
    std::fs::write(&path, [0x69, 0x64, 0x3a, 0xff, 0xfe]).unwrap();
    let output = flowmark().arg("validate").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not UTF-8 text (invalid byte at offset 3)"));
}

/// An empty directory `name` under this test's `tempdir`: what an earlier run left there is removed.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = tempdir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flowmark-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
