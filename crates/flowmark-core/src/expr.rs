//! Conditions: CEL expressions compiled once at validation and evaluated by the run state machine.
//!
//! A `Condition` knows the dotted paths it reads (`contact.scores.engagement`), so every
//! evaluation can record the values it looked at in a decision record — the answer to
//! "why did this contact go down that branch?".
//!
//! Most workflow conditions are comparisons of what they read with literals
//! (`contact.scores.engagement >= 50`, `event.properties.email_id == steps.thanks.effect_id`),
//! joined by `&&`, `||` and `!`. Those are also compiled to a [`Fast`] form evaluated on the
//! JSON values directly; it answers only where both operands of every comparison are of the
//! same kind, and leaves everything else (mixed types, nulls, errors) to CEL.
//!
//! Invariant: a `Condition` only exists for source that parsed and whose variables are all
//! among the roots the step may read; evaluation never panics, it returns an `EvalError`.
//! Where the fast form answers, CEL would answer the same (a differential property test
//! checks it).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::{Context, IdedExpr, Program, Value as CelValue};
use serde_json::Value;

use crate::guard::guarded;
use crate::limits::CONDITION_LENGTH_MAX;

/// A compiled CEL condition.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
    /// Dotted paths the expression reads, root first, deduplicated, in order of appearance.
    paths: Arc<[String]>,
    /// The roots among `paths`, so evaluation converts only what the expression reads.
    roots: Arc<[String]>,
    /// The expression as plain comparisons, when it is one (see the module docs).
    fast: Option<Arc<Fast>>,
    /// What each `has()` tests, as (the parent path, the tested path): `("contact.scores",
    /// "contact.scores.engagement")`. Where the parent is missing or `null`, CEL sees an empty
    /// map, and a tested field that is missing or `null` is left out of what CEL sees, so
    /// `has()` answers `false` at any depth instead of failing on `null`.
    tested: Arc<[(String, String)]>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Condition({:?})", self.source)
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Condition) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    TooLong {
        length: usize,
    },
    /// `column` is 1-based within the expression.
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    UnknownVariable {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the condition failed: {0}")]
    Execution(String),
    #[error("the condition gave {0}, not true or false")]
    NotBool(String),
}

/// What one evaluation read and gave, for the decision record.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub result: Result<bool, EvalError>,
    pub inputs: BTreeMap<String, Value>,
}

impl Condition {
    /// Compiles `source`, accepting only variables named in `roots`.
    pub fn compile(source: &str, roots: &[&str]) -> Result<Condition, CompileError> {
        if source.len() > CONDITION_LENGTH_MAX {
            return Err(CompileError::TooLong { length: source.len() });
        }
        let compiled = guarded(|| Program::compile(source)).ok_or_else(|| CompileError::Syntax {
            message: "the expression could not be read (the CEL parser failed on it)".to_owned(),
            line: 1,
            column: 1,
        })?;
        let program = compiled.map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| {
                (usize::try_from(e.pos.0).unwrap_or(0).max(1), usize::try_from(e.pos.1).unwrap_or(0) + 1)
            });
            let message = first.map_or_else(|| errors.to_string(), |e| e.msg.clone());
            CompileError::Syntax { message, line, column }
        })?;
        let mut paths = Vec::new();
        collect_paths(program.expression(), &mut Vec::new(), &mut paths);
        let mut tested = Vec::new();
        collect_tested(program.expression(), &mut tested);
        let mut path_roots: Vec<String> = Vec::new();
        for path in &paths {
            let root = path.split('.').next().unwrap_or(path);
            if !roots.contains(&root) {
                return Err(CompileError::UnknownVariable { name: root.to_owned() });
            }
            if !path_roots.iter().any(|r| r == root) {
                path_roots.push(root.to_owned());
            }
        }
        let fast = Fast::compile(program.expression()).map(Arc::new);
        Ok(Condition {
            source: source.into(),
            program: Arc::new(program),
            paths: paths.into(),
            roots: path_roots.into(),
            fast,
            tested: tested.into(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// Does the expression read this root variable?
    pub fn reads(&self, root: &str) -> bool {
        self.roots.iter().any(|r| r == root)
    }

    /// The event aggregates the expression reads, as `(event name, window)` from its
    /// `events.count("Email Link Clicked", "30d")` calls, deduplicated. The counts are looked
    /// up before evaluation and bound as `events` (see [`event_count_key`]), so both arguments
    /// must be string literals and `events` may be read no other way: anything else is an
    /// error naming what was found.
    pub fn event_counts(&self) -> Result<Vec<(String, String)>, String> {
        let mut counts = Vec::new();
        visit_event_counts(self.program.expression(), &mut counts)?;
        Ok(counts)
    }

    /// Evaluates against `scope` (root name → JSON value).
    ///
    /// Only the paths the expression reads are converted to CEL: the activation holds each
    /// root projected onto those paths, which is what makes evaluation cheap on large
    /// contacts. A field that is missing reads as `null`, so `contact.plan == "pro"` is false
    /// for a contact without a plan rather than an error.
    pub fn eval(&self, scope: &Scope<'_>) -> Evaluation {
        let inputs = self.inputs(scope);
        if let Some(fast) = &self.fast
            && let Some(result) = fast.eval(&inputs)
        {
            return Evaluation { result: Ok(result), inputs };
        }
        let result = self.eval_cel(&inputs);
        Evaluation { result, inputs }
    }

    /// What a person should know about how the condition read `inputs`: each comparison of a
    /// number with a string (`123 == "123"`), which is never equal in CEL (a webinar id stored
    /// as text compared with one that arrived as a number, say). Said in the decision record.
    pub fn notes(&self, inputs: &BTreeMap<String, Value>) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(fast) = &self.fast {
            fast.mismatches(inputs, &mut notes);
        }
        notes
    }

    /// The comparisons of a number with a string that can be seen before the condition runs:
    /// where each side is a literal or a path `kind_of` knows the kind of (a score is a
    /// number, a task's text field a string). Only for conditions made of plain comparisons.
    pub fn mixed_comparisons(&self, kind_of: &dyn Fn(&str) -> Option<Kind>) -> Vec<MixedComparison> {
        let mut found = Vec::new();
        if let Some(fast) = &self.fast {
            fast.foreseen_mismatches(kind_of, &mut found);
        }
        found
    }

    /// The paths the condition orders (`<`, `<=`, `>`, `>=` with them as an operand) without
    /// a `has()` of the same path anywhere in it: where such a path is missing (`null`), CEL
    /// has no ordering and the condition fails.
    pub fn unguarded_orderings(&self) -> Vec<String> {
        let mut ordered = Vec::new();
        collect_ordered(self.program.expression(), &mut ordered);
        ordered.retain(|path| !self.tested.iter().any(|(_, field)| field == path));
        ordered
    }

    /// The values the condition reads from `scope`, by path.
    fn inputs(&self, scope: &Scope<'_>) -> BTreeMap<String, Value> {
        self.paths.iter().map(|path| (path.clone(), scope.lookup(path))).collect()
    }

    /// Evaluates with CEL on the values read (`inputs`, by path).
    fn eval_cel(&self, inputs: &BTreeMap<String, Value>) -> Result<bool, EvalError> {
        ROOT_CONTEXT.with(|root| {
            let mut context = root.new_inner_scope();
            // What a `has()` tests is there only where it has a value (see `tested`).
            let substituted;
            let absent = |path: &String| inputs.get(path).is_none_or(Value::is_null);
            let inputs = if self.tested.iter().any(|(parent, field)| absent(parent) || absent(field)) {
                let mut copy = inputs.clone();
                for (parent, field) in self.tested.iter() {
                    if let Some(value @ Value::Null) = copy.get_mut(parent) {
                        *value = Value::Object(serde_json::Map::new());
                    }
                    if copy.get(field).is_some_and(Value::is_null) {
                        copy.remove(field);
                    }
                }
                substituted = copy;
                &substituted
            } else {
                inputs
            };
            for name in self.roots.iter() {
                context.add_variable_from_value(name.clone(), json_to_cel(&project(name, inputs)));
            }
            match guarded(|| self.program.execute(&context)) {
                Some(Ok(CelValue::Bool(b))) => Ok(b),
                Some(Ok(other)) => Err(EvalError::NotBool(format!("{other:?}"))),
                Some(Err(error)) => Err(EvalError::Execution(error.to_string())),
                None => Err(EvalError::Execution("the CEL interpreter failed on these values".to_owned())),
            }
        })
    }
}

/// A kind of value, as far as validation can know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    String,
}

/// A comparison of a number with a string, foreseen (`Condition::mixed_comparisons`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedComparison {
    /// Each side as written (a path, or a literal in CEL's spelling), with its kind.
    pub left: (String, Kind),
    pub right: (String, Kind),
    /// `<`, `<=`, `>`, `>=`: CEL has no such overload, so it fails at run time; `==` and `!=`
    /// are merely never (always) true.
    pub ordering: bool,
}

/// A condition made of comparisons between read paths and literals, joined by `&&`, `||`
/// and `!`, evaluated without CEL.
#[derive(Debug, Clone, PartialEq)]
enum Fast {
    Compare { op: Comparison, left: Operand, right: Operand },
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// A dotted path among the condition's `paths`.
    Path(String),
    Literal(Scalar),
}

/// A literal of the expression, by its CEL type.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Bool(bool),
    Null,
}

impl Fast {
    /// The fast form of `expr`, if it has that shape.
    fn compile(expr: &IdedExpr) -> Option<Fast> {
        use cel::common::ast::operators;
        let Expr::Call(call) = &expr.expr else { return None };
        if call.target.is_some() {
            return None;
        }
        let op = match call.func_name.as_str() {
            operators::LOGICAL_AND | operators::LOGICAL_OR => {
                let [left, right] = call.args.as_slice() else { return None };
                let (left, right) = (Box::new(Fast::compile(left)?), Box::new(Fast::compile(right)?));
                return Some(if call.func_name == operators::LOGICAL_AND {
                    Fast::And(left, right)
                } else {
                    Fast::Or(left, right)
                });
            }
            operators::LOGICAL_NOT => {
                let [operand] = call.args.as_slice() else { return None };
                return Some(Fast::Not(Box::new(Fast::compile(operand)?)));
            }
            operators::EQUALS => Comparison::Equal,
            operators::NOT_EQUALS => Comparison::NotEqual,
            operators::LESS => Comparison::Less,
            operators::LESS_EQUALS => Comparison::LessOrEqual,
            operators::GREATER => Comparison::Greater,
            operators::GREATER_EQUALS => Comparison::GreaterOrEqual,
            _ => return None,
        };
        let [left, right] = call.args.as_slice() else { return None };
        Some(Fast::Compare { op, left: Operand::compile(left)?, right: Operand::compile(right)? })
    }

    /// The result, or `None` where CEL's own rules are needed.
    /// Notes each comparison of a number with a string (see `Condition::notes`).
    fn mismatches(&self, inputs: &BTreeMap<String, Value>, notes: &mut Vec<String>) {
        match self {
            Fast::Compare { left, right, .. } => {
                let (Some(l), Some(r)) = (left.view(inputs), right.view(inputs)) else { return };
                let number = |v: &View<'_>| matches!(v, View::Int(_) | View::UInt(_) | View::Float(_));
                let string = |v: &View<'_>| matches!(v, View::String(_));
                if (number(&l) && string(&r)) || (string(&l) && number(&r)) {
                    let say = |operand: &Operand, view: &View<'_>| {
                        let kind = if number(view) { "the number" } else { "the string" };
                        match operand {
                            Operand::Path(path) => format!("`{path}` is {kind} {}", inputs[path]),
                            Operand::Literal(_) => format!("{kind} {}", view.json()),
                        }
                    };
                    notes.push(format!(
                        "{} and {}: a number never equals a string; store both the same way (a value that is one variable, `\"{{{{ … }}}}\"`, keeps its type)",
                        say(left, &l),
                        say(right, &r)
                    ));
                }
            }
            Fast::And(left, right) | Fast::Or(left, right) => {
                left.mismatches(inputs, notes);
                right.mismatches(inputs, notes);
            }
            Fast::Not(operand) => operand.mismatches(inputs, notes),
        }
    }

    /// `mismatches`, before any value is known: from literals and `kind_of`.
    fn foreseen_mismatches(&self, kind_of: &dyn Fn(&str) -> Option<Kind>, found: &mut Vec<MixedComparison>) {
        match self {
            Fast::Compare { op, left, right } => {
                let side = |operand: &Operand| -> Option<(String, Kind)> {
                    match operand {
                        Operand::Path(path) => kind_of(path).map(|kind| (path.clone(), kind)),
                        Operand::Literal(Scalar::Int(i)) => Some((i.to_string(), Kind::Number)),
                        Operand::Literal(Scalar::UInt(u)) => Some((format!("{u}u"), Kind::Number)),
                        Operand::Literal(Scalar::Float(f)) => Some((f.to_string(), Kind::Number)),
                        Operand::Literal(Scalar::String(s)) => Some((format!("{s:?}"), Kind::String)),
                        Operand::Literal(Scalar::Bool(_) | Scalar::Null) => None,
                    }
                };
                if let (Some(l), Some(r)) = (side(left), side(right))
                    && l.1 != r.1
                {
                    let ordering = !matches!(op, Comparison::Equal | Comparison::NotEqual);
                    found.push(MixedComparison { left: l, right: r, ordering });
                }
            }
            Fast::And(left, right) | Fast::Or(left, right) => {
                left.foreseen_mismatches(kind_of, found);
                right.foreseen_mismatches(kind_of, found);
            }
            Fast::Not(operand) => operand.foreseen_mismatches(kind_of, found),
        }
    }

    fn eval(&self, inputs: &BTreeMap<String, Value>) -> Option<bool> {
        match self {
            Fast::Compare { op, left, right } => compare(*op, left.view(inputs)?, right.view(inputs)?),
            // Both sides always: a side CEL must decide (an error, say) decides the whole.
            Fast::And(left, right) => Some(left.eval(inputs)? & right.eval(inputs)?),
            Fast::Or(left, right) => Some(left.eval(inputs)? | right.eval(inputs)?),
            Fast::Not(operand) => Some(!operand.eval(inputs)?),
        }
    }
}

impl Operand {
    fn compile(expr: &IdedExpr) -> Option<Operand> {
        use cel::common::ast::LiteralValue;
        if let Some(segments) = dotted(&expr.expr) {
            return Some(Operand::Path(segments.join(".")));
        }
        let Expr::Literal(literal) = &expr.expr else { return None };
        Some(Operand::Literal(match literal {
            LiteralValue::Int(i) => Scalar::Int(*i.inner()),
            LiteralValue::UInt(u) => Scalar::UInt(*u.inner()),
            LiteralValue::Double(f) => Scalar::Float(*f.inner()),
            LiteralValue::String(s) => Scalar::String(s.inner().to_owned()),
            LiteralValue::Boolean(b) => Scalar::Bool(*b.inner()),
            LiteralValue::Null => Scalar::Null,
            LiteralValue::Bytes(_) => return None,
        }))
    }

    fn view<'v>(&'v self, inputs: &'v BTreeMap<String, Value>) -> Option<View<'v>> {
        match self {
            Operand::Literal(scalar) => Some(match scalar {
                Scalar::Int(i) => View::Int(*i),
                Scalar::UInt(u) => View::UInt(*u),
                Scalar::Float(f) => View::Float(*f),
                Scalar::String(s) => View::String(s),
                Scalar::Bool(b) => View::Bool(*b),
                Scalar::Null => View::Null,
            }),
            Operand::Path(path) => Some(match inputs.get(path)? {
                Value::Null => View::Null,
                Value::Bool(b) => View::Bool(*b),
                Value::Number(n) => number_view(n)?,
                Value::String(s) => View::String(s),
                Value::Array(_) | Value::Object(_) => return None,
            }),
        }
    }
}

/// The CEL type and value of a JSON number: an integer if it fits `i64`, else an unsigned
/// integer if it fits `u64`, else a double. The one rule for both `json_to_cel` and `Fast`.
fn number_view(n: &serde_json::Number) -> Option<View<'static>> {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => Some(View::Int(i)),
        (None, Some(u), _) => Some(View::UInt(u)),
        (_, _, Some(f)) => Some(View::Float(f)),
        _ => None,
    }
}

/// A scalar operand as CEL types it, borrowed from the literal or the value read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum View<'a> {
    Int(i64),
    UInt(u64),
    Float(f64),
    String(&'a str),
    Bool(bool),
    Null,
}

impl View<'_> {
    /// The value as JSON text.
    fn json(&self) -> String {
        match self {
            View::Int(i) => i.to_string(),
            View::UInt(u) => u.to_string(),
            View::Float(f) => f.to_string(),
            View::String(s) => Value::String((*s).to_owned()).to_string(),
            View::Bool(b) => b.to_string(),
            View::Null => "null".to_owned(),
        }
    }
}

/// A comparison of two scalars of the same kind; `None` for mixed kinds, and for orderings
/// of nulls and booleans, which CEL decides.
fn compare(op: Comparison, left: View<'_>, right: View<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering: Ordering = match (left, right) {
        (View::Int(a), View::Int(b)) => a.cmp(&b),
        (View::UInt(a), View::UInt(b)) => a.cmp(&b),
        (View::Float(a), View::Float(b)) => a.partial_cmp(&b)?,
        (View::String(a), View::String(b)) => a.cmp(b),
        (View::Bool(a), View::Bool(b)) => return equality(op, a == b),
        (View::Null, View::Null) => return equality(op, true),
        _ => return None,
    };
    Some(match op {
        Comparison::Equal => ordering == Ordering::Equal,
        Comparison::NotEqual => ordering != Ordering::Equal,
        Comparison::Less => ordering == Ordering::Less,
        Comparison::LessOrEqual => ordering != Ordering::Greater,
        Comparison::Greater => ordering == Ordering::Greater,
        Comparison::GreaterOrEqual => ordering != Ordering::Less,
    })
}

fn equality(op: Comparison, equal: bool) -> Option<bool> {
    match op {
        Comparison::Equal => Some(equal),
        Comparison::NotEqual => Some(!equal),
        _ => None,
    }
}

thread_local! {
    /// Building a CEL context registers every built-in function; doing it once per thread and
    /// giving each evaluation an inner scope is what makes evaluation cheap.
    static ROOT_CONTEXT: Context<'static, 'static> = root_context();
}

/// The root a segment's condition reads event aggregates from.
pub const EVENTS_ROOT: &str = "events";

/// Where `events.count(name, window)` finds its answer in the `events` value bound for an
/// evaluation: the key of a map from key to count.
pub fn event_count_key(name: &str, window: &str) -> String {
    format!("{name}@{window}")
}

fn root_context() -> Context<'static, 'static> {
    let mut context = Context::default();
    // `count` is not a CEL built-in, so declaring it cannot fail; should a later `cel`
    // declare one, conditions using it fail to evaluate (visibly) rather than panic here.
    let _ = context.add_function("count", event_count);
    context
}

/// `events.count("Name", "30d")`: the count bound for that key, 0 when none was.
fn event_count(
    cel::extractors::This(this): cel::extractors::This<CelValue>,
    name: Arc<String>,
    window: Arc<String>,
) -> Result<CelValue, cel::ExecutionError> {
    let CelValue::Map(map) = this else {
        return Err(cel::ExecutionError::function_error("count", "only `events` can be counted"));
    };
    let key = cel::objects::Key::String(Arc::new(event_count_key(&name, &window)));
    Ok(map.map.get(&key).cloned().unwrap_or(CelValue::Int(0)))
}

/// Collects `events.count(lit, lit)` calls; any other read of `events` is an error.
fn visit_event_counts(expr: &IdedExpr, out: &mut Vec<(String, String)>) -> Result<(), String> {
    let literal = |arg: &IdedExpr| match &arg.expr {
        Expr::Literal(cel::common::ast::LiteralValue::String(s)) => Some(s.to_string()),
        _ => None,
    };
    match &expr.expr {
        Expr::Ident(name) if name == EVENTS_ROOT => {
            Err("`events` is read only as `events.count(\"Event Name\", \"30d\")`".to_owned())
        }
        Expr::Call(call)
            if call.func_name == "count"
                && call.target.as_ref().is_some_and(|t| matches!(&t.expr, Expr::Ident(n) if n == EVENTS_ROOT)) =>
        {
            match (call.args.as_slice(), call.args.first().and_then(literal), call.args.get(1).and_then(literal)) {
                ([_, _], Some(name), Some(window)) => {
                    if !out.iter().any(|(n, w)| *n == name && *w == window) {
                        out.push((name, window));
                    }
                    Ok(())
                }
                _ => Err("`events.count` takes two string literals: the event name and a window such as `\"30d\"`"
                    .to_owned()),
            }
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => Ok(()),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                visit_event_counts(target, out)?;
            }
            call.args.iter().try_for_each(|arg| visit_event_counts(arg, out))
        }
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .try_for_each(|part| visit_event_counts(part, out)),
        Expr::List(list) => list.elements.iter().try_for_each(|e| visit_event_counts(e, out)),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => visit_event_counts(&e.key, out).and_then(|()| visit_event_counts(&e.value, out)),
            EntryExpr::StructField(f) => visit_event_counts(&f.value, out),
        }),
        Expr::Select(select) => visit_event_counts(&select.operand, out),
        Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::StructField(f) => visit_event_counts(&f.value, out),
            EntryExpr::MapEntry(e) => visit_event_counts(&e.key, out).and_then(|()| visit_event_counts(&e.value, out)),
        }),
    }
}

/// The value of `root` reduced to the paths read under it: `{scores: {engagement: 40}}` for
/// the single path `contact.scores.engagement`. A shorter path read in full wins over longer
/// ones below it.
fn project(root: &str, inputs: &BTreeMap<String, Value>) -> Value {
    let mut paths: Vec<(Vec<&str>, &Value)> = inputs
        .iter()
        .filter_map(|(path, value)| {
            let mut segments = path.split('.');
            (segments.next() == Some(root)).then(|| (segments.collect(), value))
        })
        .collect();
    paths.sort_by_key(|(segments, _)| segments.len());
    if let Some((segments, value)) = paths.first()
        && segments.is_empty()
    {
        return (*value).clone();
    }
    let mut tree = Value::Object(serde_json::Map::new());
    'paths: for (segments, value) in paths {
        let mut node = &mut tree;
        for (position, segment) in segments.iter().enumerate() {
            let Value::Object(map) = node else { continue 'paths };
            if position + 1 == segments.len() {
                map.entry(segment.to_string()).or_insert_with(|| value.clone());
                continue 'paths;
            }
            node = map.entry(segment.to_string()).or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
    }
    tree
}

/// The variables a condition or a template can read, by root name.
#[derive(Debug, Default)]
pub struct Scope<'a> {
    roots: Vec<(&'a str, &'a Value)>,
}

impl<'a> Scope<'a> {
    pub fn new() -> Scope<'a> {
        Scope { roots: Vec::new() }
    }

    pub fn with(mut self, name: &'a str, value: &'a Value) -> Scope<'a> {
        self.roots.push((name, value));
        self
    }

    pub fn roots(&self) -> impl Iterator<Item = (&'a str, &'a Value)> + '_ {
        self.roots.iter().copied()
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.roots.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The value at a dotted path, `null` where any part is missing.
    pub fn lookup(&self, path: &str) -> Value {
        let mut parts = path.split('.');
        let Some(mut value) = parts.next().and_then(|root| self.get(root)) else {
            return Value::Null;
        };
        for part in parts {
            match field(value, part) {
                Some(next) => value = next,
                None => return Value::Null,
            }
        }
        value.clone()
    }
}

/// Most fields an object may have for [`field`] to scan its keys rather than hash the one
/// asked for: below this, comparing keys costs less than one SipHash (serde_json's hasher).
const SCANNED_FIELDS_MAX: usize = 8;

/// The field `key` of a JSON object (`None` for anything else): what `Value::get` answers,
/// by a scan of the keys on small objects, the usual contact, event and step output.
pub fn field<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    let Value::Object(map) = value else { return None };
    if map.len() <= SCANNED_FIELDS_MAX {
        map.iter().find_map(|(name, value)| (name == key).then_some(value))
    } else {
        map.get(key)
    }
}

/// Converts JSON to a CEL value: integers stay integers, so `score >= 50` compares as ints.
pub fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match number_view(n) {
            Some(View::Int(i)) => CelValue::Int(i),
            Some(View::UInt(u)) => CelValue::UInt(u),
            Some(View::Float(f)) => CelValue::Float(f),
            _ => CelValue::Null,
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => {
            let entries: std::collections::HashMap<cel::objects::Key, CelValue> =
                map.iter().map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), json_to_cel(v))).collect();
            CelValue::Map(cel::objects::Map { map: Arc::new(entries) })
        }
    }
}

/// Collects the dotted paths an expression reads. Comprehension variables (`x` in
/// `list.exists(x, x > 1)`) are bound, not read from the scope, and are left out.
fn collect_paths(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    if let Some(segments) = dotted(&expr.expr) {
        if !bound.iter().any(|b| *b == segments[0]) {
            let path = segments.join(".");
            if !out.contains(&path) {
                out.push(path);
            }
        }
        return;
    }
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_paths(target, bound, out);
            }
            for arg in &call.args {
                collect_paths(arg, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            collect_paths(&c.iter_range, bound, out);
            let bound_len = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_paths(part, bound, out);
            }
            bound.truncate(bound_len);
        }
        Expr::List(list) => {
            for element in &list.elements {
                collect_paths(element, bound, out);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    collect_paths(&e.key, bound, out);
                    collect_paths(&e.value, bound, out);
                }
            }
        }
        Expr::Select(select) => collect_paths(&select.operand, bound, out),
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    collect_paths(&f.value, bound, out);
                }
            }
        }
    }
}

/// Every dotted path that is an operand of an ordering comparison anywhere in `expr`.
fn collect_ordered(expr: &IdedExpr, out: &mut Vec<String>) {
    use cel::common::ast::operators;
    match &expr.expr {
        Expr::Call(call) => {
            let ordering = [operators::LESS, operators::LESS_EQUALS, operators::GREATER, operators::GREATER_EQUALS];
            if call.target.is_none() && ordering.contains(&call.func_name.as_str()) {
                for arg in &call.args {
                    if let Some(segments) = dotted(&arg.expr) {
                        let path = segments.join(".");
                        if !out.contains(&path) {
                            out.push(path);
                        }
                    }
                }
            }
            if let Some(target) = &call.target {
                collect_ordered(target, out);
            }
            for arg in &call.args {
                collect_ordered(arg, out);
            }
        }
        Expr::Select(select) => collect_ordered(&select.operand, out),
        Expr::Comprehension(c) => {
            for part in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_ordered(part, out);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| collect_ordered(e, out)),
        _ => {}
    }
}

/// What each `has()` anywhere in `expr` tests: (the parent path, the tested path).
fn collect_tested(expr: &IdedExpr, out: &mut Vec<(String, String)>) {
    match &expr.expr {
        Expr::Select(select) => {
            if select.test
                && let Some(segments) = dotted(&select.operand.expr)
            {
                let parent = segments.join(".");
                let field = format!("{parent}.{}", select.field);
                let tested = (parent, field);
                if !out.contains(&tested) {
                    out.push(tested);
                }
            }
            collect_tested(&select.operand, out);
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_tested(target, out);
            }
            for arg in &call.args {
                collect_tested(arg, out);
            }
        }
        Expr::Comprehension(c) => {
            for part in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_tested(part, out);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| collect_tested(e, out)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    collect_tested(&e.key, out);
                    collect_tested(&e.value, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    collect_tested(&f.value, out);
                }
            }
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
    }
}

fn dotted(expr: &Expr) -> Option<Vec<&str>> {
    match expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(select) if !select.test => {
            let mut segments = dotted(&select.operand.expr)?;
            segments.push(select.field.as_str());
            Some(segments)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_number_compared_with_a_string_is_noted() {
        let c =
            Condition::compile("event.properties.id == steps.remember.id && event.name == 'x'", &["event", "steps"])
                .unwrap();
        let (event, steps) =
            (json!({ "properties": { "id": 123 }, "name": "x" }), json!({ "remember": { "id": "123" } }));
        let evaluation = c.eval(&Scope::new().with("event", &event).with("steps", &steps));
        assert_eq!(evaluation.result, Ok(false), "CEL never equates them");
        let notes = c.notes(&evaluation.inputs);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0]
                .starts_with("`event.properties.id` is the number 123 and `steps.remember.id` is the string \"123\""),
            "{}",
            notes[0]
        );
        let literal = Condition::compile("contact.age == '30'", &["contact"]).unwrap();
        let notes = literal.notes(&literal.eval(&Scope::new().with("contact", &json!({ "age": 30 }))).inputs);
        assert!(notes[0].starts_with("`contact.age` is the number 30 and the string \"30\""), "{notes:?}");
        let same = Condition::compile("contact.age == 30", &["contact"]).unwrap();
        assert!(same.notes(&same.eval(&Scope::new().with("contact", &json!({ "age": "30" }))).inputs).len() == 1);
        assert!(same.notes(&same.eval(&Scope::new().with("contact", &json!({ "age": 31 }))).inputs).is_empty());
    }

    #[test]
    fn mixed_comparisons_are_foreseen_from_literals_and_known_kinds() {
        let kind_of = |path: &str| path.starts_with("contact.scores.").then_some(Kind::Number);
        let ordered =
            Condition::compile(r#"contact.scores.engagement >= "40" || contact.plan == "pro""#, &["contact"]).unwrap();
        let found = ordered.mixed_comparisons(&kind_of);
        assert_eq!(
            found,
            vec![MixedComparison {
                left: ("contact.scores.engagement".into(), Kind::Number),
                right: ("\"40\"".into(), Kind::String),
                ordering: true,
            }],
            "the plan's kind depends on the data"
        );
        // What the warning says happens does: ordering a number against a string fails (CEL's
        // `||` absorbs the error when the other side is true).
        let contact = json!({ "scores": { "engagement": 50 }, "plan": "free" });
        assert!(ordered.eval(&Scope::new().with("contact", &contact)).result.is_err());
        let equal = Condition::compile("contact.scores.engagement == '40'", &["contact"]).unwrap();
        assert!(!equal.mixed_comparisons(&kind_of)[0].ordering);
        assert_eq!(equal.eval(&Scope::new().with("contact", &contact)).result, Ok(false));
        let fine = Condition::compile("contact.scores.engagement >= 40 && 1 == 1", &["contact"]).unwrap();
        assert!(fine.mixed_comparisons(&kind_of).is_empty());
    }

    #[test]
    fn orderings_without_a_has_guard_are_found_and_fail_on_a_missing_value() {
        let bare = Condition::compile("contact.scores.engagement >= 40 || contact.age < 18", &["contact"]).unwrap();
        assert_eq!(bare.unguarded_orderings(), ["contact.scores.engagement", "contact.age"]);
        // What the warning says happens does: a missing score cannot be ordered.
        assert!(bare.eval(&Scope::new().with("contact", &json!({}))).result.is_err());
        let guarded = Condition::compile(
            "has(contact.scores.engagement) && contact.scores.engagement >= 40 && contact.plan == 'pro'",
            &["contact"],
        )
        .unwrap();
        assert!(guarded.unguarded_orderings().is_empty());
        assert_eq!(guarded.eval(&Scope::new().with("contact", &json!({}))).result, Ok(false));
    }

    #[test]
    fn has_answers_false_for_a_missing_field_at_any_depth() {
        let condition = |source: &str| Condition::compile(source, &["contact"]).unwrap();
        for (contact, source, expected) in [
            (json!({}), "has(contact.scores.engagement)", false),
            (json!({}), "has(contact.a.b.c.d)", false),
            (json!({ "scores": null }), "has(contact.scores.engagement)", false),
            (json!({ "scores": {} }), "has(contact.scores.engagement)", false),
            (json!({ "scores": { "engagement": 40 } }), "has(contact.scores.engagement)", true),
            (json!({}), "has(contact.scores.engagement) && contact.scores.engagement >= 40", false),
            (
                json!({ "scores": { "engagement": 45 } }),
                "has(contact.scores.engagement) && contact.scores.engagement >= 40",
                true,
            ),
            (json!({}), "!has(contact.scores.engagement) || contact.scores.engagement < 40", true),
        ] {
            let evaluation = condition(source).eval(&Scope::new().with("contact", &contact));
            assert_eq!(evaluation.result, Ok(expected), "{source} on {contact}");
        }
        let read = condition("has(contact.scores.engagement)").eval(&Scope::new().with("contact", &json!({})));
        assert_eq!(read.inputs["contact.scores"], json!(null), "the decision record shows what was there");
    }

    #[test]
    fn records_the_paths_it_reads() {
        let c = Condition::compile("contact.scores.engagement >= 50 && 'vip' in contact.tags", &["contact"]).unwrap();
        assert_eq!(c.paths(), ["contact.scores.engagement", "contact.tags"]);
        let contact = json!({"scores": {"engagement": 60}, "tags": ["vip"]});
        let evaluation = c.eval(&Scope::new().with("contact", &contact));
        assert_eq!(evaluation.result, Ok(true));
        assert_eq!(evaluation.inputs["contact.scores.engagement"], json!(60));
    }

    #[test]
    fn rejects_unknown_variables_and_bad_syntax() {
        assert_eq!(
            Condition::compile("contcat.x == 1", &["contact", "event"]).unwrap_err(),
            CompileError::UnknownVariable { name: "contcat".into() }
        );
        assert!(matches!(Condition::compile("a ==", &["a"]), Err(CompileError::Syntax { .. })));
    }

    #[test]
    fn projection_keeps_what_is_read_and_nothing_else() {
        let contact = json!({"scores": {"engagement": 60, "fit": 3}, "tags": ["vip"], "notes": "long text"});
        let c = Condition::compile("contact.scores.engagement > 50 && size(contact.tags) == 1", &["contact"]).unwrap();
        let scope = Scope::new().with("contact", &contact);
        let inputs = c.eval(&scope).inputs;
        assert_eq!(project("contact", &inputs), json!({"scores": {"engagement": 60}, "tags": ["vip"]}));
        let c = Condition::compile("has(contact.notes) && contact.scores.fit == 3", &["contact"]).unwrap();
        let evaluation = c.eval(&scope);
        assert_eq!(evaluation.result, Ok(true), "a presence test reads the whole root");
        assert_eq!(project("contact", &evaluation.inputs), contact);
    }

    #[test]
    fn event_counts_are_literal_calls_on_events() {
        let c = Condition::compile(
            "events.count('Email Link Clicked', '30d') >= 2 || events.count('Purchase', '7d') == 0 \
             || events.count('Email Link Clicked', '30d') > 9",
            &["contact", "events"],
        )
        .unwrap();
        assert_eq!(
            c.event_counts().unwrap(),
            [("Email Link Clicked".to_owned(), "30d".to_owned()), ("Purchase".to_owned(), "7d".to_owned())]
        );
        let events = json!({ event_count_key("Email Link Clicked", "30d"): 3 });
        let evaluation = c.eval(&Scope::new().with("events", &events));
        assert_eq!(evaluation.result, Ok(true));
        assert_eq!(evaluation.inputs["events"], events, "the counts read are the decision's inputs");
        let none = json!({});
        let c = Condition::compile("events.count('Purchase', '7d') == 0", &["events"]).unwrap();
        assert_eq!(c.eval(&Scope::new().with("events", &none)).result, Ok(true), "an unbound count is 0");
        for bad in ["events.count(contact.name, '7d') > 1", "size(events) > 1", "events.count('A') > 1"] {
            let c = Condition::compile(bad, &["contact", "events"]).unwrap();
            assert!(c.event_counts().is_err(), "{bad}");
        }
    }

    #[test]
    fn comprehension_variables_are_not_scope_reads() {
        let c = Condition::compile("event.properties.items.exists(i, i.price > 10)", &["event"]).unwrap();
        assert_eq!(c.paths(), ["event.properties.items"]);
    }

    #[test]
    fn non_boolean_and_failing_expressions_are_errors_not_panics() {
        let v = json!({"n": 1});
        let c = Condition::compile("contact.n + 1", &["contact"]).unwrap();
        assert!(matches!(c.eval(&Scope::new().with("contact", &v)).result, Err(EvalError::NotBool(_))));
        let c = Condition::compile("contact.n + 'x' == 1", &["contact"]).unwrap();
        assert!(c.eval(&Scope::new().with("contact", &v)).result.is_err(), "adding a string to a number fails");
        let c = Condition::compile("contact.missing == 1", &["contact"]).unwrap();
        assert_eq!(c.eval(&Scope::new().with("contact", &v)).result, Ok(false), "a missing field reads as null");
    }

    #[test]
    fn field_answers_what_get_answers_on_small_and_large_objects() {
        for size in [0, 1, 3, SCANNED_FIELDS_MAX, SCANNED_FIELDS_MAX + 1, 40] {
            let object: serde_json::Map<String, Value> = (0..size).map(|i| (format!("k{i}"), json!(i))).collect();
            let value = Value::Object(object);
            for key in (0..size + 2).map(|i| format!("k{i}")).chain(["".to_owned(), "k".to_owned()]) {
                assert_eq!(field(&value, &key), value.get(&key), "size {size}, key {key}");
            }
        }
        for other in [json!(null), json!([1, 2]), json!("k0"), json!(3)] {
            assert_eq!(field(&other, "k0"), None);
        }
    }

    #[test]
    fn the_common_shapes_take_the_fast_form() {
        for (source, fast) in [
            ("contact.scores.engagement >= 50", true),
            ("event.properties.email_id == steps.thanks.effect_id", true),
            ("!(contact.plan == 'pro') || contact.seats > 10 && contact.active == true", true),
            ("contact.plan == null", true),
            ("has(contact.plan)", false),
            ("'vip' in contact.tags", false),
            ("size(contact.name) > 3", false),
        ] {
            let c = Condition::compile(source, &["contact", "event", "steps"]).unwrap();
            assert_eq!(c.fast.is_some(), fast, "{source}");
        }
        let c = Condition::compile("contact.score >= 50", &["contact"]).unwrap();
        let contact = json!({"score": 50.5});
        let evaluation = c.eval(&Scope::new().with("contact", &contact));
        assert!(evaluation.result.is_ok(), "a float against an int literal is left to CEL, which answers");
    }

    mod differential {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::super::*;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                (-3i64..4).prop_map(Value::from),
                Just(json!(i64::MAX)),
                Just(json!(i64::MIN)),
                Just(json!(u64::MAX)),
                Just(json!((i64::MAX as u64) + 1)),
                prop_oneof![Just(-1.5f64), Just(0.0), Just(2.0), Just(2.5), Just(1e300)].prop_map(|f| json!(f)),
                prop_oneof![Just(""), Just("a"), Just("b"), Just("pro"), Just("é")].prop_map(|s| json!(s)),
                any::<bool>().prop_map(Value::from),
                Just(Value::Null),
                Just(json!([1, 2])),
                Just(json!({"x": 1})),
            ]
        }

        fn literal() -> impl Strategy<Value = String> {
            prop_oneof![
                (0i64..4).prop_map(|i| i.to_string()),
                Just("9223372036854775807".to_owned()),
                (0u64..4).prop_map(|u| format!("{u}u")),
                Just("18446744073709551615u".to_owned()),
                prop_oneof![Just("0.0"), Just("2.0"), Just("2.5"), Just("1e300")].prop_map(str::to_owned),
                prop_oneof![Just("''"), Just("'a'"), Just("'b'"), Just("'pro'"), Just("'é'")].prop_map(str::to_owned),
                prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(str::to_owned),
            ]
        }

        fn operand() -> impl Strategy<Value = String> {
            prop_oneof![
                prop_oneof![Just("contact.a"), Just("contact.b"), Just("event.c"), Just("contact.missing")]
                    .prop_map(str::to_owned),
                literal(),
            ]
        }

        fn condition() -> impl Strategy<Value = String> {
            let comparison = (
                operand(),
                prop_oneof![Just("=="), Just("!="), Just("<"), Just("<="), Just(">"), Just(">=")],
                operand(),
            )
                .prop_map(|(l, op, r)| format!("{l} {op} {r}"));
            comparison.prop_recursive(3, 8, 2, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l}) && ({r})")),
                    (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l}) || ({r})")),
                    inner.prop_map(|c| format!("!({c})")),
                ]
            })
        }

        proptest! {
            /// Wherever the fast form answers, CEL gives the same answer.
            #[test]
            fn the_fast_form_agrees_with_cel(source in condition(), a in value(), b in value(), c in value()) {
                let condition = Condition::compile(&source, &["contact", "event"]).unwrap();
                let contact = json!({"a": a, "b": b});
                let event = json!({"c": c});
                let scope = Scope::new().with("contact", &contact).with("event", &event);
                let inputs = condition.inputs(&scope);
                if let Some(fast) = &condition.fast
                    && let Some(answer) = fast.eval(&inputs)
                {
                    prop_assert_eq!(condition.eval_cel(&inputs), Ok(answer), "{}", source);
                }
                prop_assert_eq!(condition.eval(&scope).result, condition.eval_cel(&inputs), "{}", source);
            }
        }
    }
}
