//! Flowmark's pure core: the workflow language and the deterministic run state machine.
//!
//! - [`parse::compile`] turns a YAML definition into a [`Workflow`], or into [`Diagnostic`]s
//!   that say where and why (`file:line:col`, what was expected, a hint).
//! - [`engine::handle`] decides what one [`engine::Input`] does to one [`engine::Run`] at a given
//!   `now`: the next state, history entries, effects for the outbox, timers, decision records.
//! - [`render::render_message`] turns a message effect into the email, webhook call or
//!   notification that goes out, when it goes out.
//!
//! Nothing here performs I/O, reads a clock or draws from a global random source: time and
//! stored facts arrive as arguments. That is what lets the same code run in the server, in
//! `flowmark simulate` over a virtual clock, and in property tests that replay histories.
//!
//! ```
//! use flowmark_core::{Source, compile};
//! let source = Source::new("hello.yaml", "id: hello\nsubject: contact\nsteps:\n  - id: done\n    exit: finished\n");
//! let compiled = compile(&source);
//! assert!(compiled.diagnostics.is_empty());
//! assert_eq!(compiled.workflow.unwrap().steps.len(), 1);
//! ```

pub mod diagnostic;
pub mod engine;
pub mod expr;
mod guard;
pub mod limits;
pub mod model;
pub mod parse;
pub mod render;
pub mod schedule;
pub mod template;
pub mod time;
mod validate;

pub use diagnostic::{Diagnostic, Severity, Source, Span};
pub use model::Workflow;
pub use parse::{Compiled, compile};
pub use time::{Duration, Timestamp};
