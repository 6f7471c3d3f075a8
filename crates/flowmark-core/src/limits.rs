//! Every limit of the workflow language and the run state machine, in one place.
//!
//! Each constant says why it has the value it has. Crossing a limit at the edge is a
//! diagnostic or an operating error that names the limit; inside the core it is an
//! assertion. Nothing here is configurable at run time: a limit that changes is a release.

/// Largest workflow definition file. A definition is code written by people; a file this
/// large is a mistake or an attack, and the parser keeps the whole tree in memory.
pub const DEFINITION_SIZE_BYTES_MAX: usize = 1024 * 1024;

/// Most steps in one workflow. Larger graphs stop being readable; split them with `subflow`.
pub const STEPS_COUNT_MAX: usize = 500;

/// Longest step or workflow id. Ids appear in URLs, logs and idempotency keys.
pub const ID_LENGTH_MAX: usize = 64;

/// Longest CEL condition. Conditions are meant to be read at a glance.
pub const CONDITION_LENGTH_MAX: usize = 4096;

/// Longest Liquid template (a whole HTML email fits comfortably).
pub const TEMPLATE_LENGTH_MAX: usize = 256 * 1024;

/// Most items one Liquid loop goes over when it is a range (`{% for i in (1..n) %}`). Liquid
/// builds the whole range before the first pass; a message needs tens of items, not millions.
/// A literal range past it is refused by validation, a computed one when the message renders.
pub const TEMPLATE_RANGE_COUNT_MAX: usize = 10_000;

/// Most passes of loop bodies in one rendering of a template, all loops and nesting counted
/// together: a product list or a digest is hundreds; a nested pair of loops over a range is
/// the shape that goes past.
pub const TEMPLATE_ITERATIONS_MAX: usize = 50_000;

/// Largest value one rendering may build: a filter's result (`append`, `join`, `replace`, …)
/// or a `capture`'s text. Stops `{% assign s = s | append: s %}` from doubling into gigabytes.
pub const TEMPLATE_VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Most bytes all the filters, `assign`s and `capture`s of one rendering may read and write
/// together. It bounds memory (everything a rendering builds passes through it) and stands in
/// for a time limit, which a deterministic core cannot have: a few tens of milliseconds of
/// work on any machine.
pub const TEMPLATE_WORK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Longest text one rendering writes (a whole HTML email with its loops fits comfortably;
/// Gmail clips a message past about 100 KB).
pub const TEMPLATE_OUTPUT_BYTES_MAX: usize = 1024 * 1024;

/// Deepest nesting of Liquid blocks (`if`, `for`, `case`, `capture`, …) in one template.
/// Liquid's parser recurses once per level, so thousands of levels overflow its stack; real
/// messages nest three or four.
pub const TEMPLATE_NESTING_MAX: usize = 64;

/// Most branches of one `branch`, `split` or `parallel` step.
pub const FANOUT_COUNT_MAX: usize = 32;

/// Most approvers of one approval step.
pub const APPROVERS_COUNT_MAX: usize = 32;

/// Most reminders of one approval step.
pub const REMINDERS_COUNT_MAX: usize = 8;

/// Shortest period of a repeating reminder (`remind: { every: … }`): an hour. People stop
/// reading reminders that come more often.
pub const REMINDER_EVERY_MS_MIN: u64 = 60 * 60 * 1000;

/// Holidays in a workflow's `working_days`.
pub const HOLIDAYS_COUNT_MAX: usize = 1_000;

/// Longest duration a workflow may name (`wait`, `timeout`, `due`): ten years, in ms.
/// Beyond that a timer is almost certainly a typo (`3650d` was meant as `365d`).
pub const DURATION_MS_MAX: u64 = 10 * 366 * 24 * 60 * 60 * 1000;

/// Most steps one input may execute in one run before the run fails. Validation already
/// rejects loops without a wait; this bounds what a bug or a pathological graph can cost.
pub const STEPS_PER_TRANSITION_MAX: u32 = 1_000;

/// Most tokens (parallel paths) alive in one run at once.
pub const TOKENS_COUNT_MAX: usize = 64;

/// How far back a wait for an event looks when it starts, so an event that arrived just
/// before the wait was registered still satisfies it (the race a wait must not lose).
pub const WAIT_LOOKBACK_MS: u64 = 5 * 60 * 1000;

/// Most recent events of a subject the shell hands to the core for the look-back: of the
/// names the workflows' waits listen for only, so other events never count against it.
pub const RECENT_EVENTS_COUNT_MAX: usize = 256;

/// Largest single event, as JSON; Segment's own limit, so its SDKs never meet a surprise.
pub const EVENT_SIZE_BYTES_MAX: usize = 32 * 1024;

/// Largest `/v1/batch` body; Segment's own limit.
pub const BATCH_SIZE_BYTES_MAX: usize = 500 * 1024;

/// Largest workflow definition accepted over HTTP (the same as from a file).
pub const REQUEST_SIZE_BYTES_MAX: usize = DEFINITION_SIZE_BYTES_MAX;

/// Longest chain of `emit`s: an event a run emits while it handles an event that was itself
/// emitted is one deeper. A chain this long is a loop between workflows (A emits what starts
/// B, B emits what starts A); the emit that would go deeper fails with a `step_failed` entry
/// instead of running forever.
pub const EMIT_DEPTH_MAX: u32 = 8;

/// Characters in the `Idempotency-Key` of a hand start (`POST /api/workflows/{id}/runs`).
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

const _: () = assert!(EVENT_SIZE_BYTES_MAX <= BATCH_SIZE_BYTES_MAX);
const _: () = assert!(BATCH_SIZE_BYTES_MAX <= REQUEST_SIZE_BYTES_MAX);
const _: () = assert!(TEMPLATE_LENGTH_MAX <= DEFINITION_SIZE_BYTES_MAX);
const _: () = assert!(CONDITION_LENGTH_MAX <= TEMPLATE_LENGTH_MAX);
const _: () = assert!(TEMPLATE_LENGTH_MAX <= TEMPLATE_OUTPUT_BYTES_MAX);
const _: () = assert!(TEMPLATE_VALUE_BYTES_MAX <= TEMPLATE_WORK_BYTES_MAX);
const _: () = assert!(FANOUT_COUNT_MAX <= TOKENS_COUNT_MAX);
const _: () = assert!(WAIT_LOOKBACK_MS < DURATION_MS_MAX);
