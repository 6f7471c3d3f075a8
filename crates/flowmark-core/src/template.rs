//! Message templates: Liquid, parsed once at validation, rendered by the runtime and the simulator.
//!
//! Templates see only the data they are given (no file system, no includes): the parser is
//! built with Liquid's standard tags and filters and nothing else. A variable that does not
//! exist is an error, never a silent blank; `| default: '…'` is how a template says otherwise.
//!
//! Rendering runs under a budget (`budget`): loops, ranges, the values filters build and the
//! text written are bounded, so no template and no data can exhaust memory or loop for long.
//!
//! Invariant: a `Template` only exists for source that parsed.

mod budget;

use std::fmt;
use std::sync::{Arc, OnceLock};

use liquid_core::model::{KString, Object as LiquidObject, Value as LiquidValue};
use liquid_core::runtime::{Renderable, RuntimeBuilder};
use serde_json::Value;

use self::budget::Bounded;
pub use self::budget::Exceeded;

use crate::expr::Scope;
use crate::guard::guarded;
use crate::limits::{TEMPLATE_LENGTH_MAX, TEMPLATE_NESTING_MAX, TEMPLATE_OUTPUT_BYTES_MAX};

#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    /// `None` when the source has no Liquid markup: rendering is then a copy.
    compiled: Option<Arc<liquid_core::Template>>,
    /// Variables written as `{{ path | default: … }}`: when missing they render the default.
    /// Liquid itself is strict about every missing variable; this keeps it strict only where
    /// the template gave no default.
    defaulted: Arc<[String]>,
    /// Every name the template's tags mention: a superset of the variables it reads, so
    /// rendering converts only those roots of the scope.
    names: Arc<[String]>,
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
    #[error("the template is over its rendering budget: {0}")]
    OverBudget(Exceeded),
}

/// Liquid's standard library, bounded (`budget::language`), built once.
fn language() -> &'static liquid_core::Language {
    static LANGUAGE: OnceLock<liquid_core::Language> = OnceLock::new();
    LANGUAGE.get_or_init(budget::language)
}

fn parse(source: &str) -> liquid_core::Result<liquid_core::Template> {
    liquid_core::parser::parse(source, language()).map(liquid_core::Template::new)
}

impl Template {
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        if source.len() > TEMPLATE_LENGTH_MAX {
            return Err(TemplateError::TooLong { length: source.len() });
        }
        let compiled = if source.contains("{{") || source.contains("{%") {
            // Liquid's parser panics on an integer literal past 64 bits (found by fuzzing):
            // refuse it first, with where it is.
            if let Some(offset) = oversized_number(source) {
                let (line, column) = position(source, offset);
                let message = "this number does not fit in 64 bits".to_owned();
                return Err(TemplateError::Syntax { message, line, column });
            }
            if let Some(offset) = budget::too_deep(source) {
                let (line, column) = position(source, offset);
                let message = format!("blocks nest more than {TEMPLATE_NESTING_MAX} deep here");
                return Err(TemplateError::Syntax { message, line, column });
            }
            let template = guarded(|| parse(source))
                .ok_or_else(|| TemplateError::Syntax {
                    message: "the Liquid parser cannot read this template".to_owned(),
                    line: 1,
                    column: 1,
                })?
                .map_err(|e| syntax_error(&e.to_string()))?;
            Some(Arc::new(template))
        } else {
            None
        };
        Ok(Template {
            source: source.into(),
            compiled,
            defaulted: defaulted_paths(source).into(),
            names: tag_names(source).into(),
        })
    }

    /// Compiles an HTML template: every `{{ … }}` output is HTML-escaped (`| escape` is added
    /// as its last filter), except one whose last filter is `raw`, which is written as it is.
    /// So a contact named `<script>` cannot inject markup, and a trusted snippet can say
    /// `{{ env.footer | raw }}`. Positions in syntax errors are those of the source.
    pub fn compile_html(source: &str) -> Result<Template, TemplateError> {
        let (checked, escaped) = html_outputs(source);
        // The check keeps every position (a `raw` filter is blanked, nothing is added), so a
        // syntax error points into the source as written.
        Template::compile(&checked)?;
        let mut template = Template::compile(&escaped)?;
        template.source = source.into();
        Ok(template)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The dotted path when the whole template is one variable and nothing else
    /// (`{{ trigger.properties.webinar_id }}`: no text around it, no filter), which a value
    /// that keeps its JSON type reads as it is.
    pub fn sole_variable(&self) -> Option<&str> {
        let inner = self.source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
        let path = inner.trim_matches(|c: char| c == '-' || c.is_whitespace());
        let valid = !path.is_empty()
            && path.split('.').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        valid.then_some(path)
    }

    /// Does the template mention this name in a tag (a root variable it may read)?
    pub fn reads(&self, root: &str) -> bool {
        self.names.iter().any(|n| n == root)
    }

    /// Renders with the variables of `scope`.
    pub fn render(&self, scope: &Scope<'_>) -> Result<String, TemplateError> {
        let Some(compiled) = &self.compiled else {
            return Ok(self.source.to_string());
        };
        let mut globals = LiquidObject::new();
        for (name, value) in scope.roots() {
            if self.reads(name) {
                globals.insert(KString::from_ref(name), json_to_liquid(value));
            }
        }
        for path in self.defaulted.iter() {
            insert_nil(&mut globals, path);
        }
        // The output is about as long as the source: Liquid's own `render` reserves 10 KB for
        // every message, which the allocator took from fresh pages each time (a tenth of the
        // journey benchmark went to the kernel zeroing them).
        let mut out = Bounded::new(self.source.len() + 64, TEMPLATE_OUTPUT_BYTES_MAX);
        let runtime = RuntimeBuilder::new().set_globals(&globals).build();
        let (rendered, exceeded) = budget::metered(|| guarded(|| compiled.render_to(&mut out, &runtime)));
        let rendered =
            rendered.ok_or_else(|| TemplateError::Render("the Liquid renderer failed on this template".to_owned()))?;
        if let Err(error) = rendered {
            if let Some(exceeded) = exceeded {
                return Err(TemplateError::OverBudget(exceeded));
            }
            if out.overflowed {
                return Err(TemplateError::OverBudget(Exceeded::Output));
            }
            return Err(TemplateError::Render(clean(&error.to_string())));
        }
        String::from_utf8(out.bytes)
            .map_err(|_| TemplateError::Render("the template rendered invalid UTF-8".to_owned()))
    }

    /// Renders with the top-level keys of a JSON object as the variables.
    pub fn render_json(&self, data: &Value) -> Result<String, TemplateError> {
        let mut scope = Scope::new();
        if let Value::Object(map) = data {
            for (name, value) in map {
                scope = scope.with(name, value);
            }
        }
        self.render(&scope)
    }
}

fn json_to_liquid(value: &Value) -> LiquidValue {
    match value {
        Value::Null => LiquidValue::Nil,
        Value::Bool(b) => LiquidValue::scalar(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LiquidValue::scalar(i),
            None => LiquidValue::scalar(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => LiquidValue::scalar(s.clone()),
        Value::Array(items) => LiquidValue::Array(items.iter().map(json_to_liquid).collect()),
        Value::Object(map) => {
            LiquidValue::Object(map.iter().map(|(k, v)| (KString::from_ref(k), json_to_liquid(v))).collect())
        }
    }
}

/// Sets `path` to nil where it is missing, creating objects on the way (a nil parent becomes
/// an empty object); leaves a path alone where another value stands in the way.
fn insert_nil(globals: &mut LiquidObject, path: &str) {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else { return };
    let rest: Vec<&str> = parts.collect();
    let mut current = globals.entry(KString::from_ref(first)).or_insert(LiquidValue::Nil);
    for part in rest {
        if matches!(current, LiquidValue::Nil) {
            *current = LiquidValue::Object(LiquidObject::new());
        }
        let LiquidValue::Object(map) = current else { return };
        current = map.entry(KString::from_ref(part)).or_insert(LiquidValue::Nil);
    }
}

/// A variable an output (`{{ … }}`) prints, as validation checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputVariable {
    /// The dotted path, up to the first `[…]` index.
    pub path: Vec<String>,
    /// Byte offset of the path in the source.
    pub offset: usize,
    /// Is there a `default` filter in the output's chain?
    pub defaulted: bool,
}

/// The variables a template's outputs print, and the names its tags bind (`assign`,
/// `capture`, `for`, `tablerow`, and `forloop`). Outputs whose value is a literal are left
/// out; variables read only inside `{% … %}` tags are not reported (they are checked when the
/// template renders).
pub fn output_variables(source: &str) -> (Vec<OutputVariable>, Vec<String>) {
    let mut locals = vec!["forloop".to_owned(), "tablerowloop".to_owned()];
    for part in source.split("{%").skip(1) {
        let inner = part.split_once("%}").map_or(part, |(inner, _)| inner);
        let mut words = inner.trim_start_matches('-').split_whitespace();
        if let (Some("assign" | "capture" | "for" | "tablerow"), Some(name)) = (words.next(), words.next()) {
            let name: String =
                name.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
            if !name.is_empty() {
                locals.push(name);
            }
        }
    }
    let mut variables = Vec::new();
    let mut from = 0;
    while let Some(open) = source[from..].find("{{") {
        let body = from + open + 2;
        let Some(close) = closing_braces(&source[body..]) else { break };
        let inner = &source[body..body + close];
        from = body + close + 2;
        let leading = inner.len() - inner.trim_start_matches(['-', ' ', '\t', '\n', '\r']).len();
        let expression = &inner[leading..];
        let entry_len = split_unquoted(expression, '|').next().map_or(0, str::len);
        let entry = expression[..entry_len].trim_end();
        let defaulted = split_unquoted(expression, '|')
            .skip(1)
            .any(|filter| filter.trim().split([':', ' ']).next() == Some("default"));
        let mut path = Vec::new();
        for segment in entry.split('[').next().unwrap_or_default().split('.') {
            let valid = segment.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '?');
            if !valid {
                path.clear();
                break;
            }
            path.push(segment.to_owned());
        }
        let literal =
            matches!(path.first().map(String::as_str), Some("true" | "false" | "nil" | "null" | "empty" | "blank"));
        if !path.is_empty() && !literal {
            variables.push(OutputVariable { path, offset: body + leading, defaulted });
        }
    }
    (variables, locals)
}

/// Where a run of digits inside `{{ … }}` or `{% … %}` (outside quotes, not part of a name)
/// is a number too large for a 64-bit integer.
fn oversized_number(source: &str) -> Option<usize> {
    for (open, close) in [("{{", "}}"), ("{%", "%}")] {
        let mut from = 0;
        while let Some(start) = source[from..].find(open) {
            let body = from + start + 2;
            let end = source[body..].find(close).map_or(source.len(), |e| body + e);
            let inner = &source[body..end];
            let mut quote: Option<char> = None;
            let mut run_start: Option<usize> = None;
            // Inside a name (`contact2`, `v999`): its digits are not a number.
            let mut in_name = false;
            for (i, c) in inner.char_indices().chain(std::iter::once((inner.len(), ' '))) {
                if let Some(q) = quote {
                    if c == q {
                        quote = None;
                    }
                    continue;
                }
                if c.is_ascii_digit() && !in_name {
                    run_start.get_or_insert(i);
                    continue;
                }
                if let Some(s) = run_start.take()
                    && inner[s..i].trim_start_matches('0').len() > 18
                    && inner[s..i].parse::<i64>().is_err()
                {
                    return Some(body + s);
                }
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    in_name = false;
                    continue;
                }
                in_name = c.is_ascii_alphabetic() || c == '_' || (in_name && (c.is_ascii_digit() || c == '-'));
            }
            from = end;
        }
    }
    None
}

/// The 1-based line and column of a byte offset.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// Splits at `separator` outside quoted strings.
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == separator => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            None => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

/// Every identifier inside `{{ … }}` and `{% … %}`, outside quotes.
fn tag_names(source: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (open, close) in [("{{", "}}"), ("{%", "%}")] {
        for part in source.split(open).skip(1) {
            let inner = part.split_once(close).map_or(part, |(inner, _)| inner);
            let mut quote: Option<char> = None;
            let mut word = String::new();
            for c in inner.chars().chain(std::iter::once(' ')) {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == '"' || c == '\'' => quote = Some(c),
                    None if c.is_ascii_alphanumeric() || c == '_' || c == '-' => word.push(c),
                    None => {
                        if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && !names.contains(&word) {
                            names.push(word.clone());
                        }
                        word.clear();
                    }
                }
            }
        }
    }
    names
}

/// Rewrites the outputs of an HTML template: the source with each trailing `| raw` blanked
/// (same length), and the same with `| escape` added to every other output.
fn html_outputs(source: &str) -> (String, String) {
    let mut checked = String::with_capacity(source.len());
    let mut escaped = String::with_capacity(source.len() + 16);
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        // `{% raw %}…{% endraw %}` is literal text: copy it untouched.
        if let Some(raw) = rest[..open].find("{% raw %}") {
            let end = rest[raw..].find("{% endraw %}").map_or(rest.len(), |e| raw + e + "{% endraw %}".len());
            checked.push_str(&rest[..end]);
            escaped.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let body_start = open + 2;
        let Some(close) = closing_braces(&rest[body_start..]) else { break };
        let close = body_start + close;
        let mut inner_end = close;
        if rest[..close].ends_with('-') {
            inner_end -= 1; // `-}}`
        }
        let inner = &rest[body_start..inner_end];
        let trimmed = inner.trim_end();
        let raw = trimmed.rsplit_once('|').is_some_and(|(_, last)| last.trim() == "raw");
        checked.push_str(&rest[..body_start]);
        escaped.push_str(&rest[..body_start]);
        if raw {
            let bar = trimmed.rfind('|').expect("a raw filter follows a bar");
            let blanked = format!("{}{}", &inner[..bar], " ".repeat(inner.len() - bar));
            checked.push_str(&blanked);
            escaped.push_str(&blanked);
        } else {
            checked.push_str(inner);
            escaped.push_str(trimmed);
            escaped.push_str(" | escape ");
        }
        checked.push_str(&rest[inner_end..close + 2]);
        escaped.push_str(&rest[inner_end..close + 2]);
        rest = &rest[close + 2..];
    }
    checked.push_str(rest);
    escaped.push_str(rest);
    (checked, escaped)
}

/// Where the `}}` that closes an output starts, skipping quoted strings.
fn closing_braces(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '}' && chars.peek().is_some_and(|(_, n)| *n == '}') => return Some(i),
            None => {}
        }
    }
    None
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
    fn html_templates_escape_every_output_unless_it_says_raw() {
        let data = serde_json::json!({
            "contact": { "first_name": "<script>alert('x')</script>", "note": "Tom & Jerry" },
            "env": { "footer": "<a href='https://example.com'>Us</a>" }
        });
        let template = Template::compile_html(
            "<p>Hi {{ contact.first_name }}, {{ contact.note | upcase }}{{ contact.missing | default: '<b>you</b>' }}</p>{{- env.footer | raw -}}",
        )
        .unwrap();
        assert_eq!(
            template.render_json(&data).unwrap(),
            "<p>Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;, TOM &amp; JERRY&lt;b&gt;you&lt;/b&gt;</p><a href='https://example.com'>Us</a>"
        );
        assert!(template.source().contains("| raw"), "the source is kept as written");
        let literal = Template::compile_html("{% raw %}{{ not a tag }}{% endraw %} {{ \"}}\" }}").unwrap();
        assert_eq!(literal.render_json(&data).unwrap(), "{{ not a tag }} }}");
        for bad in ["<p>\n  {{ contact.first_name | nope }}</p>", "<p>\n {% if %}</p>", "<p>\n  {{ a | }}"] {
            let html = Template::compile_html(bad).unwrap_err();
            assert_eq!(html, Template::compile(bad).unwrap_err(), "the same error, at the source's position");
        }
    }

    #[test]
    fn renders_with_data_and_defaults() {
        let t = Template::compile("Hi {{ contact.first_name | default: 'there' }}").unwrap();
        assert_eq!(t.render_json(&json!({"contact": {"first_name": "Ada"}})).unwrap(), "Hi Ada");
        assert_eq!(t.render_json(&json!({"contact": {}})).unwrap(), "Hi there");
    }

    #[test]
    fn output_variables_are_found_with_their_defaults_and_locals() {
        let source = "Hi {{ contact.first_name | default: 'there' }}, {{- steps.thanks.effect_id }} \
                      {% for p in contact.products %}{{ p.name | upcase }}{% endfor %}{{ 'lit' | upcase }}\
                      {% assign n = 3 %}{{ n }}{{ event.items[0].sku }}{{ \"a|b\" }}";
        let (variables, locals) = output_variables(source);
        let paths: Vec<(String, bool)> = variables.iter().map(|v| (v.path.join("."), v.defaulted)).collect();
        assert_eq!(
            paths,
            [
                ("contact.first_name".to_owned(), true),
                ("steps.thanks.effect_id".to_owned(), false),
                ("p.name".to_owned(), false),
                ("n".to_owned(), false),
                ("event.items".to_owned(), false),
            ]
        );
        assert_eq!(&source[variables[1].offset..variables[1].offset + 5], "steps");
        assert!(locals.contains(&"p".to_owned()) && locals.contains(&"n".to_owned()));
    }

    #[test]
    fn a_missing_variable_is_an_error_not_a_blank() {
        let t = Template::compile("Hi {{ contact.first_name }}").unwrap();
        assert!(matches!(t.render_json(&json!({"contact": {}})), Err(TemplateError::Render(_))));
    }

    #[test]
    fn numbers_past_64_bits_are_refused_not_a_panic() {
        // Found by the `template` fuzz target: Liquid's parser panics on these.
        let crash = include_str!("../../../fuzz/regressions/template-integer-overflow.liquid");
        assert!(matches!(Template::compile(crash), Err(TemplateError::Syntax { .. })));
        let error = Template::compile("ok\n{% if 77777777777777777777777777contact.vip %}x{% endif %}").unwrap_err();
        assert_eq!(
            error,
            TemplateError::Syntax { message: "this number does not fit in 64 bits".into(), line: 2, column: 7 }
        );
        assert!(Template::compile("{{ 9223372036854775807 | plus: 1 }}").is_ok(), "i64::MAX fits");
        assert!(Template::compile("{{ 99999999999999999999 }}").is_err());
        assert!(
            Template::compile("{{ 'x99999999999999999999' }}{{ v99999999999999999999 }}").is_ok(),
            "quoted or a name"
        );
    }

    #[test]
    fn a_panic_inside_liquid_is_an_error() {
        // Found by the `template` fuzz target: liquid-core asserts "`LiquidParser::parse`
        // should fail in InvalidLiquidTokens" on this input.
        let crash = include_bytes!("../../../fuzz/regressions/template-invalid-tokens.liquid");
        let crash = String::from_utf8_lossy(crash);
        assert!(guarded(|| parse(&crash)).is_none(), "the input does make Liquid panic");
        assert!(matches!(Template::compile(&crash), Err(TemplateError::Syntax { .. })));
        assert!(Template::compile("still {{ 'works' }}").is_ok(), "the next template is unaffected");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(Template::compile("Hi {{ contact.first_name "), Err(TemplateError::Syntax { line: 1, .. })));
        assert!(matches!(Template::compile("{% if x %}no end"), Err(TemplateError::Syntax { .. })));
    }
}
