//! Template budgets: what one rendering may cost, enforced while Liquid runs.
//!
//! A template is code a workflow author writes and contact data feeds, so it is untrusted
//! input that runs. Liquid's own `for` allocates a whole range before the first pass
//! (`(1..30000000)` is 1.7 GB), and `{% assign s = s | append: s %}` in a loop doubles a
//! string until the process is out of memory: an abort, not an error, and the effect that
//! caused it is rendered again after every restart. The language built here is Liquid's
//! standard library with every piece that can grow without bound replaced or metered:
//!
//! - `for` and `tablerow` refuse a range of more than `TEMPLATE_RANGE_COUNT_MAX` items (when
//!   the template is compiled if both ends are literals, so validation shows it; when
//!   rendering otherwise), and count every pass of a loop body against
//!   `TEMPLATE_ITERATIONS_MAX`;
//! - every filter is metered: its result may weigh at most `TEMPLATE_VALUE_BYTES_MAX`, and what
//!   it reads and writes counts against `TEMPLATE_WORK_BYTES_MAX`, as does every value an
//!   `assign` copies and every text a `capture` keeps; `join` and `replace`, whose result can
//!   be far larger than what they read, check its size before they build it;
//! - `capture` keeps at most `TEMPLATE_VALUE_BYTES_MAX`, and `Template::render` writes at most
//!   `TEMPLATE_OUTPUT_BYTES_MAX` (`Bounded`).
//!
//! The work budget stands in for a time limit: the core has no clock, and bytes touched bound
//! time on any machine, the same way in `simulate`, replay and `serve`.
//!
//! Invariant: what a rendering allocates is bounded by the data it was given plus a small
//! multiple of these limits, whatever the template; crossing one is an `Exceeded` naming the
//! limit (`metered` gives it back), never an abort.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};

use liquid_core::error::ResultLiquidExt;
use liquid_core::model::{KString, KStringRef, Value, ValueCow, ValueView};
use liquid_core::parser::{BlockElement, FilterArguments, FilterChain, TryMatchToken};
use liquid_core::runtime::{Interrupt, InterruptRegister, StackFrame};
use liquid_core::{
    BlockReflection, Display_filter, Error, Expression, Filter, FilterParameters, FilterReflection,
    FromFilterParameters, Language, ObjectView, ParseBlock, ParseFilter, ParseTag, Renderable, Result, Runtime,
    TagBlock, TagReflection, TagTokenIter, Template,
};
use liquid_lib::stdlib;

use crate::limits::{
    TEMPLATE_ITERATIONS_MAX, TEMPLATE_NESTING_MAX, TEMPLATE_OUTPUT_BYTES_MAX, TEMPLATE_RANGE_COUNT_MAX,
    TEMPLATE_VALUE_BYTES_MAX, TEMPLATE_WORK_BYTES_MAX,
};

/// Which limit a rendering crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("a loop over {count} items; the limit is {TEMPLATE_RANGE_COUNT_MAX}")]
    Range { count: i128 },
    #[error("its loops ran more than {TEMPLATE_ITERATIONS_MAX} times")]
    Iterations,
    #[error("it built a value of more than {TEMPLATE_VALUE_BYTES_MAX} bytes")]
    Value,
    #[error("its filters and assignments went through more than {TEMPLATE_WORK_BYTES_MAX} bytes")]
    Work,
    #[error("its text is longer than {TEMPLATE_OUTPUT_BYTES_MAX} bytes")]
    Output,
}

/// What one rendering has spent so far, and the first limit it crossed.
#[derive(Debug, Default, Clone, Copy)]
struct Budget {
    iterations: u64,
    work: u64,
    exceeded: Option<Exceeded>,
}

thread_local! {
    /// The budget of the rendering running on this thread: a rendering runs on one thread from
    /// start to end, and `metered` gives each its own. (A Liquid register would do the same at
    /// the price of a map lookup through every stack frame per filter call: a tenth of the
    /// time of rendering a message.)
    static BUDGET: Cell<Budget> = const { Cell::new(Budget { iterations: 0, work: 0, exceeded: None }) };
}

/// Runs one rendering with a fresh budget; gives its result and the limit it crossed, if any.
pub(super) fn metered<T>(render: impl FnOnce() -> T) -> (T, Option<Exceeded>) {
    let outer = BUDGET.replace(Budget::default());
    let result = render();
    let spent = BUDGET.replace(outer);
    (result, spent.exceeded)
}

/// Records that `exceeded` happened (the first crossing is the one reported) and gives the
/// error that stops the rendering.
fn over(exceeded: Exceeded) -> Error {
    let message = exceeded.to_string();
    let mut budget = BUDGET.get();
    budget.exceeded.get_or_insert(exceeded);
    BUDGET.set(budget);
    Error::with_msg(message)
}

fn spend_work(bytes: usize) -> Result<()> {
    let mut budget = BUDGET.get();
    budget.work = budget.work.saturating_add(bytes as u64);
    BUDGET.set(budget);
    if budget.work <= TEMPLATE_WORK_BYTES_MAX as u64 { Ok(()) } else { Err(over(Exceeded::Work)) }
}

fn spend_iteration() -> Result<()> {
    let mut budget = BUDGET.get();
    budget.iterations += 1;
    BUDGET.set(budget);
    if budget.iterations <= TEMPLATE_ITERATIONS_MAX as u64 { Ok(()) } else { Err(over(Exceeded::Iterations)) }
}

/// About how many bytes `value` holds: its text, plus 8 per array item and object entry. Stops
/// counting once past `cap`, so weighing a huge value costs no more than the cap.
pub(super) fn weight(value: &dyn ValueView, cap: usize) -> usize {
    if let Some(scalar) = value.as_scalar() {
        // A number, a boolean or a date is small; only text is worth measuring (and to
        // measure a number would be to format it).
        return if value.type_name() == "string" { scalar.to_kstr().len() } else { 8 };
    }
    let mut total = 0usize;
    if let Some(array) = value.as_array() {
        for item in array.values() {
            total = total.saturating_add(8 + weight(item, cap));
            if total > cap {
                break;
            }
        }
    } else if let Some(object) = value.as_object() {
        for (key, item) in object.iter() {
            total = total.saturating_add(8 + key.len() + weight(item, cap));
            if total > cap {
                break;
            }
        }
    }
    total
}

/// A writer that keeps at most `max` bytes and refuses the write that would pass it.
pub(super) struct Bounded {
    pub(super) bytes: Vec<u8>,
    max: usize,
    pub(super) overflowed: bool,
}

impl Bounded {
    pub(super) fn new(capacity: usize, max: usize) -> Bounded {
        Bounded { bytes: Vec::with_capacity(capacity.min(max)), max, overflowed: false }
    }
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + data.len() > self.max {
            self.overflowed = true;
            return Err(io::Error::other("over the template's output budget"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Liquid's standard tags, blocks and filters, with the bounded ones in place of those that
/// can grow without limit. `include` and `render` stay: with no partials they fail as they
/// always did.
pub(super) fn language() -> Language {
    let mut language = Language::empty();
    for tag in [
        Box::new(BoundedAssign) as Box<dyn ParseTag>,
        stdlib::BreakTag.into(),
        stdlib::ContinueTag.into(),
        stdlib::CycleTag.into(),
        stdlib::IncludeTag.into(),
        stdlib::IncrementTag.into(),
        stdlib::DecrementTag.into(),
        stdlib::RenderTag.into(),
    ] {
        language.tags.register(tag.reflection().tag().to_owned(), tag);
    }
    for block in [
        stdlib::RawBlock.into(),
        stdlib::IfBlock.into(),
        stdlib::UnlessBlock.into(),
        stdlib::IfChangedBlock.into(),
        Box::new(BoundedFor) as Box<dyn ParseBlock>,
        Box::new(BoundedTableRow),
        stdlib::CommentBlock.into(),
        Box::new(BoundedCapture),
        stdlib::CaseBlock.into(),
    ] {
        language.blocks.register(block.reflection().start_tag().to_owned(), block);
    }
    macro_rules! metered {
        ($($filter:expr),* $(,)?) => {
            [$(Box::new(Metered($filter)) as Box<dyn ParseFilter>),*]
        };
    }
    let filters = metered![
        stdlib::Abs,
        stdlib::Append,
        stdlib::AtLeast,
        stdlib::AtMost,
        stdlib::Capitalize,
        stdlib::Ceil,
        stdlib::Compact,
        stdlib::Concat,
        stdlib::Date,
        stdlib::Default,
        stdlib::DividedBy,
        stdlib::Downcase,
        stdlib::Escape,
        stdlib::EscapeOnce,
        stdlib::First,
        stdlib::Floor,
        Join,
        stdlib::Last,
        stdlib::Lstrip,
        stdlib::Map,
        stdlib::Minus,
        stdlib::Modulo,
        stdlib::NewlineToBr,
        stdlib::Plus,
        stdlib::Prepend,
        stdlib::Remove,
        stdlib::RemoveFirst,
        Replace,
        stdlib::ReplaceFirst,
        stdlib::Reverse,
        stdlib::Round,
        stdlib::Rstrip,
        stdlib::Size,
        stdlib::Slice,
        stdlib::Sort,
        stdlib::SortNatural,
        stdlib::Split,
        stdlib::Strip,
        stdlib::StripHtml,
        stdlib::StripNewlines,
        stdlib::Times,
        stdlib::Truncate,
        stdlib::TruncateWords,
        stdlib::Uniq,
        stdlib::Upcase,
        stdlib::UrlDecode,
        stdlib::UrlEncode,
        stdlib::Where,
    ];
    for filter in filters {
        language.filters.register(filter.reflection().name().to_owned(), filter);
    }
    language
}

/// Where a block opens deeper than `TEMPLATE_NESTING_MAX` (a byte offset), if one does.
/// Liquid's parser recurses once per nested block, so ten thousand nested `if`s overflow its
/// stack: an abort, at validation. The text of `raw` and `comment` blocks is skipped, as
/// Liquid does; a stray `end…` never makes the count negative.
pub(super) fn too_deep(source: &str) -> Option<usize> {
    const OPENERS: [&str; 7] = ["if", "unless", "case", "for", "tablerow", "capture", "ifchanged"];
    let mut depth = 0usize;
    let mut from = 0;
    while let Some(open) = source[from..].find("{%") {
        let start = from + open;
        let body = start + 2;
        let end = source[body..].find("%}").map_or(source.len(), |e| body + e);
        let name = source[body..end].trim_start_matches('-').split_whitespace().next().unwrap_or_default();
        from = (end + 2).min(source.len());
        if name == "raw" || name == "comment" {
            let close = if name == "raw" { "endraw" } else { "endcomment" };
            // The block's text runs to the first tag that closes it.
            let mut search = from;
            while let Some(next) = source[search..].find("{%") {
                let tag = search + next + 2;
                let tag_end = source[tag..].find("%}").map_or(source.len(), |e| tag + e);
                search = (tag_end + 2).min(source.len());
                if source[tag..tag_end].trim_start_matches('-').split_whitespace().next() == Some(close) {
                    break;
                }
            }
            from = search;
        } else if OPENERS.contains(&name) {
            depth += 1;
            if depth > TEMPLATE_NESTING_MAX {
                return Some(start);
            }
        } else if name.starts_with("end") {
            depth = depth.saturating_sub(1);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Filters

/// A filter whose input and result count against the work budget and whose result may not
/// pass the value limit.
#[derive(Clone)]
struct Metered<F>(F);

impl<F: ParseFilter + Clone + 'static> ParseFilter for Metered<F> {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>> {
        Ok(Box::new(MeteredFilter(self.0.parse(arguments)?)))
    }

    fn reflection(&self) -> &dyn FilterReflection {
        self.0.reflection()
    }
}

#[derive(Debug)]
struct MeteredFilter(Box<dyn Filter>);

impl fmt::Display for MeteredFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Filter for MeteredFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        // Charged once, after: what one call does is bounded by its input (a value within the
        // limit, or the data given), except for `join` and `replace`, which check first.
        let read = weight(input, TEMPLATE_WORK_BYTES_MAX);
        let value = self.0.evaluate(input, runtime)?;
        let written = weight(&value, TEMPLATE_VALUE_BYTES_MAX);
        if written > TEMPLATE_VALUE_BYTES_MAX {
            return Err(over(Exceeded::Value));
        }
        spend_work(read + written)?;
        Ok(value)
    }
}

#[derive(Debug, FilterParameters)]
struct JoinArgs {
    #[parameter(description = "The separator between each element in the string.", arg_type = "str")]
    separator: Option<Expression>,
}

/// `join`, which checks the length of what it would build first: a long separator between
/// many items is far larger than either.
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "join",
    description = "Combines the items in an array into a single string using the argument as a separator.",
    parameters(JoinArgs),
    parsed(JoinFilter)
)]
struct Join;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "join"]
struct JoinFilter {
    #[parameters]
    args: JoinArgs,
}

impl Filter for JoinFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let args = self.args.evaluate(runtime)?;
        let separator = args.separator.unwrap_or_else(|| " ".into());
        let items = input
            .as_array()
            .ok_or_else(|| Error::with_msg("Invalid input").context("cause", "Array of strings expected"))?;
        let mut texts = Vec::new();
        let mut length = 0usize;
        for (i, item) in items.values().enumerate() {
            let text = item.to_kstr();
            length = length.saturating_add(text.len()).saturating_add(if i > 0 { separator.len() } else { 0 });
            if length > TEMPLATE_VALUE_BYTES_MAX {
                return Err(over(Exceeded::Value));
            }
            texts.push(text);
        }
        let mut joined = String::with_capacity(length);
        for (i, text) in texts.iter().enumerate() {
            if i > 0 {
                joined.push_str(separator.as_str());
            }
            joined.push_str(text.as_str());
        }
        Ok(Value::scalar(joined))
    }
}

#[derive(Debug, FilterParameters)]
struct ReplaceArgs {
    #[parameter(description = "The text to search.", arg_type = "str")]
    search: Expression,
    #[parameter(description = "The text to replace search results with.", arg_type = "str")]
    replace: Option<Expression>,
}

/// `replace`, which checks the length of what it would build first: a long replacement for
/// a frequent search multiplies the input.
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "replace",
    description = "Replaces the occurrences of the `search` with `replace`.",
    parameters(ReplaceArgs),
    parsed(ReplaceFilter)
)]
struct Replace;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "replace"]
struct ReplaceFilter {
    #[parameters]
    args: ReplaceArgs,
}

impl Filter for ReplaceFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let args = self.args.evaluate(runtime)?;
        let input = input.to_kstr();
        let replace = args.replace.unwrap_or_else(|| "".into());
        let search = args.search.as_str();
        if replace.len() > search.len() {
            let count = input.matches(search).count();
            let length = input.len().saturating_add(count.saturating_mul(replace.len() - search.len()));
            if length > TEMPLATE_VALUE_BYTES_MAX {
                return Err(over(Exceeded::Value));
            }
        }
        Ok(Value::scalar(input.replace(search, replace.as_str())))
    }
}

// ---------------------------------------------------------------------------------------------
// Tags and blocks

/// `assign`, which counts the value it stores (a copy) against the work budget.
#[derive(Clone, Copy)]
struct BoundedAssign;

impl TagReflection for BoundedAssign {
    fn tag(&self) -> &'static str {
        "assign"
    }

    fn description(&self) -> &'static str {
        "Stores a value in a variable."
    }
}

impl ParseTag for BoundedAssign {
    fn parse(&self, mut arguments: TagTokenIter<'_>, language: &Language) -> Result<Box<dyn Renderable>> {
        let name = KString::from_ref(arguments.expect_next("Identifier expected.")?.expect_identifier().into_result()?);
        arguments
            .expect_next("Assignment operator \"=\" expected.")?
            .expect_str("=")
            .into_result_custom_msg("Assignment operator \"=\" expected.")?;
        let source = arguments.expect_next("FilterChain expected.")?.expect_filter_chain(language).into_result()?;
        arguments.expect_nothing()?;
        Ok(Box::new(Assign { name, source }))
    }

    fn reflection(&self) -> &dyn TagReflection {
        self
    }
}

#[derive(Debug)]
struct Assign {
    name: KString,
    source: FilterChain,
}

impl Renderable for Assign {
    fn render_to(&self, _writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let value = self
            .source
            .evaluate(runtime)
            .trace_with(|| format!("{{% assign {} = {} %}}", self.name, self.source).into())?;
        spend_work(weight(value.as_view(), TEMPLATE_WORK_BYTES_MAX))?;
        runtime.set_global(self.name.clone(), value.into_owned());
        Ok(())
    }
}

/// `capture`, which keeps at most `TEMPLATE_VALUE_BYTES_MAX` and counts what it keeps against
/// the work budget.
#[derive(Clone, Copy)]
struct BoundedCapture;

impl BlockReflection for BoundedCapture {
    fn start_tag(&self) -> &str {
        "capture"
    }

    fn end_tag(&self) -> &str {
        "endcapture"
    }

    fn description(&self) -> &str {
        "Stores the text of its body in a variable."
    }
}

impl ParseBlock for BoundedCapture {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        language: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let name = KString::from_ref(arguments.expect_next("Identifier expected")?.expect_identifier().into_result()?);
        arguments.expect_nothing()?;
        let body = Template::new(tokens.parse_all(language).trace_with(|| format!("{{% capture {name} %}}").into())?);
        tokens.assert_empty();
        Ok(Box::new(Capture { name, body }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct Capture {
    name: KString,
    body: Template,
}

impl Renderable for Capture {
    fn render_to(&self, _writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let mut captured = Bounded::new(256, TEMPLATE_VALUE_BYTES_MAX);
        if let Err(error) = self.body.render_to(&mut captured, runtime) {
            if captured.overflowed {
                return Err(over(Exceeded::Value));
            }
            return Err(error.trace(format!("{{% capture {} %}}", self.name)));
        }
        spend_work(captured.bytes.len())?;
        let text = String::from_utf8(captured.bytes).map_err(|_| Error::with_msg("the capture is not UTF-8"))?;
        runtime.set_global(self.name.clone(), Value::scalar(text));
        Ok(())
    }
}

/// What `for` and `tablerow` have in common: a variable, what it goes over, and `limit:` and
/// `offset:`.
#[derive(Debug)]
struct Loop {
    variable: KString,
    over: Over,
    limit: Option<Expression>,
    offset: Option<Expression>,
}

/// What a loop goes over: an array (or an object's entries) from the data, or a range.
#[derive(Debug)]
enum Over {
    Items(Expression),
    Range(Expression, Expression),
}

impl Loop {
    /// Reads `name in (range or value)`; a range whose ends are both literals is checked
    /// here, unless a `limit:` follows (the caller says).
    fn parse_head(arguments: &mut TagTokenIter<'_>) -> Result<(KString, Over)> {
        let variable =
            KString::from_ref(arguments.expect_next("Identifier expected.")?.expect_identifier().into_result()?);
        arguments.expect_next("\"in\" expected.")?.expect_str("in").into_result_custom_msg("\"in\" expected.")?;
        let over = match arguments.expect_next("Array or range expected.")?.expect_value() {
            TryMatchToken::Matches(items) => Over::Items(items),
            TryMatchToken::Fails(token) => match token.expect_range() {
                TryMatchToken::Matches((start, stop)) => Over::Range(start, stop),
                TryMatchToken::Fails(token) => return token.raise_error().into_err(),
            },
        };
        Ok((variable, over))
    }

    /// Reads a loop's head and its `limit:` and `offset:`; `own` takes the block's own words
    /// (`reversed`, `cols: n`) and says whether it knew the word; any other is an error saying
    /// what was `expected`. A literal range over the limit is refused here.
    fn parse(
        arguments: &mut TagTokenIter<'_>,
        expected: &str,
        mut own: impl FnMut(&str, &mut TagTokenIter<'_>) -> Result<bool>,
    ) -> Result<Loop> {
        let (variable, over) = Loop::parse_head(arguments)?;
        let mut looped = Loop { variable, over, limit: None, offset: None };
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "limit" => looped.limit = Some(attribute(arguments)?),
                "offset" => looped.offset = Some(attribute(arguments)?),
                word => {
                    if !own(word, arguments)? {
                        return token.raise_custom_error(expected).into_err();
                    }
                }
            }
        }
        arguments.expect_nothing()?;
        looped.check_literal_range(arguments)?;
        Ok(looped)
    }

    /// Refuses a literal range that is over the limit, where the tag's arguments end.
    fn check_literal_range(&self, arguments: &mut TagTokenIter<'_>) -> Result<()> {
        if self.limit.is_some() {
            return Ok(());
        }
        let Over::Range(Expression::Literal(start), Expression::Literal(stop)) = &self.over else { return Ok(()) };
        let ends = start.as_scalar().and_then(|s| s.to_integer()).zip(stop.as_scalar().and_then(|s| s.to_integer()));
        if let Some((start, stop)) = ends {
            let count = range_count(start, stop);
            if count > TEMPLATE_RANGE_COUNT_MAX as i128 {
                return Err(arguments.raise_error(&format!(
                    "this range has {count} items; a loop may go over at most {TEMPLATE_RANGE_COUNT_MAX}"
                )));
            }
        }
        Ok(())
    }

    /// What the loop goes over, evaluated: a range over the limit is refused here, before any
    /// of it is built.
    fn source<'r>(&'r self, runtime: &'r dyn Runtime) -> Result<Source<'r>> {
        let limit = whole_number(&self.limit, runtime)?;
        let offset = whole_number(&self.offset, runtime)?.unwrap_or(0);
        match &self.over {
            Over::Range(start, stop) => {
                let start = integer(start, runtime, "start")?;
                let stop = integer(stop, runtime, "end")?;
                let count = range_count(start, stop);
                let skipped = i128::from(offset).min(count);
                let taken = limit.map_or(count - skipped, |l| (count - skipped).min(i128::from(l)));
                if taken > TEMPLATE_RANGE_COUNT_MAX as i128 {
                    return Err(over(Exceeded::Range { count: taken }));
                }
                // Within i64: every item lies between `start` and `stop`.
                Ok(Source::Range { first: (i128::from(start) + skipped) as i64, count: taken as usize })
            }
            Over::Items(expression) => Ok(Source::Value { value: expression.evaluate(runtime)?, limit, offset }),
        }
    }

    /// The items of `source`, after `offset:` and `limit:` (and reversed).
    fn items<'s>(source: &'s Source<'_>, reversed: bool) -> Result<Vec<ValueCow<'s>>> {
        let mut items: Vec<ValueCow<'s>> = match source {
            Source::Range { first, count } => (0..*count as i64).map(|i| Value::scalar(first + i).into()).collect(),
            Source::Value { value, limit, offset } => {
                let value = value.as_view();
                let mut items: Vec<ValueCow<'s>> = Vec::new();
                if let Some(array) = value.as_array() {
                    items.extend(array.values().map(ValueCow::Borrowed));
                } else if let Some(object) = value.as_object() {
                    // An object's entries are copied into `[key, value]` pairs (that copy is
                    // work), in key order: Liquid's objects are hash maps, whose order would
                    // change from one process to the next.
                    spend_work(weight(value, TEMPLATE_WORK_BYTES_MAX))?;
                    let mut entries: Vec<_> = object.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    items.extend(entries.into_iter().map(|(key, item)| {
                        ValueCow::Owned(Value::Array(vec![Value::scalar(key.into_owned()), item.to_value()]))
                    }));
                } else if !(value.is_state() || value.is_nil()) {
                    return Err(Error::with_msg("Invalid input").context("expected", "array"));
                }
                let skip = usize::try_from(*offset).unwrap_or(usize::MAX).min(items.len());
                items.drain(..skip);
                if let Some(limit) = limit {
                    items.truncate(usize::try_from(*limit).unwrap_or(usize::MAX));
                }
                items
            }
        };
        if reversed {
            items.reverse();
        }
        Ok(items)
    }
}

/// What a loop goes over once its expressions are evaluated.
enum Source<'r> {
    /// `count` integers from `first` (offset and limit applied).
    Range {
        first: i64,
        count: usize,
    },
    Value {
        value: ValueCow<'r>,
        limit: Option<u64>,
        offset: u64,
    },
}

/// How many integers `start..=stop` holds (0 when it runs backwards).
fn range_count(start: i64, stop: i64) -> i128 {
    (i128::from(stop) - i128::from(start) + 1).max(0)
}

fn integer(expression: &Expression, runtime: &dyn Runtime, name: &str) -> Result<i64> {
    let value = expression.evaluate(runtime)?;
    value.as_scalar().and_then(|s| s.to_integer()).ok_or_else(|| {
        Error::with_msg("Invalid input").context("expected", "whole number").context("argument", name.to_owned())
    })
}

fn whole_number(expression: &Option<Expression>, runtime: &dyn Runtime) -> Result<Option<u64>> {
    let Some(expression) = expression else { return Ok(None) };
    let value = integer(expression, runtime, "limit or offset")?;
    Ok(Some(value.max(0) as u64))
}

/// Reads `: value` after a loop's `limit`, `offset` or `cols`.
fn attribute(arguments: &mut TagTokenIter<'_>) -> Result<Expression> {
    arguments.expect_next("\":\" expected.")?.expect_str(":").into_result_custom_msg("\":\" expected.")?;
    arguments.expect_next("Value expected.")?.expect_value().into_result()
}

/// `for`, bounded: see the module's header.
#[derive(Clone, Copy)]
struct BoundedFor;

impl BlockReflection for BoundedFor {
    fn start_tag(&self) -> &str {
        "for"
    }

    fn end_tag(&self) -> &str {
        "endfor"
    }

    fn description(&self) -> &str {
        "Renders its body once for each item of an array or a range."
    }
}

impl ParseBlock for BoundedFor {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        language: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let mut reversed = false;
        let looped = Loop::parse(&mut arguments, "\"limit\", \"offset\" or \"reversed\" expected.", |word, _| {
            reversed |= word == "reversed";
            Ok(word == "reversed")
        })?;
        let mut body = Vec::new();
        let mut otherwise = None;
        while let Some(element) = tokens.next()? {
            match element {
                BlockElement::Tag(mut tag) if tag.name() == "else" => {
                    tag.tokens().expect_nothing()?;
                    otherwise = Some(Template::new(tokens.parse_all(language)?));
                    break;
                }
                BlockElement::Tag(tag) => body.push(tag.parse(&mut tokens, language)?),
                element => body.push(element.parse(&mut tokens, language)?),
            }
        }
        tokens.assert_empty();
        Ok(Box::new(For { looped, body: Template::new(body), otherwise, reversed }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct For {
    looped: Loop,
    body: Template,
    otherwise: Option<Template>,
    reversed: bool,
}

#[derive(Debug, Clone, liquid_core::ValueView, liquid_core::ObjectView)]
struct ForLoop<'p> {
    length: i64,
    parentloop: Option<&'p dyn ValueView>,
    index0: i64,
    index: i64,
    rindex0: i64,
    rindex: i64,
    first: bool,
    last: bool,
}

impl Renderable for For {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let source = self.looped.source(runtime)?;
        let items = Loop::items(&source, self.reversed)?;
        if items.is_empty() {
            if let Some(otherwise) = &self.otherwise {
                otherwise.render_to(writer, runtime)?;
            }
            return Ok(());
        }
        let parent = runtime.try_get(&[liquid_core::model::Scalar::new("forloop")]);
        let length = items.len() as i64;
        for (i, item) in items.iter().enumerate() {
            spend_iteration()?;
            let i = i as i64;
            let forloop = ForLoop {
                length,
                parentloop: parent.as_ref().map(|p| p.as_view()),
                index0: i,
                index: i + 1,
                rindex0: length - i - 1,
                rindex: length - i,
                first: i == 0,
                last: i == length - 1,
            };
            let mut frame: HashMap<KStringRef<'_>, &dyn ValueView> = HashMap::new();
            frame.insert("forloop".into(), &forloop);
            frame.insert(self.looped.variable.as_ref(), item.as_view());
            let scope = StackFrame::new(runtime, &frame);
            self.body.render_to(writer, &scope).context_key("index").value_with(|| format!("{}", i + 1).into())?;
            if let Some(Interrupt::Break) = scope.registers().get_mut::<InterruptRegister>().reset() {
                break;
            }
        }
        Ok(())
    }
}

/// `tablerow`, bounded like `for`.
#[derive(Clone, Copy)]
struct BoundedTableRow;

impl BlockReflection for BoundedTableRow {
    fn start_tag(&self) -> &str {
        "tablerow"
    }

    fn end_tag(&self) -> &str {
        "endtablerow"
    }

    fn description(&self) -> &str {
        "Renders an HTML table row cell for each item of an array or a range."
    }
}

impl ParseBlock for BoundedTableRow {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        language: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let mut cols = None;
        let looped = Loop::parse(&mut arguments, "\"cols\", \"limit\" or \"offset\" expected.", |word, arguments| {
            if word != "cols" {
                return Ok(false);
            }
            cols = Some(attribute(arguments)?);
            Ok(true)
        })?;
        let body = Template::new(tokens.parse_all(language)?);
        tokens.assert_empty();
        Ok(Box::new(TableRow { looped, body, cols }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct TableRow {
    looped: Loop,
    body: Template,
    cols: Option<Expression>,
}

#[derive(Debug, Clone, liquid_core::ValueView, liquid_core::ObjectView)]
struct TableRowLoop {
    length: i64,
    index0: i64,
    index: i64,
    rindex0: i64,
    rindex: i64,
    first: bool,
    last: bool,
    col0: i64,
    col: i64,
    col_first: bool,
    col_last: bool,
}

impl Renderable for TableRow {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let source = self.looped.source(runtime)?;
        let items = Loop::items(&source, false)?;
        let length = items.len();
        let cols = whole_number(&self.cols, runtime)?.map_or(length, |c| c as usize).max(1);
        let failed = |_| Error::with_msg("Failed to render");
        for (i, item) in items.iter().enumerate() {
            spend_iteration()?;
            let (column, row) = (i % cols, i / cols);
            let tablerow = TableRowLoop {
                length: length as i64,
                index0: i as i64,
                index: i as i64 + 1,
                rindex0: (length - i - 1) as i64,
                rindex: (length - i) as i64,
                first: i == 0,
                last: i == length - 1,
                col0: column as i64,
                col: column as i64 + 1,
                col_first: column == 0,
                col_last: column == cols - 1 || i == length - 1,
            };
            if tablerow.col_first {
                write!(writer, "<tr class=\"row{}\">", row + 1).map_err(failed)?;
            }
            write!(writer, "<td class=\"col{}\">", column + 1).map_err(failed)?;
            let mut frame: HashMap<KStringRef<'_>, &dyn ValueView> = HashMap::new();
            frame.insert("tablerow".into(), &tablerow);
            frame.insert(self.looped.variable.as_ref(), item.as_view());
            let scope = StackFrame::new(runtime, &frame);
            self.body.render_to(writer, &scope)?;
            write!(writer, "</td>").map_err(failed)?;
            if tablerow.col_last {
                write!(writer, "</tr>").map_err(failed)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::template::{Template as Message, TemplateError};

    fn render(source: &str, data: &Json) -> std::result::Result<String, TemplateError> {
        Message::compile(source)?.render_json(data)
    }

    fn over_budget(source: &str, data: &Json) -> Exceeded {
        match render(source, data) {
            Err(TemplateError::OverBudget(exceeded)) => exceeded,
            other => panic!("{source}: expected to be over budget, got {other:?}"),
        }
    }

    /// Liquid's own standard library, unbounded: what the bounded language must agree with.
    fn stock(source: &str, data: &Json) -> String {
        let mut language = Language::empty();
        for tag in [stdlib::AssignTag.into(), stdlib::BreakTag.into(), stdlib::ContinueTag.into()] {
            let tag: Box<dyn ParseTag> = tag;
            language.tags.register(tag.reflection().tag().to_owned(), tag);
        }
        for block in
            [stdlib::ForBlock.into(), stdlib::TableRowBlock.into(), stdlib::CaptureBlock.into(), stdlib::IfBlock.into()]
        {
            let block: Box<dyn ParseBlock> = block;
            language.blocks.register(block.reflection().start_tag().to_owned(), block);
        }
        for filter in [
            stdlib::Join.into(),
            stdlib::Replace.into(),
            stdlib::Append.into(),
            stdlib::Split.into(),
            stdlib::Upcase.into(),
            stdlib::Size.into(),
        ] {
            let filter: Box<dyn ParseFilter> = filter;
            language.filters.register(filter.reflection().name().to_owned(), filter);
        }
        let template = Template::new(liquid_core::parser::parse(source, &language).unwrap());
        let globals = liquid_core::model::to_object(data).unwrap();
        let runtime = liquid_core::runtime::RuntimeBuilder::new().set_globals(&globals).build();
        let mut out = Vec::new();
        template.render_to(&mut out, &runtime).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ordinary_templates_render_as_liquid_renders_them() {
        let data = json!({
            "contact": { "products": [{"name": "Tea"}, {"name": "Cake"}, {"name": "Jam"}], "n": 4,
                         "prefs": { "email": true, "sms": false }, "tags": "a,b,c", "nothing": null,
                         "one": { "email": true } }
        });
        for source in [
            "{% for p in contact.products %}{{ forloop.index }}/{{ forloop.length }} {{ p.name }}{% if forloop.last %}.{% else %}, {% endif %}{% endfor %}",
            "{% for p in contact.products limit: 2 offset: 1 %}{{ p.name }}{{ forloop.rindex }}{% endfor %}",
            "{% for p in contact.products reversed %}{{ p.name }}{% endfor %}",
            "{% for i in (1..contact.n) %}{% for j in (1..2) %}{{ forloop.parentloop.index }}{{ j }} {% endfor %}{% endfor %}",
            "{% for i in (3..1) %}x{% else %}none{% endfor %}",
            "{% for i in (1..10) %}{% if i == 3 %}{% continue %}{% endif %}{% if i == 6 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            "{% for i in (1..100) offset: 95 %}{{ i }}{% endfor %}|{% for i in (1..100) limit: 3 offset: 2 %}{{ i }}{% endfor %}",
            "{% for entry in contact.one %}{{ entry[0] }}={{ entry[1] }};{% endfor %}",
            "{% tablerow p in contact.products cols: 2 %}{{ p.name }}{{ tablerow.col }}{% endtablerow %}",
            "{% tablerow i in (1..3) %}{{ i }}{% endtablerow %}",
            "{% capture hi %}Hi {{ contact.products[0].name | upcase }}{% endcapture %}{{ hi }} {{ hi | size }}",
            "{% assign parts = contact.tags | split: ',' %}{{ parts | join: ' & ' }} {{ parts | join }} {{ contact.tags | replace: ',', ' and ' | append: '!' }}",
            "{% for i in contact.nothing %}x{% else %}none{% endfor %}",
        ] {
            assert_eq!(render(source, &data).unwrap(), stock(source, &data), "{source}");
        }
        let entries = "{% for entry in contact.prefs %}{{ entry[0] }}={{ entry[1] }};{% endfor %}";
        assert_eq!(render(entries, &data).unwrap(), "email=true;sms=false;", "an object's entries in key order");
    }

    #[test]
    fn a_literal_range_over_the_limit_is_refused_where_it_is_written() {
        let error = Message::compile("Hi\n{% for i in (1..30000000) %}x{% endfor %}").unwrap_err();
        let TemplateError::Syntax { message, line, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*line, 2);
        assert!(message.contains("30000000 items") && message.contains("10000"), "{message}");
        assert!(Message::compile("{% tablerow i in (0..10000) %}{% endtablerow %}").is_err(), "10 001 items");
        assert!(Message::compile("{% for i in (1..10000) %}{% endfor %}").is_ok(), "at the limit");
        assert!(Message::compile("{% for i in (1..30000000) limit: 5 %}{{ i }}{% endfor %}").is_ok(), "limited");
        assert_eq!(
            render("{% for i in (1..30000000) limit: 3 offset: 29999998 %}{{ i }},{% endfor %}", &json!({})).unwrap(),
            "29999999,30000000,"
        );
    }

    #[test]
    fn every_way_to_grow_without_bound_stops_at_its_limit() {
        let range = over_budget("{% for i in (1..contact.n) %}x{% endfor %}", &json!({"contact": {"n": 30_000_000}}));
        assert_eq!(range, Exceeded::Range { count: 30_000_000 });
        let extreme = over_budget(
            "{% for i in (contact.a..contact.b) %}x{% endfor %}",
            &json!({"contact": {"a": i64::MIN, "b": i64::MAX}}),
        );
        assert!(matches!(extreme, Exceeded::Range { .. }));
        let doubling =
            "{% assign s = 'ab' %}{% for i in (1..60) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}";
        assert_eq!(over_budget(doubling, &json!({})), Exceeded::Value);
        let prepended = "{% assign s = 'ab' %}{% for i in (1..60) %}{% assign s = s | prepend: s %}{% endfor %}";
        assert_eq!(over_budget(prepended, &json!({})), Exceeded::Value);
        let captured =
            "{% assign s = 'ab' %}{% for i in (1..60) %}{% capture s %}{{ s }}{{ s }}{% endcapture %}{% endfor %}";
        assert_eq!(over_budget(captured, &json!({})), Exceeded::Value);
        let replaced =
            "{% assign s = 'aaaa' %}{% for i in (1..60) %}{% assign s = s | replace: 'a', 'aaaa' %}{% endfor %}";
        assert_eq!(over_budget(replaced, &json!({})), Exceeded::Value);
        let big = "x".repeat(20_000);
        let joined = "{% assign parts = contact.big | split: '' %}{{ parts | join: contact.big }}";
        assert_eq!(over_budget(joined, &json!({"contact": {"big": big}})), Exceeded::Value);
        let nested = "{% for i in (1..1000) %}{% for j in (1..1000) %}{% endfor %}{% endfor %}";
        assert_eq!(over_budget(nested, &json!({})), Exceeded::Iterations);
        let written = "{% for i in (1..10000) %}{{ contact.big }}{% endfor %}";
        assert_eq!(over_budget(written, &json!({"contact": {"big": big}})), Exceeded::Output);
        let worked = "{% for i in (1..10000) %}{% assign t = contact.big | upcase %}{% endfor %}";
        assert_eq!(over_budget(worked, &json!({"contact": {"big": big}})), Exceeded::Work);
        let copied = "{% for i in (1..10000) %}{% assign t = contact.big %}{% endfor %}";
        assert_eq!(over_budget(copied, &json!({"contact": {"big": big}})), Exceeded::Work);
        let error = render(doubling, &json!({})).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "the template is over its rendering budget: it built a value of more than {TEMPLATE_VALUE_BYTES_MAX} bytes"
            )
        );
    }

    #[test]
    fn blocks_nested_past_the_limit_are_refused_before_liquid_parses_them() {
        let deep = |depth: usize| format!("{}x{}", "{% if a %}".repeat(depth), "{% endif %}".repeat(depth));
        let error = Message::compile(&deep(10_000)).unwrap_err();
        assert!(
            matches!(&error, TemplateError::Syntax { message, line: 1, column } if message.contains("64 deep") && *column == 641),
            "{error:?}"
        );
        assert!(Message::compile(&deep(TEMPLATE_NESTING_MAX)).is_ok());
        let raw = format!(
            "{{% raw %}}{}{{% endraw %}}{{% comment %}}{}{{% endcomment %}}",
            "{% if a %}".repeat(100),
            "{% for %}".repeat(100)
        );
        assert_eq!(too_deep(&raw), None, "the text of raw and comment is not parsed");
        assert_eq!(too_deep(&"{% endif %}".repeat(100)), None);
    }

    #[test]
    fn weight_counts_text_and_items_and_stops_at_its_cap() {
        let value = liquid_core::model::to_value(&json!({"a": ["xy", "z"], "bb": 12})).unwrap();
        assert_eq!(weight(&value, usize::MAX), (8 + 1 + (8 + 2) + (8 + 1)) + (8 + 2 + 8), "a number weighs 8");
        let long = liquid_core::model::to_value(&json!(vec!["x"; 1000])).unwrap();
        assert!(weight(&long, 100) <= 100 + 9, "stops soon after the cap");
    }
}
