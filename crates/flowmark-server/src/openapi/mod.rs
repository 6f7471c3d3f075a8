//! The OpenAPI 3.1 document, generated from the handlers.
//!
//! Each API handler carries a `#[utoipa::path]` attribute (method, path, `operationId`,
//! parameters, bodies, responses, security) and is registered through `utoipa_axum`'s
//! `routes!`, which takes the route from that attribute: a handler cannot be served on the
//! API without being described, and the path it is described at is the path it is served at.
//! The body schemas are JSON Schemas kept in `schemas.json` beside this file, one per name in
//! `schema`; handlers name them as types (`body = schema::Contact`), and a test checks that
//! every name referenced is defined and every schema defined is referenced.
//!
//! Only the web UI's HTML pages (`/ui/...`) are routed outside this document (a tidy test
//! checks that no other plain route exists).

use std::borrow::Cow;

use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};

/// The named body schemas. Each is a type handlers can name in `#[utoipa::path]`; its JSON
/// Schema is the entry of the same name in `schemas.json`.
pub(crate) mod schema {
    use super::*;

    macro_rules! schemas {
        ($($name:ident),* $(,)?) => {
            $(
                // Some are only referenced from inside other schemas, never by a handler.
                #[allow(dead_code)]
                pub(crate) struct $name;
                impl utoipa::PartialSchema for $name {
                    fn schema() -> RefOr<Schema> {
                        // Replaced by the entry of `schemas.json` when the document is built.
                        RefOr::T(Schema::default())
                    }
                }
                impl utoipa::ToSchema for $name {
                    fn name() -> Cow<'static, str> {
                        Cow::Borrowed(stringify!($name))
                    }
                }
            )*
            /// Every schema name, as `schemas.json` must define them.
            #[cfg(test)]
            pub(crate) const NAMES: &[&str] = &[$(stringify!($name)),*];
        };
    }

    schemas! {
        Problem, Timestamp, WorkflowSummary, WorkflowVersion, RunStatus, RunSummary, RunDetail, Contact,
        ContactUpsert, Event, SegmentCall, ScoreModels, Segments, Directory, WorkItem, Comment, Notification,
        GoneEndpoint, OpenApiDocument, SegmentCallKind, Acknowledged, Deployed, WorkflowAction, StatusChanged,
        StartRun, RunStarted, OneClickUnsubscribe, InboundEvent, Why, ImportReport, ContactScores,
        SegmentMembership, Pixel, TaskCompletion, RunState, ApprovalDecision, Cancellation, WorkKind, WorkList,
        NotificationList, WorkAction, WorkActionRequest, CommentList, NewComment, NewAttachment, Updated, Account,
        CalendarFeeds, Erasure, Clock, ClockAdvance, ContactExport, Workspace, WorkspaceList, NewWorkspace,
        WorkspaceCreated, DeadLetters, Requeue, WorkspaceSettings,
    }
}

/// A problem-detail response with `description`.
fn problem_response(description: &str) -> RefOr<utoipa::openapi::response::Response> {
    let schema = utoipa::openapi::Ref::from_schema_name("Problem");
    let content = utoipa::openapi::content::Content::new(Some(schema));
    RefOr::T(
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content("application/problem+json", content)
            .build(),
    )
}

/// The refusals of every route behind credentials whose missing scope is all a `403` means
/// there: `401`, `403` and `429` (the owner's queue is full; every such route asks it).
pub(crate) struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses() -> std::collections::BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let mut responses = Unauthenticated::responses();
        responses.insert("403".into(), problem_response("The token lacks the scope."));
        responses
    }
}

/// `401` and `429`, for the routes that say themselves what their `403` means.
pub(crate) struct Unauthenticated;

impl utoipa::IntoResponses for Unauthenticated {
    fn responses() -> std::collections::BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        [
            ("401".to_owned(), problem_response("No credentials, or unknown ones.")),
            ("429".to_owned(), problem_response("The server's queue is full; retry after `Retry-After` seconds.")),
        ]
        .into()
    }
}

/// The body schemas, by name.
const SCHEMAS: &str = include_str!("schemas.json");

/// The document's fixed part: what the API is and how it authenticates. Paths come from the
/// routers (`utoipa_axum::router::OpenApiRouter::with_openapi(base())`).
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.description =
        Some("An API token (`flowmark token create`) or a `--api-token` given to `flowmark serve`.".into());
    let mut write_key = Http::new(HttpAuthScheme::Basic);
    write_key.description = Some(
        "Segment's convention: the write key (or an `ingest` token) as the user, an empty password. `writeKey` in \
         the body works too."
            .into(),
    );
    let components = utoipa::openapi::ComponentsBuilder::new()
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .security_scheme("writeKey", SecurityScheme::Http(write_key))
        .build();
    utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Flowmark API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Flowmark's HTTP API: Segment-compatible ingestion under `/v1`, workflows, runs, contacts, \
                     events, people and work under `/api`. Errors are RFC 9457 problem details. Every endpoint but \
                     `/healthz`, this document, the links sent to people (`/u`, `/t`) and the calendar feeds \
                     (`/cal`, whose URLs carry their own secret) needs credentials: a write key or a token with \
                     the `ingest` scope for `/v1`, a bearer token with the `admin` scope for the rest (or the \
                     `read` scope, for every `GET`).",
                ))
                .build(),
        )
        .components(Some(components))
        .build()
}

/// The document as served: the generated paths with the body schemas of `schemas.json`.
pub(crate) fn finish(document: utoipa::openapi::OpenApi) -> String {
    let mut value = serde_json::to_value(&document).expect("an OpenAPI document serialises");
    let schemas: Value = serde_json::from_str(SCHEMAS).expect("schemas.json is JSON (a unit test reads it)");
    value["components"]["schemas"] = schemas;
    serde_json::to_string_pretty(&value).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_schema_is_defined_once_and_nothing_else_is() {
        let schemas: serde_json::Map<String, Value> = serde_json::from_str(SCHEMAS).unwrap();
        let mut defined: Vec<&str> = schemas.keys().map(String::as_str).collect();
        let mut named = schema::NAMES.to_vec();
        defined.sort_unstable();
        named.sort_unstable();
        assert_eq!(defined, named);
    }
}
