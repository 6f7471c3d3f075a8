//! `flowmark graph`, end to end: the real binary on the blueprints and on a fixture that uses
//! every step kind and the characters each format must escape.
//!
//! Mermaid and DOT are compared with insta snapshots (`tests/it/snapshots/it__graph__*.snap`); SVG is
//! checked for shape instead (well-formed tags, one node text per step id, stable bytes),
//! because its coordinates are layout-rs's to choose and a snapshot would only pin them.
//!
//! Invariant: every test runs the binary, never the module, so what is checked is what a user
//! gets, exit code included.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

const BLOG_POST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/blog-post.yaml");
const WHITEPAPER_NURTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/whitepaper-nurture.yaml");
const BLUEPRINTS: [&str; 2] = [BLOG_POST, WHITEPAPER_NURTURE];

/// Every step kind once, an `end` target, and conditions and names full of quotes, pipes,
/// brackets, `<`, `>` and `&`.
const EVERY_KIND: &str = r#"
id: every-kind
name: "Every kind: <quotes> & \"pipes\" | [brackets]"
subject: contact
trigger: { event: Signed Up }
roles:
  ops: { team: ops }
steps:
  - id: welcome
    action:
      email: { subject: "Hi", text: "Hello" }
  - id: check
    branch:
      - when: 'contact.plan == "pro" || contact.tags.exists(t, t == "a|b[1]")'
        goto: test
      - when: 'contact.score > 10 && contact.score < 20'
        goto: review
      - otherwise: morning
  - id: test
    split:
      - { name: control, weight: 1, goto: morning }
      - { name: variant, weight: 2, goto: fan }
  - id: review
    approval:
      approvers: [ops]
      accountable: ops
      on_reject: stop
  - id: fan
    parallel: [call, track]
  - id: call
    task:
      title: "Call {{ contact.email }}"
      responsible: ops
      accountable: ops
    next: meet
  - id: track
    subflow: { workflow: tracking, wait: true }
    next: meet
  - id: meet
    join: any
    next: won
  - id: morning
    wait: { until: "09:00", days: [mon, fri] }
  - id: pause
    wait: { duration: 1d12h }
  - id: clicked
    wait: { event: Email Link Clicked, timeout: 2d }
    on_timeout: end
  - id: won
    goal: { name: "Deal \"won\" <big>", value: 10 }
  - id: stop
    exit: { reason: "rejected by ops" }
"#;

fn graph(file: &Path, format: &str) -> Output {
    Command::cargo_bin("flowmark").unwrap().args(["graph", "--format", format]).arg(file).output().unwrap()
}

/// Writes `text` to a file of its own under cargo's scratch directory for integration tests.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graph").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn stdout_of(output: &Output) -> String {
    assert!(output.status.success(), "exit {:?}, stderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The step ids of a definition, read off its `- id:` lines (every step in the blueprints and
/// the fixture is written that way), so a blueprint can change without this file changing.
fn step_ids(definition: &str) -> Vec<String> {
    definition
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- id:"))
        .map(|id| id.trim().to_owned())
        .collect()
}

/// Proves every format of every blueprint draws with exit code 0 and some output.
#[test]
fn blueprints_draw_in_every_format() {
    for blueprint in BLUEPRINTS {
        for format in ["svg", "mermaid", "dot"] {
            let output = graph(Path::new(blueprint), format);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{blueprint} as {format}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!output.stdout.is_empty(), "{blueprint} as {format} printed nothing");
        }
    }
}

/// Proves the blog post's Mermaid (shapes, labels, dashed rejections) against its snapshot.
#[test]
fn blog_post_mermaid() {
    insta::assert_snapshot!(stdout_of(&graph(Path::new(BLOG_POST), "mermaid")));
}

/// Proves the blog post's DOT against its snapshot.
#[test]
fn blog_post_dot() {
    insta::assert_snapshot!(stdout_of(&graph(Path::new(BLOG_POST), "dot")));
}

/// Proves the nurture journey's Mermaid (waits, timeouts, the branch) against its snapshot.
#[test]
fn whitepaper_nurture_mermaid() {
    insta::assert_snapshot!(stdout_of(&graph(Path::new(WHITEPAPER_NURTURE), "mermaid")));
}

/// Proves the nurture journey's DOT against its snapshot.
#[test]
fn whitepaper_nurture_dot() {
    insta::assert_snapshot!(stdout_of(&graph(Path::new(WHITEPAPER_NURTURE), "dot")));
}

/// Proves each step kind's Mermaid shape and class, and the label escapes, against a snapshot.
#[test]
fn every_kind_mermaid() {
    insta::assert_snapshot!(stdout_of(&graph(&scratch_file("every-kind-mermaid.yaml", EVERY_KIND), "mermaid")));
}

/// Proves each step kind's DOT shape and colours, and the label escapes, against a snapshot.
#[test]
fn every_kind_dot() {
    insta::assert_snapshot!(stdout_of(&graph(&scratch_file("every-kind-dot.yaml", EVERY_KIND), "dot")));
}

/// Proves the SVG of each blueprint and of the fixture is well-formed and names every step:
/// tags balance, every `&` starts an entity, and each step id is the id line of exactly one
/// `<text>` element, plus one for the shared `end` node when something reaches it.
#[test]
fn svg_is_well_formed_with_one_text_per_step() {
    let fixture = scratch_file("every-kind-svg.yaml", EVERY_KIND);
    for path in [Path::new(BLOG_POST), Path::new(WHITEPAPER_NURTURE), fixture.as_path()] {
        let definition = std::fs::read_to_string(path).unwrap();
        let svg = stdout_of(&graph(path, "svg"));
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}: starts {:?}", path.display(), &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"), "{}: does not end with </svg>", path.display());
        check_xml(&svg);

        let mut node_ids: Vec<&str> = text_elements(&svg).filter_map(id_line).collect();
        // `end` is a reserved word, never a step id, so its node is told apart by name.
        let end_count = node_ids.iter().filter(|&&id| id == "end").count();
        assert!(end_count <= 1, "{}: {end_count} end nodes", path.display());
        node_ids.retain(|&id| id != "end");
        node_ids.sort_unstable();
        let mut expected = step_ids(&definition);
        expected.sort_unstable();
        assert!(!expected.is_empty(), "{}: no step ids found", path.display());
        assert_eq!(node_ids, expected, "{}: the node texts are not one per step", path.display());
    }
}

/// Proves the same definition gives the same bytes, in every format.
#[test]
fn output_is_deterministic() {
    for format in ["svg", "mermaid", "dot"] {
        let first = stdout_of(&graph(Path::new(WHITEPAPER_NURTURE), format));
        let second = stdout_of(&graph(Path::new(WHITEPAPER_NURTURE), format));
        assert!(first == second, "{format} differs between two runs");
    }
}

/// Proves text from the definition is escaped for each format: the condition
/// `contact.plan == "pro" || …` and the goal name `Deal "won" <big>` come out as entities in
/// SVG, Mermaid `#code;` entities, and backslash escapes in DOT.
#[test]
fn text_is_escaped_for_each_format() {
    let fixture = scratch_file("every-kind-escape.yaml", EVERY_KIND);
    let svg = stdout_of(&graph(&fixture, "svg"));
    assert!(svg.contains("contact.plan == &quot;pro&quot; || contact.tags.exists(t, t == &quot;a|b[1]&quot;)"));
    assert!(svg.contains("contact.score &gt; 10 &amp;&amp; contact.score &lt; 20"));
    assert!(svg.contains("goal: Deal &quot;won&quot; &lt;big&gt;"));

    let mermaid = stdout_of(&graph(&fixture, "mermaid"));
    assert!(mermaid.contains(
        r#"|"contact.plan == #quot;pro#quot; #124;#124; contact.tags.exists#40;t, t == #quot;a#124;b#91;1#93;#quot;#41;"|"#
    ));
    assert!(mermaid.contains("goal: Deal #quot;won#quot; #lt;big#gt;"));

    let dot = stdout_of(&graph(&fixture, "dot"));
    assert!(dot.contains(r#"[label="contact.plan == \"pro\" || contact.tags.exists(t, t == \"a|b[1]\")"]"#));
    assert!(dot.contains(r#"label="won\ngoal: Deal \"won\" <big>""#));
}

/// Proves the default format is SVG and `-o` writes the same bytes to a file, printing nothing.
#[test]
fn default_format_is_svg_and_output_goes_to_a_file() {
    let to_stdout = stdout_of(&Command::cargo_bin("flowmark").unwrap().args(["graph", BLOG_POST]).output().unwrap());
    assert!(to_stdout.starts_with("<svg"));

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graph").join("blog-post.svg");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    let output = Command::cargo_bin("flowmark").unwrap().args(["graph", BLOG_POST, "-o"]).arg(&out).output().unwrap();
    assert!(stdout_of(&output).is_empty());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), to_stdout);
}

/// Proves a definition with errors prints its diagnostics to stderr, draws nothing and exits
/// with 1, like `flowmark validate`.
#[test]
fn a_definition_with_errors_exits_1() {
    let broken = scratch_file(
        "broken.yaml",
        "id: broken\nsubject: contact\ntrigger: { event: Signed Up }\nsteps:\n  - id: a\n    wait: { duration: 1d }\n    next: nowhere\n",
    );
    for format in ["svg", "mermaid", "dot"] {
        let output = graph(&broken, format);
        assert_eq!(output.status.code(), Some(1), "{format}");
        assert!(output.stdout.is_empty(), "{format}: drew something");
        assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere"), "{format}: no diagnostic");
    }
}

/// Proves a file that cannot be read is an operating error, exit code 2.
#[test]
fn a_missing_file_exits_2() {
    let output = graph(Path::new("does/not/exist.yaml"), "svg");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

/// The `<text …>…</text>` elements of an SVG, whole.
fn text_elements(svg: &str) -> impl Iterator<Item = &str> {
    svg.match_indices("<text").filter_map(|(start, _)| {
        let end = svg[start..].find("</text>")?;
        Some(&svg[start..start + end + "</text>".len()])
    })
}

/// The content of a node text's id line (`<tspan class="id" …>ID</tspan>`), if it has one.
fn id_line(text: &str) -> Option<&str> {
    let start = text.find("<tspan class=\"id\"")?;
    let content = &text[start..];
    let open_end = content.find('>')? + 1;
    let close = content.find("</tspan>")?;
    Some(&content[open_end..close])
}

/// A small well-formedness check: every tag closes in order, attribute values are quoted
/// without a raw `<`, and every `&` in text begins an entity.
fn check_xml(svg: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        check_text(&rest[..start]);
        let end = rest[start..].find('>').map(|e| start + e).expect("a tag that never closes");
        let tag = &rest[start + 1..end];
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        assert!(!tag.contains('<'), "raw < inside <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong element");
        } else if !tag.starts_with('?') && !tag.starts_with('!') && !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap());
        }
        rest = &rest[end + 1..];
    }
    check_text(rest);
    assert!(open.is_empty(), "unclosed elements {open:?}");
}

fn check_text(text: &str) {
    for (index, _) in text.match_indices('&') {
        let entity = &text[index..];
        let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
        assert!(known.iter().any(|k| entity.starts_with(k)), "raw & in {text:?}");
    }
}
