//! Diagnostics: what validation says about a definition, with where, what was expected, and a hint.
//!
//! A `Diagnostic` points into a `Source` with a byte span; it renders through `miette` (the CLI)
//! and serializes to JSON with 1-based line and column (tools and editors).
//!
//! Invariant: a span always lies inside its source text and on UTF-8 boundaries.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A definition file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: Arc<str>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Source {
        Source { name: name.into(), text: text.into() }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

/// A byte range in a `Source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

impl Span {
    pub fn new(offset: usize, len: usize) -> Span {
        Span { offset, len }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a definition.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine name, e.g. `flowmark::unknown-key`.
    pub code: &'static str,
    pub message: String,
    pub span: Span,
    /// Short text under the snippet: what was found here.
    pub label: String,
    /// What the language expected instead.
    pub expected: Option<String>,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span,
            label: String::new(),
            expected: None,
            help: None,
        }
    }

    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, span, message) }
    }

    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    #[must_use]
    pub fn expected(mut self, expected: impl Into<String>) -> Diagnostic {
        self.expected = Some(expected.into());
        self
    }

    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// This diagnostic bound to its source, ready for `miette` to render.
    pub fn report(&self, source: &Source) -> Report {
        Report { diagnostic: self.clone(), source: source.clone() }
    }

    /// The JSON shape `flowmark validate --json` prints.
    pub fn to_json(&self, source: &Source) -> DiagnosticJson {
        let (line, column) = source.line_col(self.span.offset);
        let (end_line, end_column) = source.line_col(self.span.offset + self.span.len);
        DiagnosticJson {
            file: source.name.clone(),
            line,
            column,
            end_line,
            end_column,
            severity: self.severity,
            code: self.code,
            message: self.message.clone(),
            label: self.label.clone(),
            expected: self.expected.clone(),
            help: self.help.clone(),
            snippet: snippet(source, self.span),
        }
    }
}

fn snippet(source: &Source, span: Span) -> String {
    let start = source.text[..span.offset.min(source.text.len())].rfind('\n').map_or(0, |i| i + 1);
    let end = source.text[start..].find('\n').map_or(source.text.len(), |i| start + i);
    source.text[start..end].to_owned()
}

#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticJson {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    pub snippet: String,
}

/// A diagnostic with its source, for `miette`'s renderers.
#[derive(Debug)]
pub struct Report {
    diagnostic: Diagnostic,
    source: Source,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, column) = self.source.line_col(self.diagnostic.span.offset);
        write!(f, "{}:{line}:{column}: {}", self.source.name, self.diagnostic.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let d = &self.diagnostic;
        let text = match (&d.expected, &d.help) {
            (None, None) => return None,
            (Some(expected), None) => format!("expected {expected}"),
            (None, Some(help)) => help.clone(),
            (Some(expected), Some(help)) => format!("expected {expected}\n{help}"),
        };
        Some(Box::new(text))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let d = &self.diagnostic;
        let label = (!d.label.is_empty()).then(|| d.label.clone());
        Some(Box::new(std::iter::once(miette::LabeledSpan::new(label, d.span.offset, d.span.len))))
    }
}

impl miette::SourceCode for Report {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = self.source.text.as_ref().read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.source.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// Everything found in one definition.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// In the order they appear in the file, so a reader walks it top to bottom.
    pub fn sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by_key(|d| (d.span.offset, d.code));
        self.items
    }
}

/// The closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= 2.max(c.len() / 4) && *distance < c.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}
