//! Flowmark's server: Segment-compatible ingestion and the HTTP API, over the runtime.
//!
//! The runtime's `Engine` is a single writer, so it lives on one owner thread ([`owner`]);
//! HTTP handlers send it commands and await its answers. The owner reads the system clock
//! (the only place that does), fires due timers and dispatches the outbox between commands.
//!
//! An event is answered `200` only after the owner committed it: acknowledged means durable.
//!
//! Invariant: handlers run their work on the owner thread; they read through
//! `Engine::store()` and write only through `Engine` methods (a tidy test checks it).

mod api;
pub mod auth;
pub mod clock;
mod http;
pub mod listen;
mod metrics;
mod openapi;
mod outbox_api;
pub mod owner;
mod people;
pub mod segment;
pub mod syncer;
pub mod throttle;
mod ui;
mod workspace_api;
pub mod workspaces;

pub use http::{Config, openapi_document, router};
pub use owner::{Owner, ServerStore};
pub use workspaces::{Tenant, Workspaces};
