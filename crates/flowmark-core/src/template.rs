//! Message templates: Liquid, parsed once at validation, rendered by the runtime and the simulator.
//!
//! Templates see only the data they are given (no file system, no includes): the parser is
//! built with Liquid's standard tags and filters and nothing else. A variable that does not
//! exist is an error, never a silent blank; `| default: '…'` is how a template says otherwise.
//!
//! Invariant: a `Template` only exists for source that parsed.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::limits::TEMPLATE_LENGTH_MAX;

#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    /// `None` when the source has no Liquid markup: rendering is then a copy.
    compiled: Option<Arc<liquid::Template>>,
    /// Variables written as `{{ path | default: … }}`: when missing they render the default.
    /// Liquid itself is strict about every missing variable; this keeps it strict only where
    /// the template gave no default.
    defaulted: Arc<[String]>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl PartialEq for Template {
    fn eq(&self, other: &Template) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template is {length} bytes; the limit is {TEMPLATE_LENGTH_MAX}")]
    TooLong { length: usize },
    /// `line` and `column` are 1-based within the template.
    #[error("{message}")]
    Syntax { message: String, line: usize, column: usize },
    #[error("{0}")]
    Render(String),
}

fn parser() -> &'static liquid::Parser {
    static PARSER: OnceLock<liquid::Parser> = OnceLock::new();
    PARSER.get_or_init(|| {
        liquid::ParserBuilder::with_stdlib().build().expect("the standard Liquid library always builds")
    })
}

impl Template {
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        if source.len() > TEMPLATE_LENGTH_MAX {
            return Err(TemplateError::TooLong { length: source.len() });
        }
        let compiled = if source.contains("{{") || source.contains("{%") {
            let template = parser().parse(source).map_err(|e| syntax_error(&e.to_string()))?;
            Some(Arc::new(template))
        } else {
            None
        };
        Ok(Template { source: source.into(), compiled, defaulted: defaulted_paths(source).into() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders with `data` (a JSON object whose keys are the template's variables).
    pub fn render(&self, data: &Value) -> Result<String, TemplateError> {
        let Some(compiled) = &self.compiled else {
            return Ok(self.source.to_string());
        };
        let mut filled;
        let mut data = data;
        if self.defaulted.iter().any(|path| lookup(data, path).is_none()) {
            filled = data.clone();
            for path in self.defaulted.iter() {
                insert_null(&mut filled, path);
            }
            data = &filled;
        }
        let globals = liquid::to_object(data).map_err(|e| TemplateError::Render(clean(&e.to_string())))?;
        compiled.render(&globals).map_err(|e| TemplateError::Render(clean(&e.to_string())))
    }
}

/// The dotted paths that appear as `{{ path | default: … }}`.
fn defaulted_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for output in source.split("{{").skip(1) {
        let Some((inner, _)) = output.split_once("}}") else { continue };
        let mut parts = inner.split('|');
        let Some(entry) = parts.next().map(str::trim) else { continue };
        let has_default = parts.any(|filter| filter.trim_start().starts_with("default"));
        let is_path = !entry.is_empty()
            && entry.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && entry.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if has_default && is_path && !paths.iter().any(|p| p == entry) {
            paths.push(entry.to_owned());
        }
    }
    paths
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| v.get(part))
}

/// Sets `path` to null where it is missing, creating objects on the way (a null parent becomes
/// an empty object); leaves a path alone where another value stands in the way.
fn insert_null(value: &mut Value, path: &str) {
    let mut current = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if current.is_null() {
            *current = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = current else { return };
        let last = parts.peek().is_none();
        current = map
            .entry(part.to_owned())
            .or_insert_with(|| if last { Value::Null } else { Value::Object(Default::default()) });
    }
}

/// Liquid's parse errors are a rendered snippet: `--> L:C`, the line, a caret, `= message`.
/// Keep the position and the message; the caller draws its own snippet.
fn syntax_error(rendered: &str) -> TemplateError {
    let position = rendered.split("--> ").nth(1).and_then(|rest| {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == ':')).unwrap_or(rest.len());
        let (line, column) = rest[..end].split_once(':')?;
        Some((line.parse().ok()?, column.parse().ok()?))
    });
    let message =
        rendered.lines().find_map(|l| l.trim_start().strip_prefix("= ")).map_or_else(|| clean(rendered), str::to_owned);
    let (line, column) = position.unwrap_or((1, 1));
    TemplateError::Syntax { message, line, column }
}

/// Liquid's messages start with `liquid: ` and end with a newline; keep the words only.
fn clean(message: &str) -> String {
    message.trim().trim_start_matches("liquid: ").replace('\n', " ").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_with_data_and_defaults() {
        let t = Template::compile("Hi {{ contact.first_name | default: 'there' }}").unwrap();
        assert_eq!(t.render(&json!({"contact": {"first_name": "Ada"}})).unwrap(), "Hi Ada");
        assert_eq!(t.render(&json!({"contact": {}})).unwrap(), "Hi there");
    }

    #[test]
    fn a_missing_variable_is_an_error_not_a_blank() {
        let t = Template::compile("Hi {{ contact.first_name }}").unwrap();
        assert!(matches!(t.render(&json!({"contact": {}})), Err(TemplateError::Render(_))));
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(Template::compile("Hi {{ contact.first_name "), Err(TemplateError::Syntax { line: 1, .. })));
        assert!(matches!(Template::compile("{% if x %}no end"), Err(TemplateError::Syntax { .. })));
    }
}
