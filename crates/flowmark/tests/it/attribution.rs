//! `flowmark attribution PATHS.csv`: the models over a path file, as the documented JSON and
//! as a table, and bad files refused with every problem located (exit code 1).

use serde_json::{Value, json};

use crate::flowmark;

const TOY: &str = "path;total_conversions;total_conversion_value;total_null\n\
                   a > a > b;1;10;1\na;0;0;3\nb > c;2;20;2\nc > a > b;1;5;1\n";

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = super::validate::fresh_dir(name);
    let path = dir.join("paths.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_json_has_every_model_per_channel_and_the_removal_effects() {
    let file = write("attribution-json", TOY);
    let output = flowmark().arg("attribution").arg(&file).arg("--json").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((answer["total_conversions"].as_f64(), answer["total_value"].as_f64()), (Some(4.0), Some(35.0)));
    let models: Vec<&str> = answer["models"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(models, ["first_touch", "last_touch", "linear", "markov", "position_based", "shapley"]);
    assert_eq!(answer["models"]["first_touch"]["b"], json!({ "conversions": 2.0, "value": 20.0 }));
    // The toy's exact removal effects: 5/12, 5/6, 4/7.
    let effects = &answer["removal_effects"];
    for (channel, want) in [("a", 5.0 / 12.0), ("b", 5.0 / 6.0), ("c", 4.0 / 7.0)] {
        assert!((effects[channel].as_f64().unwrap() - want).abs() < 1e-12, "{effects}");
    }
    // Only the models asked for; no removal effects without `markov`.
    let output = flowmark().arg("attribution").arg(&file).args(["--json", "--models", "linear"]).output().unwrap();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["models"].as_object().unwrap().len(), 1);
    assert!(answer.get("removal_effects").is_none(), "{answer}");
    let table = flowmark().arg("attribution").arg(&file).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("4 conversions, value 35.00"), "{table}");
    assert!(table.contains("removal effect") && table.lines().any(|l| l.starts_with("b ")), "{table}");
}

#[test]
fn bad_files_models_and_orders_are_refused_saying_where() {
    let file = write("attribution-bad", "path,total_conversions,total_null\na > b,-2,0\n,1,0\nc,many,0\n");
    let output = flowmark().arg("attribution").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8(output.stderr).unwrap();
    assert!(errors.contains("line 2, column `total_conversions`: `-2` is negative"), "{errors}");
    assert!(errors.contains("line 3, column `path`: the path is empty"), "{errors}");
    assert!(errors.contains("line 4, column `total_conversions`: `many` is not a number"), "{errors}");
    assert!(output.stdout.is_empty(), "no table of half a file");
    let missing = write("attribution-missing", "route,conversions\na,1\n");
    let output = flowmark().arg("attribution").arg(&missing).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must name the columns `path` and `total_conversions`"));
    let none = write("attribution-none", "path,total_conversions,total_null\na > b,0,5\n");
    let output = flowmark().arg("attribution").arg(&none).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no conversions to attribute"), "not a table of NaN");
    let toy = write("attribution-usage", TOY);
    for bad in [["--models", "last_click"], ["--order", "4"]] {
        let output = flowmark().arg("attribution").arg(&toy).args(bad).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
    }
}
