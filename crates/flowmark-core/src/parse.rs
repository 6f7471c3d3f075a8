//! From YAML text to a `Workflow`, reporting every problem on the way.
//!
//! The YAML is loaded into a tree that keeps each node's position (saphyr's `MarkedYaml`),
//! then decoded by hand so that each mistake becomes a `Diagnostic` at the exact place, with
//! "did you mean" for unknown keys, and decoding goes on after a mistake to find the next one.
//! A JSON Schema of the same language lives in `schema/workflow.schema.json` for editors; a test
//! of the binary checks that it refuses a document exactly when this decoder finds a shape error.
//!
//! Invariant: `compile` returns a `Workflow` only when it found no error; it never panics on
//! any input (a property test feeds it arbitrary text).

use std::collections::{BTreeMap, HashMap};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::diagnostic::{Diagnostic, Diagnostics, Source, Span, did_you_mean};
use crate::expr::{CompileError, Condition};
use crate::guard::guarded;
use crate::limits;
use crate::model::*;
use crate::template::{Template, TemplateError};
use crate::time::{Duration, Timestamp};
use crate::validate;

/// What `compile` found: the workflow when there were no errors, and every diagnostic.
#[derive(Debug)]
pub struct Compiled {
    pub workflow: Option<Workflow>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Where each step was written, for diagnostics found after decoding.
#[derive(Debug, Clone, Default)]
pub struct StepSpans {
    pub id: Span,
    pub kind: Span,
    /// Every place this step names a target, with the target's name.
    pub targets: Vec<(String, Span)>,
}

pub fn compile(source: &Source) -> Compiled {
    let mut decoder = Decoder::new(source);
    let workflow = decoder.document();
    let mut diagnostics = decoder.diagnostics;
    let workflow = match workflow {
        Some((mut workflow, spans)) if !diagnostics.has_errors() => {
            validate::check(&mut workflow, &spans, decoder.roles_span, &decoder.conditions, &mut diagnostics);
            Some(workflow)
        }
        _ => None,
    };
    let workflow = if diagnostics.has_errors() { None } else { workflow };
    Compiled { workflow, diagnostics: diagnostics.sorted() }
}

type Node<'a> = MarkedYaml<'a>;

const SUBJECT_ROOTS_CONTACT: &[&str] = &["contact", "event", "trigger", "steps", "run"];
const SUBJECT_ROOTS_ITEM: &[&str] = &["item", "event", "trigger", "steps", "run"];

struct Decoder<'s> {
    source: &'s Source,
    /// Byte offset of each character, when the text is not ASCII (saphyr counts characters).
    char_offsets: Option<Vec<usize>>,
    diagnostics: Diagnostics,
    subject: SubjectKind,
    step_ids: HashMap<String, StepIndex>,
    roles: Vec<String>,
    roles_span: Span,
    /// Every condition compiled, where it was written, and the step it belongs to (`None`:
    /// the workflow's own, a trigger's or the entry rules'): checked once the whole workflow
    /// is known (`validate`).
    conditions: Vec<(Condition, Span, Option<usize>)>,
    /// The step being decoded.
    current_step: Option<usize>,
}

/// A mapping's entries with their key nodes.
struct Fields<'n> {
    span: Span,
    entries: Vec<(String, Span, &'n Node<'n>)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node<'n>> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| *v)
    }

    fn key_span(&self, key: &str) -> Option<Span> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, s, _)| *s)
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

fn unwrap_tagged<'a, 'n>(node: &'a Node<'n>) -> &'a Node<'n> {
    match &node.data {
        YamlData::Tagged(_, inner) => unwrap_tagged(inner),
        _ => node,
    }
}

fn describe(node: &Node<'_>) -> &'static str {
    match &unwrap_tagged(node).data {
        YamlData::Value(Scalar::Null) => "nothing (null)",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Alias(_) => "an alias",
        YamlData::Tagged(..) | YamlData::BadValue => "an unreadable value",
    }
}

fn scalar_text<'a>(node: &'a Node<'_>) -> Option<&'a str> {
    match &unwrap_tagged(node).data {
        YamlData::Value(Scalar::String(s)) => Some(s),
        YamlData::Representation(s, _, _) => Some(s),
        _ => None,
    }
}

impl<'s> Decoder<'s> {
    fn new(source: &'s Source) -> Decoder<'s> {
        let char_offsets = (!source.text.is_ascii()).then(|| {
            let mut offsets: Vec<usize> = source.text.char_indices().map(|(i, _)| i).collect();
            offsets.push(source.text.len());
            offsets
        });
        Decoder {
            source,
            char_offsets,
            diagnostics: Diagnostics::default(),
            subject: SubjectKind::Contact,
            step_ids: HashMap::new(),
            roles: Vec::new(),
            roles_span: Span::default(),
            conditions: Vec::new(),
            current_step: None,
        }
    }

    fn byte_offset(&self, char_index: usize) -> usize {
        match &self.char_offsets {
            None => char_index.min(self.source.text.len()),
            Some(offsets) => offsets.get(char_index).copied().unwrap_or(self.source.text.len()),
        }
    }

    fn span(&self, node: &Node<'_>) -> Span {
        let start = self.byte_offset(node.span.start.index());
        let end = self.byte_offset(node.span.end.index()).max(start);
        // Block scalars and collections can end after trailing newlines; keep the first line.
        let text = &self.source.text[start..end];
        let len = text.trim_end().len();
        Span::new(start, len.max(usize::from(len == 0 && end > start)))
    }

    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn expected(&mut self, node: &Node<'_>, what: &str) {
        let found = describe(node);
        let span = self.span(node);
        self.error(
            Diagnostic::error("flowmark::wrong-type", span, format!("expected {what}, found {found}"))
                .label(format!("this is {found}"))
                .expected(what.to_owned()),
        );
    }

    fn roots(&self) -> &'static [&'static str] {
        match self.subject {
            SubjectKind::Contact => SUBJECT_ROOTS_CONTACT,
            SubjectKind::Item => SUBJECT_ROOTS_ITEM,
        }
    }

    // ---- generic shapes ------------------------------------------------------------------

    fn fields<'n>(&mut self, node: &'n Node<'n>, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let node = unwrap_tagged(node);
        let YamlData::Mapping(mapping) = &node.data else {
            self.expected(node, &format!("{what} (a mapping)"));
            return None;
        };
        let mut entries = Vec::with_capacity(mapping.len());
        for (key, value) in mapping {
            let key_span = self.span(key);
            let Some(name) = scalar_text(key) else {
                self.error(
                    Diagnostic::error("flowmark::wrong-type", key_span, format!("keys of {what} must be names"))
                        .label("not a name"),
                );
                continue;
            };
            if !allowed.contains(&name) {
                let mut diagnostic =
                    Diagnostic::error("flowmark::unknown-key", key_span, format!("unknown key `{name}` in {what}"))
                        .label("not a key of this mapping")
                        .expected(format!("one of: {}", allowed.join(", ")));
                if let Some(close) = did_you_mean(name, allowed.iter().copied()) {
                    diagnostic = diagnostic.help(format!("did you mean `{close}`?"));
                }
                self.error(diagnostic);
                continue;
            }
            entries.push((name.to_owned(), key_span, value));
        }
        Some(Fields { span: self.span(node), entries })
    }

    /// Reports `key` as misplaced when it is present but has no effect here.
    fn misplaced(&mut self, fields: &Fields<'_>, key: &str, why: &str) {
        if let Some(span) = fields.key_span(key) {
            self.error(
                Diagnostic::error("flowmark::misplaced-key", span, format!("`{key}` has no effect here: {why}"))
                    .label("remove this"),
            );
        }
    }

    fn require<'n>(&mut self, fields: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node<'n>> {
        let found = fields.get(key);
        if found.is_none() {
            self.error(
                Diagnostic::error(
                    "flowmark::missing-key",
                    first_line(self.source, fields.span),
                    format!("{what} needs `{key}`"),
                )
                .label(format!("`{key}` is missing here")),
            );
        }
        found
    }

    fn string(&mut self, node: &Node<'_>, what: &str) -> Option<String> {
        match scalar_text(node) {
            Some(s) => Some(s.to_owned()),
            None => {
                self.expected(node, what);
                None
            }
        }
    }

    fn id(&mut self, node: &Node<'_>, what: &str) -> Option<String> {
        let text = self.string(node, what)?;
        let valid = !text.is_empty()
            && text.len() <= limits::ID_LENGTH_MAX
            && text.starts_with(|c: char| c.is_ascii_alphabetic())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            let span = self.span(node);
            self.error(
                Diagnostic::error("flowmark::bad-id", span, format!("`{text}` is not a valid {what}"))
                    .label("not an id")
                    .expected(format!(
                        "a letter followed by letters, digits, `-` or `_`, at most {} characters",
                        limits::ID_LENGTH_MAX
                    )),
            );
            return None;
        }
        Some(text)
    }

    fn list<'n>(&mut self, node: &'n Node<'n>, what: &str) -> Option<&'n Vec<Node<'n>>> {
        match &unwrap_tagged(node).data {
            YamlData::Sequence(items) => Some(items),
            _ => {
                self.expected(node, what);
                None
            }
        }
    }

    /// A string or a list of strings.
    fn names(&mut self, node: &Node<'_>, what: &str) -> Vec<(String, Span)> {
        match &unwrap_tagged(node).data {
            YamlData::Sequence(items) => {
                items.iter().filter_map(|item| Some((self.string(item, what)?, self.span(item)))).collect()
            }
            _ => self.string(node, what).map(|s| vec![(s, self.span(node))]).unwrap_or_default(),
        }
    }

    fn bool(&mut self, node: &Node<'_>, what: &str) -> Option<bool> {
        match &unwrap_tagged(node).data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.expected(node, what);
                None
            }
        }
    }

    fn integer(&mut self, node: &Node<'_>, what: &str, min: i64, max: i64) -> Option<i64> {
        match &unwrap_tagged(node).data {
            YamlData::Value(Scalar::Integer(i)) if (min..=max).contains(i) => Some(*i),
            YamlData::Value(Scalar::Integer(i)) => {
                let span = self.span(node);
                self.error(
                    Diagnostic::error("flowmark::out-of-range", span, format!("{i} is out of range for {what}"))
                        .label("out of range")
                        .expected(format!("an integer from {min} to {max}")),
                );
                None
            }
            _ => {
                self.expected(node, what);
                None
            }
        }
    }

    fn number(&mut self, node: &Node<'_>, what: &str) -> Option<f64> {
        match &unwrap_tagged(node).data {
            YamlData::Value(Scalar::Integer(i)) => Some(*i as f64),
            YamlData::Value(Scalar::FloatingPoint(f)) if f.is_finite() => Some(f.into_inner()),
            _ => {
                self.expected(node, what);
                None
            }
        }
    }

    fn duration(&mut self, node: &Node<'_>) -> Option<Duration> {
        let text = self.string(node, "a duration like `3d`, `12h` or `1h30m`")?;
        match Duration::parse(&text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                let span = self.span(node);
                self.error(
                    Diagnostic::error("flowmark::bad-duration", span, format!("`{text}` is not a duration"))
                        .label(error.to_string())
                        .expected("a duration like `30m`, `12h`, `3d`, `2w` or `1h30m`"),
                );
                None
            }
        }
    }

    fn condition(&mut self, node: &Node<'_>, roots: &[&str]) -> Option<Condition> {
        let text = self.string(node, "a CEL condition")?;
        match Condition::compile(&text, roots) {
            Ok(condition) => {
                self.conditions.push((condition.clone(), self.span(node), self.current_step));
                Some(condition)
            }
            Err(error) => {
                let node_span = self.span(node);
                let (span, diagnostic) = match error {
                    CompileError::TooLong { length } => (
                        node_span,
                        Diagnostic::error(
                            "flowmark::condition-too-long",
                            node_span,
                            format!("the condition is {length} bytes; the limit is {}", limits::CONDITION_LENGTH_MAX),
                        ),
                    ),
                    CompileError::Syntax { message, line, column } => {
                        let span = self.inner_span(node_span, &text, line, column);
                        (
                            span,
                            Diagnostic::error("flowmark::cel-syntax", span, "this condition is not valid CEL")
                                .label(message)
                                .help("conditions are CEL expressions, e.g. `contact.scores.engagement >= 50`"),
                        )
                    }
                    CompileError::UnknownVariable { name } => {
                        let column = text.find(name.as_str()).map_or(1, |i| i + 1);
                        let span = self.inner_span(node_span, &text, 1, column);
                        let span = Span::new(span.offset, name.len().min(node_span.len));
                        let mut diagnostic = Diagnostic::error(
                            "flowmark::cel-unknown-variable",
                            span,
                            format!("the condition reads `{name}`, which is not a variable here"),
                        )
                        .label("unknown variable")
                        .expected(format!("one of: {}", roots.join(", ")));
                        if let Some(close) = did_you_mean(&name, roots.iter().copied()) {
                            diagnostic = diagnostic.help(format!("did you mean `{close}`?"));
                        }
                        (span, diagnostic)
                    }
                };
                let _ = span;
                self.error(diagnostic);
                None
            }
        }
    }

    /// The span of a position inside a scalar's text (1-based line and column).
    fn inner_span(&self, node_span: Span, text: &str, line: usize, column: usize) -> Span {
        let raw = &self.source.text[node_span.offset..node_span.offset + node_span.len];
        let quoted = raw.starts_with('"') || raw.starts_with('\'');
        if line != 1 || raw.contains('\n') {
            return self.block_span(node_span, raw, text, line, column).unwrap_or(first_line(self.source, node_span));
        }
        let byte_column: usize = text.chars().take(column.saturating_sub(1)).map(char::len_utf8).sum();
        let offset = node_span.offset + usize::from(quoted) + byte_column;
        let end = node_span.offset + node_span.len;
        let mut offset = offset.min(end);
        // Escapes in quoted YAML make the raw text longer than the value; stay on a character.
        while !self.source.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let len = self.source.text[offset..end].chars().next().map_or(0, char::len_utf8);
        Span::new(offset, len)
    }

    /// A position inside a block scalar whose lines are the text's lines, indented (`|`): the
    /// scalar starts on a line of its own, at its indentation. `None` where the text's line is
    /// not the source's (folded or quoted scalars): the caller points at the first line.
    fn block_span(&self, node_span: Span, raw: &str, text: &str, line: usize, column: usize) -> Option<Span> {
        let line_start = self.source.text[..node_span.offset].rfind('\n').map_or(0, |i| i + 1);
        let indent = node_span.offset - line_start;
        if !self.source.text[line_start..node_span.offset].bytes().all(|b| b == b' ') {
            return None;
        }
        let raw_line = raw.split('\n').nth(line.checked_sub(1)?)?;
        let content = if line == 1 { raw_line } else { raw_line.get(indent..)? };
        if content.trim_end_matches('\r') != text.split('\n').nth(line - 1)? {
            return None;
        }
        let line_offset = node_span.offset
            + raw.split('\n').take(line - 1).map(|l| l.len() + 1).sum::<usize>()
            + if line == 1 { 0 } else { indent };
        let at = line_offset + content.chars().take(column.saturating_sub(1)).map(char::len_utf8).sum::<usize>();
        let len = self.source.text.get(at..)?.chars().next().map_or(0, char::len_utf8);
        Some(Span::new(at, len))
    }

    fn template(&mut self, node: &Node<'_>, what: &str) -> Option<Template> {
        self.template_as(node, what, Template::compile)
    }

    /// An HTML body: outputs are escaped unless they end in `| raw` (`Template::compile_html`).
    fn html_template(&mut self, node: &Node<'_>, what: &str) -> Option<Template> {
        self.template_as(node, what, Template::compile_html)
    }

    fn template_as(
        &mut self,
        node: &Node<'_>,
        what: &str,
        compile: fn(&str) -> Result<Template, TemplateError>,
    ) -> Option<Template> {
        let text = self.string(node, what)?;
        match compile(&text) {
            Ok(template) => {
                self.check_template_variables(node, &text);
                Some(template)
            }
            Err(error) => {
                let node_span = self.span(node);
                let span = match &error {
                    TemplateError::Syntax { line, column, .. } => self.inner_span(node_span, &text, *line, *column),
                    _ => first_line(self.source, node_span),
                };
                self.error(
                    Diagnostic::error(
                        "flowmark::liquid-syntax",
                        span,
                        format!("{what} is not a valid Liquid template"),
                    )
                    .label(error.to_string())
                    .help(
                        "templates use Liquid: `{{ contact.first_name | default: 'there' }}`, `{% if … %}…{% endif %}`",
                    ),
                );
                None
            }
        }
    }

    /// What can be known before sending about the variables a template prints: each is one
    /// the message can read (error), a `steps.<id>` names a step of this workflow (error), and
    /// a contact or event field without `| default: …` is flagged, since a contact or an event
    /// without it makes the message fail at send time (warning; an item's fields are the
    /// workflow's own, so they are not).
    fn check_template_variables(&mut self, node: &Node<'_>, text: &str) {
        let (variables, locals) = crate::template::output_variables(text);
        let node_span = self.span(node);
        let mut roots: Vec<&str> = self.roots().to_vec();
        roots.push("env");
        for variable in variables {
            let root = variable.path[0].as_str();
            if locals.iter().any(|l| l == root) {
                continue;
            }
            let before = &text[..variable.offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            let at = self.inner_span(node_span, text, line, column);
            let dotted = variable.path.join(".");
            // Underline the path itself where the position is exact.
            let exact = self.source.text.get(at.offset..).is_some_and(|t| t.starts_with(&dotted));
            let at = if exact { Span::new(at.offset, dotted.len()) } else { at };
            if !roots.contains(&root) {
                let span = if exact { Span::new(at.offset, root.len()) } else { at };
                let mut diagnostic = Diagnostic::error(
                    "flowmark::template-unknown-variable",
                    span,
                    format!("the template prints `{dotted}`, but `{root}` is not a variable here"),
                )
                .label("unknown variable")
                .expected(format!("one of: {}", roots.join(", ")));
                if let Some(close) = did_you_mean(root, roots.iter().copied()) {
                    diagnostic = diagnostic.help(format!("did you mean `{close}`?"));
                }
                self.error(diagnostic);
            } else if root == "steps"
                && let Some(step) = variable.path.get(1)
                && !self.step_ids.contains_key(step.as_str())
            {
                let mut diagnostic = Diagnostic::error(
                    "flowmark::template-unknown-step",
                    at,
                    format!("the template prints `{dotted}`, but there is no step `{step}`"),
                )
                .label("unknown step");
                if let Some(close) = did_you_mean(step, self.step_ids.keys().map(String::as_str)) {
                    diagnostic = diagnostic.help(format!("did you mean `{close}`?"));
                }
                self.error(diagnostic);
            } else if (root == "contact" || root == "event") && variable.path.len() > 1 && !variable.defaulted {
                self.error(
                    Diagnostic::warning(
                        "flowmark::template-no-default",
                        at,
                        format!("`{dotted}` has no default: where it is missing, this fails to render (a message is not sent, an update or emit is skipped)"),
                    )
                    .label("no `| default: …`")
                    .help(format!("write `{{{{ {dotted} | default: '…' }}}}`, or make sure every {root} has it")),
                );
            }
        }
    }

    fn template_value(&mut self, node: &Node<'_>, what: &str) -> Option<TemplateValue> {
        let node = unwrap_tagged(node);
        Some(match &node.data {
            YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => {
                TemplateValue::Text(self.template(node, what)?)
            }
            YamlData::Value(Scalar::Null) => TemplateValue::Literal(serde_json::Value::Null),
            YamlData::Value(Scalar::Boolean(b)) => TemplateValue::Literal((*b).into()),
            YamlData::Value(Scalar::Integer(i)) => TemplateValue::Literal((*i).into()),
            YamlData::Value(Scalar::FloatingPoint(f)) => TemplateValue::Literal(
                serde_json::Number::from_f64(f.into_inner()).map_or(serde_json::Value::Null, serde_json::Value::Number),
            ),
            YamlData::Sequence(items) => {
                TemplateValue::List(items.iter().filter_map(|i| self.template_value(i, what)).collect())
            }
            YamlData::Mapping(mapping) => {
                let mut entries = Vec::new();
                for (key, value) in mapping {
                    let key = self.string(key, "a key")?;
                    entries.push((key, self.template_value(value, what)?));
                }
                TemplateValue::Map(entries)
            }
            _ => {
                self.expected(node, what);
                return None;
            }
        })
    }

    fn target(&mut self, node: &Node<'_>, targets: &mut Vec<(String, Span)>) -> Option<Target> {
        let name = self.string(node, "a step id or `end`")?;
        let span = self.span(node);
        if name == "end" {
            return Some(Target::End);
        }
        targets.push((name.clone(), span));
        match self.step_ids.get(&name) {
            Some(index) => Some(Target::Step(*index)),
            None => {
                let mut diagnostic =
                    Diagnostic::error("flowmark::unknown-target", span, format!("there is no step `{name}` to go to"))
                        .label("unknown step")
                        .expected("the id of a step in this workflow, or `end`");
                // Sorted, so that among equally close ids the suggestion is always the same.
                let mut ids: Vec<&str> = self.step_ids.keys().map(String::as_str).collect();
                ids.sort_unstable();
                if let Some(close) = did_you_mean(&name, ids) {
                    diagnostic = diagnostic.help(format!("did you mean `{close}`?"));
                }
                self.error(diagnostic);
                None
            }
        }
    }

    fn role(&mut self, node: &Node<'_>, what: &str) -> Option<String> {
        let name = self.string(node, what)?;
        self.check_role(&name, self.span(node));
        Some(name)
    }

    fn check_role(&mut self, name: &str, span: Span) {
        if self.roles.iter().any(|r| r == name) {
            return;
        }
        let mut diagnostic =
            Diagnostic::error("flowmark::unknown-role", span, format!("`{name}` is not a role of this workflow"))
                .label("unknown role");
        diagnostic = if self.roles.is_empty() {
            diagnostic.help("declare the roles a workflow names under `roles:`, e.g. `roles: { editor: { person: dana@example.com } }`")
        } else {
            let d = diagnostic.expected(format!("one of: {}", self.roles.join(", ")));
            match did_you_mean(name, self.roles.iter().map(String::as_str)) {
                Some(close) => d.help(format!("did you mean `{close}`?")),
                None => d.help("add it under `roles:`"),
            }
        };
        self.error(diagnostic);
    }

    fn timezone(&mut self, node: &Node<'_>) -> Option<chrono_tz::Tz> {
        let text = self.string(node, "an IANA time zone like `Europe/Paris`")?;
        match text.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let span = self.span(node);
                let mut d = Diagnostic::error("flowmark::bad-timezone", span, format!("`{text}` is not a time zone"))
                    .label("unknown time zone")
                    .expected("an IANA time zone name like `Europe/Paris`, `America/New_York` or `UTC`");
                if let Some(close) = did_you_mean(&text, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())) {
                    d = d.help(format!("did you mean `{close}`?"));
                }
                self.error(d);
                None
            }
        }
    }

    fn timezone_source(&mut self, node: &Node<'_>) -> Option<TimezoneSource> {
        match scalar_text(node) {
            Some("contact") | Some("subject") => Some(TimezoneSource::Subject),
            Some("workspace") => Some(TimezoneSource::Workspace),
            _ => self.timezone(node).map(TimezoneSource::Fixed),
        }
    }

    fn time_of_day(&mut self, node: &Node<'_>) -> Option<u16> {
        let text = self.string(node, "a time of day like `09:00`")?;
        let parsed = text.split_once(':').and_then(|(h, m)| {
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
        });
        if parsed.is_none() {
            let span = self.span(node);
            self.error(
                Diagnostic::error("flowmark::bad-time", span, format!("`{text}` is not a time of day"))
                    .label("not HH:MM")
                    .expected("a 24-hour time of day as HH:MM, like `09:00` or `21:30`"),
            );
        }
        parsed
    }

    fn enum_value<T: Copy>(&mut self, node: &Node<'_>, what: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, what)?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let span = self.span(node);
        let mut d = Diagnostic::error("flowmark::unknown-value", span, format!("`{text}` is not a valid {what}"))
            .label(format!("unknown {what}"))
            .expected(format!("one of: {}", names.join(", ")));
        if let Some(close) = did_you_mean(&text, names.iter().copied()) {
            d = d.help(format!("did you mean `{close}`?"));
        }
        self.error(d);
        None
    }

    // ---- the document --------------------------------------------------------------------

    fn document(&mut self) -> Option<(Workflow, Vec<StepSpans>)> {
        let source = self.source;
        if source.text.len() > limits::DEFINITION_SIZE_BYTES_MAX {
            self.error(Diagnostic::error(
                "flowmark::too-large",
                Span::new(0, 0),
                format!(
                    "the definition is {} bytes; the limit is {}",
                    source.text.len(),
                    limits::DEFINITION_SIZE_BYTES_MAX
                ),
            ));
            return None;
        }
        let Some(loaded) = guarded(|| MarkedYaml::load_from_str(&source.text)) else {
            self.error(
                Diagnostic::error("flowmark::yaml-syntax", Span::new(0, 0), "this YAML could not be read")
                    .label("the YAML parser failed on this file")
                    .help("check the file's structure; if it is valid YAML, please report it"),
            );
            return None;
        };
        let documents = match loaded {
            Ok(documents) => documents,
            Err(error) => {
                let offset = self.byte_offset(error.marker().index());
                let len = source.text[offset..].chars().next().map_or(0, char::len_utf8);
                self.error(
                    Diagnostic::error("flowmark::yaml-syntax", Span::new(offset, len), "this is not valid YAML")
                        .label(error.info().to_owned())
                        .help("check the indentation and quoting around this place"),
                );
                return None;
            }
        };
        let Some(root) = documents.first() else {
            self.error(
                Diagnostic::error("flowmark::empty", Span::new(0, 0), "the file is empty")
                    .help("a workflow needs at least `id`, `subject` and `steps`"),
            );
            return None;
        };
        if documents.len() > 1 {
            let span = self.span(&documents[1]);
            self.error(
                Diagnostic::error("flowmark::many-documents", span, "one file holds one workflow")
                    .label("a second YAML document starts here")
                    .help("put each workflow in a file of its own"),
            );
        }
        self.workflow(root)
    }

    fn workflow<'n>(&mut self, root: &'n Node<'n>) -> Option<(Workflow, Vec<StepSpans>)> {
        const KEYS: &[&str] = &[
            "id",
            "name",
            "description",
            "subject",
            "trigger",
            "triggers",
            "entry",
            "goal",
            "goals",
            "exit",
            "quiet_hours",
            "caps",
            "timezone",
            "working_days",
            "roles",
            "steps",
        ];
        let fields = self.fields(root, "a workflow", KEYS)?;
        let id = self.require(&fields, "id", "a workflow").and_then(|n| self.id(n, "workflow id"));
        let name = fields.get("name").and_then(|n| self.string(n, "a name"));
        let description = fields.get("description").and_then(|n| self.string(n, "a description"));
        let subject = self.require(&fields, "subject", "a workflow").and_then(|n| {
            self.enum_value(n, "subject", &[("contact", SubjectKind::Contact), ("item", SubjectKind::Item)])
        });
        self.subject = subject.unwrap_or(SubjectKind::Contact);
        let timezone = fields.get("timezone").and_then(|n| self.timezone(n)).unwrap_or(chrono_tz::UTC);
        let working_days = fields.get("working_days").and_then(|n| self.working_days(n)).unwrap_or_default();

        if let Some(node) = fields.get("roles") {
            self.roles_span = self.span(node);
        }
        let roles = fields.get("roles").map(|n| self.roles(n)).unwrap_or_default();
        self.roles = roles.keys().cloned().collect();

        let mut triggers = Vec::new();
        if fields.has("trigger") && fields.has("triggers") {
            let span = fields.key_span("triggers").unwrap_or_default();
            self.error(
                Diagnostic::error("flowmark::duplicate-key", span, "use either `trigger` or `triggers`, not both")
                    .label("second list of triggers"),
            );
        }
        for key in ["trigger", "triggers"] {
            if let Some(node) = fields.get(key) {
                self.each(node, |d, n| {
                    if let Some(t) = d.trigger(n) {
                        triggers.push(t);
                    }
                });
            }
        }
        let entry = fields.get("entry").and_then(|n| self.entry(n)).unwrap_or(Entry::Never);
        let mut goals = Vec::new();
        for key in ["goal", "goals"] {
            if let Some(node) = fields.get(key) {
                self.each(node, |d, n| goals.extend(d.goal(n)));
            }
        }
        let mut exits = Vec::new();
        if let Some(node) = fields.get("exit") {
            self.each(node, |d, n| exits.extend(d.exit_rule(n)));
        }
        let quiet_hours = fields.get("quiet_hours").and_then(|n| self.quiet_hours(n));
        let caps = fields.get("caps").map(|n| self.caps(n)).unwrap_or_default();

        let steps_node = self.require(&fields, "steps", "a workflow")?;
        let (steps, spans) = self.steps(steps_node)?;
        Some((
            Workflow {
                id: id?,
                name,
                description,
                subject: subject?,
                triggers,
                entry,
                goals,
                exits,
                quiet_hours,
                caps,
                timezone,
                working_days,
                roles,
                steps,
            },
            spans,
        ))
    }

    /// Calls `f` on a node, or on each item when the node is a list.
    fn each<'n>(&mut self, node: &'n Node<'n>, mut f: impl FnMut(&mut Self, &'n Node<'n>)) {
        match &unwrap_tagged(node).data {
            YamlData::Sequence(items) => {
                for item in items {
                    f(self, item);
                }
            }
            _ => f(self, node),
        }
    }

    fn roles<'n>(&mut self, node: &'n Node<'n>) -> BTreeMap<String, RoleBinding> {
        let mut roles = BTreeMap::new();
        let node = unwrap_tagged(node);
        let YamlData::Mapping(mapping) = &node.data else {
            self.expected(node, "a mapping of role names to `{ person: … }` or `{ team: … }`");
            return roles;
        };
        for (key, value) in mapping {
            let Some(name) = self.id(key, "role name") else { continue };
            let Some(fields) = self.fields(value, "a role", &["person", "team"]) else { continue };
            let binding = match (fields.get("person"), fields.get("team")) {
                (Some(p), None) => self.string(p, "a person's email").map(RoleBinding::Person),
                (None, Some(t)) => self.string(t, "a team name").map(RoleBinding::Team),
                _ => {
                    self.error(
                        Diagnostic::error(
                            "flowmark::bad-role",
                            fields.span,
                            format!("role `{name}` needs exactly one of `person` or `team`"),
                        )
                        .label("bind the role to one person or one team"),
                    );
                    None
                }
            };
            if let Some(binding) = binding {
                roles.insert(name, binding);
            }
        }
        roles
    }

    fn trigger<'n>(&mut self, node: &'n Node<'n>) -> Option<Trigger> {
        let fields = self.fields(
            node,
            "a trigger",
            &["event", "where", "schedule", "manual", "workflow", "outcome", "segment", "on"],
        )?;
        let kinds: Vec<&str> =
            ["event", "schedule", "manual", "workflow", "segment"].into_iter().filter(|k| fields.has(k)).collect();
        if kinds.len() != 1 {
            self.error(
                Diagnostic::error(
                    "flowmark::bad-trigger",
                    first_line(self.source, fields.span),
                    "a trigger needs exactly one of `event`, `schedule`, `manual`, `workflow` or `segment`",
                )
                .label(if kinds.is_empty() {
                    "no kind of trigger here".to_owned()
                } else {
                    format!("found {}", kinds.join(" and "))
                }),
            );
            return None;
        }
        let roots: &[&str] = match self.subject {
            SubjectKind::Contact => &["contact", "event"],
            SubjectKind::Item => &["item", "event"],
        };
        if kinds[0] != "event" {
            self.misplaced(&fields, "where", "only an `event` trigger has a filter");
        }
        if kinds[0] != "workflow" {
            self.misplaced(&fields, "outcome", "only a `workflow` trigger has an outcome");
        }
        if kinds[0] != "segment" {
            self.misplaced(&fields, "on", "only a `segment` trigger has `on: enter|exit`");
        }
        match kinds[0] {
            "event" => {
                let name = self.string(fields.get("event")?, "an event name")?;
                let filter = fields.get("where").and_then(|n| self.condition(n, roots));
                Some(Trigger::Event { name, filter })
            }
            "schedule" => {
                let schedule = self.fields(fields.get("schedule")?, "a schedule", &["cron", "timezone"])?;
                let cron_node = self.require(&schedule, "cron", "a schedule")?;
                let cron = self.string(cron_node, "a cron expression")?;
                if let Err(error) = cron.parse::<croner::Cron>() {
                    let span = self.span(cron_node);
                    self.error(
                        Diagnostic::error("flowmark::bad-cron", span, format!("`{cron}` is not a cron expression"))
                            .label(error.to_string())
                            .expected(
                                "minute hour day-of-month month day-of-week (a sixth leading field gives seconds), e.g. `0 9 * * MON-FRI`",
                            ),
                    );
                    return None;
                }
                let timezone = schedule.get("timezone").and_then(|n| self.timezone(n)).unwrap_or(chrono_tz::UTC);
                Some(Trigger::Schedule { cron, timezone })
            }
            "manual" => {
                let node = fields.get("manual")?;
                if !self.bool(node, "`true`")? {
                    let span = self.span(node);
                    self.error(
                        Diagnostic::error("flowmark::bad-trigger", span, "`manual: false` does not turn a trigger off")
                            .label("always `true`")
                            .help("remove the trigger to stop manual starts"),
                    );
                    return None;
                }
                Some(Trigger::Manual)
            }
            "workflow" => {
                let id = self.id(fields.get("workflow")?, "workflow id")?;
                let outcome = match fields.get("outcome") {
                    Some(n) => self.enum_value(
                        n,
                        "run outcome",
                        &[
                            ("completed", RunOutcomeFilter::Completed),
                            ("converted", RunOutcomeFilter::Converted),
                            ("exited", RunOutcomeFilter::Exited),
                            ("any", RunOutcomeFilter::Any),
                        ],
                    )?,
                    None => RunOutcomeFilter::Completed,
                };
                Some(Trigger::Workflow { id, outcome })
            }
            _ => {
                let name = self.string(fields.get("segment")?, "a segment name")?;
                let on = match fields.get("on") {
                    Some(n) => self.enum_value(
                        n,
                        "segment edge",
                        &[("enter", SegmentEdge::Enter), ("exit", SegmentEdge::Exit)],
                    )?,
                    None => SegmentEdge::Enter,
                };
                Some(Trigger::Segment { name, on })
            }
        }
    }

    fn entry<'n>(&mut self, node: &'n Node<'n>) -> Option<Entry> {
        let fields = self.fields(node, "entry rules", &["reentry", "cooldown"])?;
        let reentry = match fields.get("reentry") {
            Some(n) => self.enum_value(n, "re-entry rule", &[("never", 0), ("always", 1), ("after_cooldown", 2)])?,
            None if fields.has("cooldown") => 2,
            None => 0,
        };
        if reentry != 2 {
            self.misplaced(&fields, "cooldown", "it only applies to `reentry: after_cooldown`");
        }
        match reentry {
            0 => Some(Entry::Never),
            1 => Some(Entry::Always),
            _ => {
                let node = self.require(&fields, "cooldown", "re-entry after a cool-down")?;
                Some(Entry::After(self.duration(node)?))
            }
        }
    }

    fn goal<'n>(&mut self, node: &'n Node<'n>) -> Option<Goal> {
        let fields = self.fields(node, "a goal", &["name", "event", "where", "value", "currency"])?;
        let event = self.require(&fields, "event", "a goal").and_then(|n| self.string(n, "an event name"));
        let roots = self.roots();
        let filter = fields.get("where").and_then(|n| self.condition(n, roots));
        let value = fields.get("value").and_then(|n| self.number(n, "a value"));
        let currency = fields.get("currency").and_then(|n| self.string(n, "a currency code like `USD`"));
        let event = event?;
        let name = fields.get("name").and_then(|n| self.string(n, "a name")).unwrap_or_else(|| event.clone());
        Some(Goal { name, event, filter, value, currency })
    }

    fn exit_rule<'n>(&mut self, node: &'n Node<'n>) -> Option<ExitRule> {
        let fields = self.fields(node, "an exit rule", &["event", "where"])?;
        let event = self.require(&fields, "event", "an exit rule").and_then(|n| self.string(n, "an event name"));
        let roots = self.roots();
        let filter = fields.get("where").and_then(|n| self.condition(n, roots));
        Some(ExitRule { event: event?, filter })
    }

    fn weekdays(&mut self, node: &Node<'_>) -> Vec<chrono::Weekday> {
        let mut weekdays = Vec::new();
        for (day, span) in self.names(node, "a weekday") {
            match day.parse::<chrono::Weekday>() {
                Ok(d) if !weekdays.contains(&d) => weekdays.push(d),
                Ok(_) => {}
                Err(_) => self.error(
                    Diagnostic::error("flowmark::bad-weekday", span, format!("`{day}` is not a weekday"))
                        .expected("mon, tue, wed, thu, fri, sat or sun"),
                ),
            }
        }
        weekdays
    }

    fn working_days<'n>(&mut self, node: &'n Node<'n>) -> Option<WorkingDays> {
        let f = self.fields(node, "working days", &["days", "holidays"])?;
        let mut working = WorkingDays::default();
        if let Some(n) = f.get("days") {
            working.weekdays = self.weekdays(n);
            if working.weekdays.is_empty() {
                let span = self.span(n);
                self.error(
                    Diagnostic::error("flowmark::no-working-days", span, "a working week needs at least one day")
                        .expected("a list of weekdays, e.g. `[mon, tue, wed, thu, fri]`"),
                );
            }
        }
        if let Some(n) = f.get("holidays") {
            for (text, span) in self.names(n, "a date") {
                match chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                    Ok(date) => working.holidays.push(date),
                    Err(_) => self.error(
                        Diagnostic::error("flowmark::bad-date", span, format!("`{text}` is not a date"))
                            .expected("a date like `2026-12-25`"),
                    ),
                }
            }
            working.holidays.sort_unstable();
            working.holidays.dedup();
            if working.holidays.len() > limits::HOLIDAYS_COUNT_MAX {
                let span = self.span(n);
                self.error(Diagnostic::error(
                    "flowmark::too-many-holidays",
                    span,
                    format!("at most {} holidays", limits::HOLIDAYS_COUNT_MAX),
                ));
            }
        }
        (!working.weekdays.is_empty()).then_some(working)
    }

    /// `business_days: true` on a task or approval; an error when nothing on the step is a
    /// deadline it could apply to.
    fn business_days(&mut self, f: &Fields<'_>, has_deadline: bool) -> bool {
        let Some(n) = f.get("business_days") else { return false };
        let on = self.bool(n, "true or false").unwrap_or(false);
        if on && !has_deadline {
            self.misplaced(
                f,
                "business_days",
                "this step has no `due`, `remind` or `escalate` to count in working days",
            );
        }
        on
    }

    fn quiet_hours<'n>(&mut self, node: &'n Node<'n>) -> Option<QuietHours> {
        let fields = self.fields(node, "quiet hours", &["from", "to", "timezone", "action"])?;
        let from = self.require(&fields, "from", "quiet hours").and_then(|n| self.time_of_day(n));
        let to = self.require(&fields, "to", "quiet hours").and_then(|n| self.time_of_day(n));
        let timezone = match fields.get("timezone") {
            Some(n) => self.timezone_source(n)?,
            None => TimezoneSource::Subject,
        };
        let action = match fields.get("action") {
            Some(n) => {
                self.enum_value(n, "quiet-hours action", &[("delay", QuietAction::Delay), ("drop", QuietAction::Drop)])?
            }
            None => QuietAction::Delay,
        };
        let (from, to) = (from?, to?);
        if from == to {
            self.error(
                Diagnostic::error(
                    "flowmark::empty-window",
                    first_line(self.source, fields.span),
                    "quiet hours start and end at the same time",
                )
                .help("give a window like `from: \"21:00\", to: \"08:00\"`"),
            );
            return None;
        }
        Some(QuietHours { from_minute: from, to_minute: to, timezone, action })
    }

    fn caps<'n>(&mut self, node: &'n Node<'n>) -> Vec<Cap> {
        let mut caps = Vec::new();
        // Caps limit how often a person is contacted: email today (SMS and push arrive with their
        // connectors); webhooks and team notifications are not messages to the subject.
        let names: Vec<&str> = vec![Channel::Email.as_str()];
        let Some(fields) = self.fields(node, "frequency caps", &names) else { return caps };
        for (name, _, value) in &fields.entries {
            let channel = Channel::ALL.into_iter().find(|c| c.as_str() == name).expect("keys were checked");
            let Some(cap) = self.fields(value, "a frequency cap", &["max", "per", "action"]) else { continue };
            let max = self.require(&cap, "max", "a frequency cap").and_then(|n| self.integer(n, "max", 1, 1000));
            let per = self.require(&cap, "per", "a frequency cap").and_then(|n| self.duration(n));
            let action = match cap.get("action") {
                None => Some(CapAction::Skip),
                Some(n) => self.enum_value(n, "cap action", &[("skip", CapAction::Skip), ("hold", CapAction::Hold)]),
            };
            if let (Some(max), Some(per), Some(action)) = (max, per, action) {
                caps.push(Cap { channel, max: max as u32, per, action });
            }
        }
        caps
    }

    // ---- steps ---------------------------------------------------------------------------

    fn steps<'n>(&mut self, node: &'n Node<'n>) -> Option<(Vec<Step>, Vec<StepSpans>)> {
        let items = self.list(node, "a list of steps")?;
        if items.is_empty() {
            let span = self.span(node);
            self.error(
                Diagnostic::error("flowmark::no-steps", span, "a workflow needs at least one step").label("empty list"),
            );
            return None;
        }
        if items.len() > limits::STEPS_COUNT_MAX {
            let span = first_line(self.source, self.span(node));
            self.error(
                Diagnostic::error(
                    "flowmark::too-many-steps",
                    span,
                    format!("{} steps; the limit is {}", items.len(), limits::STEPS_COUNT_MAX),
                )
                .help("move part of the workflow into another one and call it with `subflow`"),
            );
            return None;
        }
        // First pass: ids, so targets can point forward.
        let mut first_seen: HashMap<String, Span> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let Some(id_node) = unwrap_tagged(item).data.as_mapping_get("id") else { continue };
            let Some(id) = scalar_text(id_node) else { continue };
            let span = self.span(id_node);
            if id == "end" {
                self.error(
                    Diagnostic::error("flowmark::reserved-id", span, "`end` is reserved: it means the run completes")
                        .label("reserved"),
                );
                continue;
            }
            if let Some(first) = first_seen.get(id) {
                let (line, _) = self.source.line_col(first.offset);
                self.error(
                    Diagnostic::error("flowmark::duplicate-step", span, format!("step id `{id}` is used twice"))
                        .label("second use")
                        .help(format!("the first is on line {line}; step ids must be unique")),
                );
                continue;
            }
            first_seen.insert(id.to_owned(), span);
            self.step_ids.insert(id.to_owned(), StepIndex(index as u16));
        }
        let mut steps = Vec::with_capacity(items.len());
        let mut spans = Vec::with_capacity(items.len());
        let mut all_decoded = true;
        for (index, item) in items.iter().enumerate() {
            let is_last = index + 1 == items.len();
            let fallthrough = if is_last { Target::End } else { Target::Step(StepIndex(index as u16 + 1)) };
            self.current_step = Some(index);
            match self.step(item, fallthrough) {
                Some((step, step_spans)) => {
                    steps.push(step);
                    spans.push(step_spans);
                }
                None => all_decoded = false,
            }
        }
        self.current_step = None;
        all_decoded.then_some((steps, spans))
    }

    fn step<'n>(&mut self, node: &'n Node<'n>, fallthrough: Target) -> Option<(Step, StepSpans)> {
        const COMMON: &[&str] = &["id", "name", "description", "next", "on_timeout"];
        let allowed: Vec<&str> = COMMON.iter().copied().chain(StepKind::NAMES).collect();
        let fields = self.fields(node, "a step", &allowed)?;
        let id_node = self.require(&fields, "id", "a step");
        let id = id_node.and_then(|n| self.id(n, "step id"));
        let name = fields.get("name").and_then(|n| self.string(n, "a name"));
        if let Some(n) = fields.get("description") {
            self.string(n, "a description");
        }
        let kinds: Vec<&(String, Span, &Node<'_>)> =
            fields.entries.iter().filter(|(k, _, _)| StepKind::NAMES.contains(&k.as_str())).collect();
        if kinds.len() != 1 {
            let span = match kinds.get(1) {
                Some((_, span, _)) => *span,
                None => id_node.map_or(first_line(self.source, fields.span), |n| self.span(n)),
            };
            let found = kinds.iter().map(|(k, _, _)| format!("`{k}`")).collect::<Vec<_>>().join(" and ");
            self.error(
                Diagnostic::error(
                    "flowmark::step-kind",
                    span,
                    if kinds.is_empty() {
                        "this step says nothing about what it does".to_owned()
                    } else {
                        format!("a step has one kind; this one has {found}")
                    },
                )
                .label(if kinds.is_empty() { "no kind" } else { "second kind" })
                .expected(format!("exactly one of: {}", StepKind::NAMES.join(", "))),
            );
            return None;
        }
        let (kind_name, kind_span, kind_node) = kinds[0];
        let mut spans =
            StepSpans { id: id_node.map(|n| self.span(n)).unwrap_or_default(), kind: *kind_span, targets: Vec::new() };
        let explicit_next = match fields.get("next") {
            Some(n) => Some(self.target(n, &mut spans.targets)),
            None => None,
        };
        let on_timeout = match fields.get("on_timeout") {
            Some(n) => Some(self.target(n, &mut spans.targets)),
            None => None,
        };
        if on_timeout.is_some() && kind_name != "wait" {
            let span = fields.key_span("on_timeout").unwrap_or_default();
            self.error(
                Diagnostic::error("flowmark::misplaced-key", span, "`on_timeout` belongs to a `wait` for an event")
                    .label(format!("this is a `{kind_name}` step")),
            );
        }
        let kind = match kind_name.as_str() {
            "action" => self.action(kind_node).map(StepKind::Action),
            "task" => self.task(kind_node).map(StepKind::Task),
            "approval" => self.approval(kind_node, &mut spans.targets).map(StepKind::Approval),
            "wait" => self.wait(kind_node, on_timeout.flatten(), fields.key_span("on_timeout")).map(StepKind::Wait),
            "branch" => self.branch(kind_node, &mut spans.targets).map(StepKind::Branch),
            "split" => self.split(kind_node, &mut spans.targets).map(StepKind::Split),
            "parallel" => self.parallel(kind_node, &mut spans.targets).map(StepKind::Parallel),
            "join" => self
                .enum_value(kind_node, "join mode", &[("all", JoinMode::All), ("any", JoinMode::Any)])
                .map(StepKind::Join),
            "goal" => self.goal_step(kind_node).map(StepKind::Goal),
            "exit" => self.exit_step(kind_node).map(StepKind::Exit),
            _ => self.subflow(kind_node).map(StepKind::Subflow),
        };
        let kind = kind?;
        let routes_itself = matches!(
            kind,
            StepKind::Branch(_) | StepKind::Split(_) | StepKind::Parallel(_) | StepKind::Goal(_) | StepKind::Exit(_)
        );
        if routes_itself && fields.has("next") {
            let span = fields.key_span("next").unwrap_or_default();
            self.error(
                Diagnostic::error(
                    "flowmark::misplaced-key",
                    span,
                    format!("a `{kind_name}` step chooses where to go itself; `next` has no effect"),
                )
                .label("remove this"),
            );
        }
        let next = if routes_itself { None } else { Some(explicit_next.flatten().unwrap_or(fallthrough)) };
        Some((Step { id: id?.into(), name, kind, next }, spans))
    }

    fn action<'n>(&mut self, node: &'n Node<'n>) -> Option<Action> {
        let fields = self.fields(node, "an action", &["email", "webhook", "notify", "score", "update", "emit"])?;
        if fields.entries.len() != 1 {
            self.error(
                Diagnostic::error(
                    "flowmark::action-kind",
                    first_line(self.source, fields.span),
                    "an action does exactly one thing",
                )
                .expected("exactly one of: email, webhook, notify, score, update, emit")
                .help("use one step per action"),
            );
            return None;
        }
        let (kind, _, body) = &fields.entries[0];
        match kind.as_str() {
            "email" => {
                let f =
                    self.fields(body, "an email", &["template", "subject", "html", "text", "from", "transactional"])?;
                let template = f.get("template").and_then(|n| self.id(n, "template id"));
                let subject = f.get("subject").and_then(|n| self.template(n, "the subject"));
                let html = f.get("html").and_then(|n| self.html_template(n, "the HTML body"));
                let text = f.get("text").and_then(|n| self.template(n, "the text body"));
                let from = f.get("from").and_then(|n| self.string(n, "a sender address"));
                let transactional = f.get("transactional").and_then(|n| self.bool(n, "true or false")).unwrap_or(false);
                if template.is_none()
                    && (subject.is_none() || (html.is_none() && text.is_none()))
                    && !self.diagnostics.has_errors()
                {
                    self.error(
                        Diagnostic::error(
                            "flowmark::incomplete-email",
                            first_line(self.source, f.span),
                            "an email needs a `template`, or a `subject` and an `html` or `text` body",
                        )
                        .label("incomplete email"),
                    );
                    return None;
                }
                Some(Action::Email(Email { template, subject, html, text, from, transactional }))
            }
            "webhook" => {
                let f = self.fields(body, "a webhook", &["url", "method", "headers", "body"])?;
                let url = self.require(&f, "url", "a webhook").and_then(|n| self.template(n, "the URL"));
                let method = match f.get("method") {
                    Some(n) => self.enum_value(
                        n,
                        "HTTP method",
                        &[("POST", "POST"), ("PUT", "PUT"), ("PATCH", "PATCH"), ("GET", "GET"), ("DELETE", "DELETE")],
                    )?,
                    None => "POST",
                };
                let mut headers = Vec::new();
                if let Some(h) = f.get("headers") {
                    if let YamlData::Mapping(m) = &unwrap_tagged(h).data {
                        for (k, v) in m {
                            if let (Some(k), Some(v)) =
                                (self.string(k, "a header name"), self.template(v, "a header value"))
                            {
                                headers.push((k, v));
                            }
                        }
                    } else {
                        self.expected(h, "a mapping of header names to values");
                    }
                }
                let body = f.get("body").and_then(|n| self.template_value(n, "the body"));
                Some(Action::Webhook(Webhook { url: url?, method: method.to_owned(), headers, body }))
            }
            "notify" => {
                let f = self.fields(body, "a notification", &["to", "message"])?;
                let to_node = self.require(&f, "to", "a notification");
                let to = to_node.and_then(|n| self.string(n, "a role or an email address"));
                if let (Some(to), Some(n)) = (&to, to_node)
                    && !to.contains('@')
                {
                    self.check_role(to, self.span(n));
                }
                let message =
                    self.require(&f, "message", "a notification").and_then(|n| self.template(n, "the message"));
                Some(Action::Notify(Notify { to: to?, message: message? }))
            }
            "score" => {
                let f = self.fields(body, "a score change", &["model", "add", "subtract", "set"])?;
                let model = self.require(&f, "model", "a score change").and_then(|n| self.id(n, "score model"));
                let mut changes: Vec<ScoreChange> = Vec::new();
                for (key, sign) in [("add", 1.0), ("subtract", -1.0)] {
                    if let Some(v) = f.get(key).and_then(|n| self.number(n, "a number")) {
                        changes.push(ScoreChange::Add(sign * v));
                    }
                }
                if let Some(v) = f.get("set").and_then(|n| self.number(n, "a number")) {
                    changes.push(ScoreChange::Set(v));
                }
                if changes.len() != 1 {
                    self.error(
                        Diagnostic::error(
                            "flowmark::score-change",
                            first_line(self.source, f.span),
                            "a score change needs exactly one of `add`, `subtract` or `set`",
                        )
                        .label("say how the score changes"),
                    );
                    return None;
                }
                Some(Action::Score(Score { model: model?, change: changes[0] }))
            }
            "emit" => {
                let f = self.fields(body, "an emitted event", &["event", "properties"])?;
                let event_node = self.require(&f, "event", "an emitted event");
                let event = event_node.and_then(|n| self.string(n, "an event name"));
                if let (Some(name), Some(n)) = (&event, event_node)
                    && name.trim().is_empty()
                {
                    self.error(
                        Diagnostic::error("flowmark::empty-event-name", self.span(n), "an emitted event needs a name")
                            .label("name the event, e.g. `Lead Qualified`"),
                    );
                    return None;
                }
                let properties = match f.get("properties") {
                    Some(n) if matches!(unwrap_tagged(n).data, YamlData::Mapping(_)) => {
                        Some(self.template_value(n, "a property value")?)
                    }
                    Some(n) => {
                        self.expected(n, "a mapping of property names to values");
                        return None;
                    }
                    None => None,
                };
                Some(Action::Emit(Emit { event: event?, properties }))
            }
            _ => {
                let f = self.fields(body, "an update", &["set"])?;
                let set_node = self.require(&f, "set", "an update")?;
                let YamlData::Mapping(m) = &unwrap_tagged(set_node).data else {
                    self.expected(set_node, "a mapping of field names to values");
                    return None;
                };
                let mut set = Vec::new();
                for (k, v) in m {
                    if let (Some(k), Some(v)) =
                        (self.string(k, "a field name"), self.template_value(v, "a field value"))
                    {
                        set.push((k, v));
                    }
                }
                Some(Action::Update(Update { set }))
            }
        }
    }

    fn raci_roles(&mut self, fields: &Fields<'_>, key: &str) -> Vec<String> {
        let Some(node) = fields.get(key) else { return Vec::new() };
        let names = self.names(node, "a role name");
        for (name, span) in &names {
            self.check_role(name, *span);
        }
        names.into_iter().map(|(n, _)| n).collect()
    }

    fn accountable(&mut self, fields: &Fields<'_>, what: &str, required: bool) -> Option<String> {
        let Some(node) = fields.get("accountable") else {
            if required {
                self.error(
                    Diagnostic::error(
                        "flowmark::raci-accountable",
                        first_line(self.source, fields.span),
                        format!("{what} needs exactly one `accountable` role"),
                    )
                    .label("no one is accountable")
                    .help("the accountable role owns the outcome and receives escalations"),
                );
            }
            return None;
        };
        if let YamlData::Sequence(items) = &unwrap_tagged(node).data {
            if items.len() != 1 {
                let span = self.span(node);
                self.error(
                    Diagnostic::error(
                        "flowmark::raci-accountable",
                        span,
                        format!("{what} has exactly one accountable role; this names {}", items.len()),
                    )
                    .label("one role only")
                    .help("make the others `consulted` or `informed`"),
                );
                return None;
            }
            return self.role(&items[0], "a role name");
        }
        self.role(node, "a role name")
    }

    fn task<'n>(&mut self, node: &'n Node<'n>) -> Option<Task> {
        let f = self.fields(
            node,
            "a task",
            &[
                "title",
                "description",
                "responsible",
                "accountable",
                "consulted",
                "informed",
                "due",
                "business_days",
                "fields",
            ],
        )?;
        let title = self.require(&f, "title", "a task").and_then(|n| self.template(n, "the title"));
        let description = f.get("description").and_then(|n| self.template(n, "the description"));
        let responsible = self.raci_roles(&f, "responsible");
        if responsible.is_empty() {
            self.error(
                Diagnostic::error(
                    "flowmark::raci-responsible",
                    first_line(self.source, f.span),
                    "a task needs a `responsible` role: who does it",
                )
                .label("no one is responsible"),
            );
        }
        let accountable = self.accountable(&f, "a task", true);
        let consulted = self.raci_roles(&f, "consulted");
        let informed = self.raci_roles(&f, "informed");
        let due = f.get("due").and_then(|n| self.duration(n));
        let business_days = self.business_days(&f, f.has("due"));
        let mut form = Vec::new();
        if let Some(list) = f.get("fields") {
            for item in self.list(list, "a list of form fields").into_iter().flatten() {
                let Some(ff) = self.fields(item, "a form field", &["name", "type", "required"]) else { continue };
                let name = self.require(&ff, "name", "a form field").and_then(|n| self.id(n, "field name"));
                let kind = match ff.get("type") {
                    Some(n) => self.enum_value(
                        n,
                        "field type",
                        &[
                            ("text", FieldKind::Text),
                            ("number", FieldKind::Number),
                            ("bool", FieldKind::Bool),
                            ("url", FieldKind::Url),
                            ("date", FieldKind::Date),
                            ("checkbox", FieldKind::Checkbox),
                        ],
                    ),
                    None => Some(FieldKind::Text),
                };
                let required = ff.get("required").and_then(|n| self.bool(n, "true or false")).unwrap_or(false);
                if let (Some(name), Some(kind)) = (name, kind) {
                    form.push(FormField { name, kind, required });
                }
            }
        }
        Some(Task {
            title: title?,
            description,
            raci: Raci { responsible, accountable: accountable?, consulted, informed },
            due,
            business_days,
            fields: form,
        })
    }

    fn approval<'n>(&mut self, node: &'n Node<'n>, targets: &mut Vec<(String, Span)>) -> Option<Approval> {
        let f = self.fields(
            node,
            "an approval",
            &[
                "mode",
                "quorum",
                "approvers",
                "accountable",
                "due",
                "remind",
                "escalate",
                "business_days",
                "on_reject",
                "on_changes",
                "allow_self_approval",
                "distinct_approvers",
            ],
        )?;
        let mode = match f.get("mode") {
            Some(n) => self.enum_value(
                n,
                "approval mode",
                &[
                    ("single", ApprovalMode::Single),
                    ("parallel", ApprovalMode::Parallel),
                    ("sequential", ApprovalMode::Sequential),
                ],
            )?,
            None => ApprovalMode::Single,
        };
        let approvers_node = self.require(&f, "approvers", "an approval")?;
        let approvers: Vec<(String, Span)> = self.names(approvers_node, "a role name");
        for (name, span) in &approvers {
            self.check_role(name, *span);
        }
        let approvers: Vec<String> = approvers.into_iter().map(|(n, _)| n).collect();
        if approvers.is_empty() || approvers.len() > limits::APPROVERS_COUNT_MAX {
            let span = self.span(approvers_node);
            self.error(
                Diagnostic::error(
                    "flowmark::approvers",
                    span,
                    format!("an approval needs from 1 to {} approvers", limits::APPROVERS_COUNT_MAX),
                )
                .label("wrong number of approvers"),
            );
            return None;
        }
        let quorum = match f.get("quorum") {
            None => Quorum::All,
            Some(n) => match &unwrap_tagged(n).data {
                YamlData::Value(Scalar::Integer(count)) => {
                    let span = self.span(n);
                    if *count < 1 || *count as usize > approvers.len() {
                        self.error(
                            Diagnostic::error(
                                "flowmark::impossible-quorum",
                                span,
                                format!("a quorum of {count} can never be met by {} approver(s)", approvers.len()),
                            )
                            .label("impossible quorum")
                            .expected(format!("`all`, `any`, or a number from 1 to {}", approvers.len())),
                        );
                        return None;
                    }
                    Quorum::Count(*count as u16)
                }
                _ => self.enum_value(n, "quorum", &[("all", Quorum::All), ("any", Quorum::Any)])?,
            },
        };
        if mode != ApprovalMode::Parallel && f.has("quorum") {
            let span = f.key_span("quorum").unwrap_or_default();
            self.error(
                Diagnostic::error(
                    "flowmark::misplaced-key",
                    span,
                    format!(
                        "a quorum only applies to `mode: parallel`; this approval is `{}`",
                        if mode == ApprovalMode::Single { "single" } else { "sequential" }
                    ),
                )
                .label("has no effect here"),
            );
        }
        let accountable = self.accountable(&f, "an approval", false);
        let due = f.get("due").and_then(|n| self.duration(n));
        let mut remind = Vec::new();
        let mut remind_every = None;
        if let Some(n) = f.get("remind") {
            match &unwrap_tagged(n).data {
                YamlData::Sequence(items) => remind.extend(items.iter().filter_map(|i| self.duration(i))),
                YamlData::Mapping(_) => {
                    let r = self.fields(n, "a repeating reminder", &["every"])?;
                    if let Some(every) =
                        self.require(&r, "every", "a repeating reminder").and_then(|n| self.duration(n))
                    {
                        if every.0 < limits::REMINDER_EVERY_MS_MIN {
                            let span = self.span(r.get("every").unwrap_or(n));
                            self.error(
                                Diagnostic::error(
                                    "flowmark::reminder-too-often",
                                    span,
                                    "a repeating reminder at most once an hour".to_owned(),
                                )
                                .label("more often than hourly")
                                .help("people stop reading reminders that come more often; use `every: 1h` or longer"),
                            );
                        }
                        remind_every = Some(every);
                    }
                }
                _ => remind.extend(self.duration(n)),
            }
            if remind.len() > limits::REMINDERS_COUNT_MAX {
                let span = self.span(n);
                self.error(Diagnostic::error(
                    "flowmark::too-many-reminders",
                    span,
                    format!("at most {} reminders", limits::REMINDERS_COUNT_MAX),
                ));
            }
        }
        let escalate = match f.get("escalate") {
            Some(n) => {
                let e = self.fields(n, "an escalation", &["after", "every", "to", "action"])?;
                let after = self.require(&e, "after", "an escalation").and_then(|n| self.duration(n));
                let every = e.get("every").and_then(|n| {
                    let every = self.duration(n)?;
                    if every.0 < limits::REMINDER_EVERY_MS_MIN {
                        let span = self.span(n);
                        self.error(
                            Diagnostic::error(
                                "flowmark::reminder-too-often",
                                span,
                                "a repeating escalation at most once an hour".to_owned(),
                            )
                            .label("more often than hourly"),
                        );
                    }
                    Some(every)
                });
                let to = match e.get("to") {
                    Some(n) => {
                        // One role, or a chain of them that repeated escalations climb.
                        let names: Vec<&Node<'_>> = match &n.data {
                            saphyr::YamlData::Sequence(items) => items.iter().collect(),
                            _ => vec![n],
                        };
                        if names.is_empty() {
                            let span = self.span(n);
                            self.error(
                                Diagnostic::error("flowmark::invalid-value", span, "an escalation chain names no one")
                                    .help("give one role, or a list: `to: [accountable, head_of_marketing]`"),
                            );
                        }
                        let mut chain = Vec::with_capacity(names.len());
                        for name in names {
                            let to = self.string(name, "a role or `accountable`")?;
                            if to == "accountable" {
                                if accountable.is_none() {
                                    let span = self.span(name);
                                    self.error(
                                        Diagnostic::error(
                                            "flowmark::raci-accountable",
                                            span,
                                            "escalation goes to the accountable role, but this approval names none",
                                        )
                                        .help(
                                            "add `accountable: <role>` to the approval, or escalate to a role by name",
                                        ),
                                    );
                                }
                            } else if !to.contains('@') {
                                self.check_role(&to, self.span(name));
                            }
                            chain.push(to);
                        }
                        chain
                    }
                    None => {
                        if accountable.is_none() {
                            self.error(
                                Diagnostic::error(
                                    "flowmark::raci-accountable",
                                    first_line(self.source, e.span),
                                    "escalation goes to the accountable role by default, but this approval names none",
                                )
                                .help("add `accountable: <role>` to the approval, or give the escalation a `to:`"),
                            );
                        }
                        vec!["accountable".to_owned()]
                    }
                };
                let action = match e.get("action") {
                    Some(n) => self.enum_value(
                        n,
                        "escalation action",
                        &[
                            ("notify", EscalationAction::Notify),
                            ("reassign", EscalationAction::Reassign),
                            ("auto_approve", EscalationAction::AutoApprove),
                            ("auto_reject", EscalationAction::AutoReject),
                        ],
                    )?,
                    None => EscalationAction::Notify,
                };
                Some(Escalation { after: after?, every, to, action })
            }
            None => None,
        };
        let business_days = self.business_days(&f, f.has("due") || f.has("remind") || f.has("escalate"));
        let on_reject = match f.get("on_reject") {
            Some(n) => Some(self.target(n, targets)?),
            None => None,
        };
        let on_changes = match f.get("on_changes") {
            Some(n) => Some(self.target(n, targets)?),
            None => None,
        };
        let allow_self_approval = match f.get("allow_self_approval") {
            Some(n) => self.bool(n, "`allow_self_approval`")?,
            None => false,
        };
        let distinct_approvers = match f.get("distinct_approvers") {
            Some(n) => self.bool(n, "`distinct_approvers`")?,
            None => true,
        };
        Some(Approval {
            mode,
            quorum,
            approvers,
            accountable,
            due,
            remind,
            remind_every,
            escalate,
            business_days,
            on_reject,
            on_changes,
            allow_self_approval,
            distinct_approvers,
        })
    }

    fn wait<'n>(
        &mut self,
        node: &'n Node<'n>,
        on_timeout: Option<Target>,
        on_timeout_span: Option<Span>,
    ) -> Option<Wait> {
        let f = self.fields(node, "a wait", &["duration", "until", "timezone", "days", "event", "where", "timeout"])?;
        let kinds: Vec<&str> = ["duration", "until", "event"].into_iter().filter(|k| f.has(k)).collect();
        if kinds.len() != 1 {
            self.error(
                Diagnostic::error(
                    "flowmark::wait-kind",
                    first_line(self.source, f.span),
                    "a wait needs exactly one of `duration`, `until` or `event`",
                )
                .label(if kinds.is_empty() {
                    "nothing to wait for".to_owned()
                } else {
                    format!("found {}", kinds.join(" and "))
                }),
            );
            return None;
        }
        if kinds[0] != "event" {
            for key in ["where", "timeout"] {
                if let Some(span) = f.key_span(key) {
                    self.error(
                        Diagnostic::error(
                            "flowmark::misplaced-key",
                            span,
                            format!("`{key}` belongs to a wait for an event"),
                        )
                        .label("has no effect here"),
                    );
                }
            }
            if let Some(span) = on_timeout_span {
                self.error(
                    Diagnostic::error(
                        "flowmark::misplaced-key",
                        span,
                        "`on_timeout` belongs to a wait for an event with a `timeout`",
                    )
                    .label("has no effect here"),
                );
            }
        }
        let time_of_day = kinds[0] == "until" && f.get("until").and_then(scalar_text).is_some_and(|t| t.len() == 5);
        if !time_of_day {
            for key in ["timezone", "days"] {
                self.misplaced(&f, key, "it only applies to waiting `until` a time of day (`HH:MM`)");
            }
        }
        match kinds[0] {
            "duration" => Some(Wait::Duration(self.duration(f.get("duration")?)?)),
            "until" => {
                let until = f.get("until")?;
                let text = self.string(until, "a time of day like `09:00` or an RFC 3339 instant")?;
                if text.len() == 5 && text.as_bytes()[2] == b':' {
                    let minute = self.time_of_day(until)?;
                    let timezone = match f.get("timezone") {
                        Some(n) => self.timezone_source(n)?,
                        None => TimezoneSource::Subject,
                    };
                    let weekdays = f.get("days").map(|n| self.weekdays(n)).unwrap_or_default();
                    Some(Wait::TimeOfDay { minute, timezone, weekdays })
                } else {
                    match chrono::DateTime::parse_from_rfc3339(&text) {
                        Ok(at) => Some(Wait::Until(Timestamp::from_chrono(&at))),
                        Err(_) => {
                            let span = self.span(until);
                            self.error(
                                Diagnostic::error(
                                    "flowmark::bad-time",
                                    span,
                                    format!("`{text}` is neither a time of day nor an instant"),
                                )
                                .expected(
                                    "`HH:MM` (e.g. `09:00`) or an RFC 3339 instant (e.g. `2026-12-01T09:00:00Z`)",
                                ),
                            );
                            None
                        }
                    }
                }
            }
            _ => {
                let name = self.string(f.get("event")?, "an event name")?;
                let roots = self.roots();
                let filter = f.get("where").and_then(|n| self.condition(n, roots));
                let timeout = f.get("timeout").and_then(|n| self.duration(n));
                if on_timeout.is_some()
                    && !f.has("timeout")
                    && let Some(span) = on_timeout_span
                {
                    self.error(
                        Diagnostic::error(
                            "flowmark::misplaced-key",
                            span,
                            "`on_timeout` needs a `timeout` on the wait",
                        )
                        .label("never taken"),
                    );
                }
                Some(Wait::Event { name, filter, timeout, on_timeout })
            }
        }
    }

    fn branch<'n>(&mut self, node: &'n Node<'n>, targets: &mut Vec<(String, Span)>) -> Option<Branch> {
        let items = self.list(node, "a list of `when`/`goto` arms ending with `otherwise`")?;
        let mut arms = Vec::new();
        let mut otherwise = None;
        let roots = self.roots();
        for item in items {
            let Some(f) = self.fields(item, "a branch arm", &["when", "goto", "otherwise"]) else { continue };
            if let Some(n) = f.get("otherwise") {
                if f.has("when") || f.has("goto") {
                    self.error(
                        Diagnostic::error(
                            "flowmark::branch-arm",
                            first_line(self.source, f.span),
                            "`otherwise` stands alone: `- otherwise: <step>`",
                        )
                        .label("mixed arm"),
                    );
                }
                if otherwise.is_some() {
                    let span = self.span(n);
                    self.error(
                        Diagnostic::error("flowmark::branch-arm", span, "a branch has one `otherwise`")
                            .label("second otherwise"),
                    );
                }
                otherwise = Some(self.target(n, targets));
                continue;
            }
            if otherwise.is_some() {
                self.error(
                    Diagnostic::error(
                        "flowmark::branch-arm",
                        first_line(self.source, f.span),
                        "this arm comes after `otherwise` and is never tried",
                    )
                    .help("put `otherwise` last"),
                );
            }
            let when = self.require(&f, "when", "a branch arm").and_then(|n| self.condition(n, roots));
            let target = self.require(&f, "goto", "a branch arm").and_then(|n| self.target(n, targets));
            if let (Some(when), Some(target)) = (when, target) {
                arms.push(BranchArm { when, target });
            }
        }
        if arms.len() > limits::FANOUT_COUNT_MAX {
            let span = first_line(self.source, self.span(node));
            self.error(Diagnostic::error(
                "flowmark::too-many-arms",
                span,
                format!("{} arms; the limit is {}", arms.len(), limits::FANOUT_COUNT_MAX),
            ));
        }
        let Some(otherwise) = otherwise else {
            let span = first_line(self.source, self.span(node));
            self.error(
                Diagnostic::error("flowmark::branch-otherwise", span, "this branch has no `otherwise`")
                    .label("a subject matching no condition would be stuck")
                    .help("end the list with `- otherwise: <step>` (or `- otherwise: end`)"),
            );
            return None;
        };
        Some(Branch { arms, otherwise: otherwise? })
    }

    fn split<'n>(&mut self, node: &'n Node<'n>, targets: &mut Vec<(String, Span)>) -> Option<Split> {
        let items = self.list(node, "a list of `weight`/`goto` arms")?;
        let mut arms = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let Some(f) = self.fields(item, "a split arm", &["name", "weight", "goto"]) else { continue };
            let weight =
                self.require(&f, "weight", "a split arm").and_then(|n| self.integer(n, "a weight", 0, 1_000_000));
            let target = self.require(&f, "goto", "a split arm").and_then(|n| self.target(n, targets));
            let name =
                f.get("name").and_then(|n| self.id(n, "arm name")).unwrap_or_else(|| format!("arm-{}", index + 1));
            if let (Some(weight), Some(target)) = (weight, target) {
                arms.push(SplitArm { name, weight: weight as u32, target });
            }
        }
        if arms.len() < 2 || arms.len() > limits::FANOUT_COUNT_MAX || arms.iter().all(|a| a.weight == 0) {
            let span = first_line(self.source, self.span(node));
            self.error(
                Diagnostic::error(
                    "flowmark::split-arms",
                    span,
                    "a split needs from 2 to 32 arms and a weight above zero",
                )
                .help("e.g. `- { weight: 50, goto: a }` and `- { weight: 50, goto: b }`"),
            );
            return None;
        }
        Some(Split { arms })
    }

    fn parallel<'n>(&mut self, node: &'n Node<'n>, targets: &mut Vec<(String, Span)>) -> Option<Parallel> {
        let items = self.list(node, "a list of the step ids that start each branch")?;
        let mut branches = Vec::new();
        for item in items {
            if let Some(Target::Step(index)) = self.target(item, targets) {
                branches.push(index);
            }
        }
        if branches.len() < 2 || branches.len() > limits::FANOUT_COUNT_MAX {
            let span = first_line(self.source, self.span(node));
            self.error(
                Diagnostic::error("flowmark::parallel-branches", span, "a parallel step starts from 2 to 32 branches")
                    .label("wrong number of branches"),
            );
            return None;
        }
        // The join is found by validation, once the whole graph is known.
        Some(Parallel { branches, join: StepIndex(0) })
    }

    fn goal_step<'n>(&mut self, node: &'n Node<'n>) -> Option<GoalStep> {
        if let Some(name) = scalar_text(node) {
            return Some(GoalStep { name: name.to_owned(), value: None, currency: None });
        }
        let f = self.fields(node, "a goal step", &["name", "value", "currency"])?;
        let name = self.require(&f, "name", "a goal step").and_then(|n| self.string(n, "a name"));
        let value = f.get("value").and_then(|n| self.number(n, "a value"));
        let currency = f.get("currency").and_then(|n| self.string(n, "a currency code"));
        Some(GoalStep { name: name?, value, currency })
    }

    fn exit_step<'n>(&mut self, node: &'n Node<'n>) -> Option<ExitStep> {
        if let Some(reason) = scalar_text(node) {
            return Some(ExitStep { reason: Some(reason.to_owned()) });
        }
        if matches!(unwrap_tagged(node).data, YamlData::Value(Scalar::Null)) {
            return Some(ExitStep { reason: None });
        }
        let f = self.fields(node, "an exit step", &["reason"])?;
        let reason = f.get("reason").and_then(|n| self.string(n, "a reason"));
        Some(ExitStep { reason })
    }

    fn subflow<'n>(&mut self, node: &'n Node<'n>) -> Option<Subflow> {
        let f = self.fields(node, "a subflow", &["workflow", "wait"])?;
        let workflow = self.require(&f, "workflow", "a subflow").and_then(|n| self.id(n, "workflow id"));
        let wait = f.get("wait").and_then(|n| self.bool(n, "true or false")).unwrap_or(true);
        Some(Subflow { workflow: workflow?, wait })
    }
}

/// The first line of a span: a mapping's span covers all its lines, a label needs one.
fn first_line(source: &Source, span: Span) -> Span {
    let text = &source.text[span.offset..(span.offset + span.len).min(source.text.len())];
    Span::new(span.offset, text.find('\n').unwrap_or(text.len()))
}
