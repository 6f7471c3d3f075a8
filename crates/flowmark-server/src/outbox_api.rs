//! The HTTP API of the outbox's dead letters: the effects that will not be attempted again
//! by themselves (failed for good, or quarantined because their attempts kept ending with no
//! outcome), and requeueing a quarantined one once a person has fixed the cause.
//!
//! Invariant: only a quarantined effect is requeued; a failed one has told its run already,
//! and attempting it again would tell it twice.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::{Admin, Answer, App, Shared, admin_object, problem, query_limit, query_owner};
use crate::openapi::schema;

/// Most dead letters one listing returns (newest first).
pub const DEAD_LETTERS_PAGE_COUNT_MAX: usize = 1000;

pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(routes!(dead_letters)).routes(routes!(requeue))
}

#[utoipa::path(
    get,
    path = "/api/outbox/dead-letters",
    operation_id = "listDeadLetters",
    tag = "operations",
    summary = "Effects that will not be attempted again by themselves, newest first",
    description = "`failed`: given up on (a final error, or the retries spent); the run was told. `quarantined`: set aside because 3 attempts in a row ended with no outcome at all (the server stopped or died while performing it), so it cannot crash-loop the server; its run waits until it is requeued.",
    params(
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default and most: 1000)."),
    ),
    responses(
        (status = 200, description = "The dead letters.", body = schema::DeadLetters),
        (status = 400, description = "An invalid limit.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn dead_letters(app: App, _admin: Admin, Query(params): Query<HashMap<String, String>>) -> Answer {
    let limit = query_limit(&params, DEAD_LETTERS_PAGE_COUNT_MAX, DEAD_LETTERS_PAGE_COUNT_MAX)
        .map_err(|detail| problem(StatusCode::BAD_REQUEST, "Invalid limit", detail))?;
    let letters = query_owner(&app, move |engine, _| engine.store().dead_letters(limit)).await?;
    let letters: Vec<Value> = letters
        .into_iter()
        .map(|letter| {
            json!({
                "key": letter.key, "run": letter.run.0, "step": letter.step, "status": letter.status,
                "effect": letter.effect, "attempts": letter.attempts, "result": letter.result,
                "created_at": letter.created_at.ms(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "dead_letters": letters })).into_response())
}

#[utoipa::path(
    post,
    path = "/api/outbox/requeue",
    operation_id = "requeueEffect",
    tag = "operations",
    summary = "Attempt a quarantined effect again",
    description = "Puts the effect back in the outbox, ready now, with its lost attempts forgiven. Fix what made it crash first: three more attempts that end with no outcome quarantine it again.",
    request_body(content = schema::Requeue, content_type = "application/json"),
    responses(
        (status = 200, description = "Requeued.", body = schema::Updated),
        (status = 400, description = "No `key`.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No quarantined effect has that key.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn requeue(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    let fields = admin_object(&app, &headers, &body).await?;
    let Some(key) = fields.get("key").and_then(Value::as_str).map(str::to_owned) else {
        return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", "name the effect: `key`"));
    };
    let wanted = key.clone();
    if query_owner(&app, move |engine, now| engine.requeue_effect(&wanted, now)).await? {
        tracing::warn!(effect = %key, "quarantined effect requeued by a person");
        Ok(axum::Json(json!({ "updated": true })).into_response())
    } else {
        Err(problem(StatusCode::NOT_FOUND, "Not quarantined", format!("no quarantined effect has the key `{key}`")))
    }
}
