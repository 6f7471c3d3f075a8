//! The HTTP surface: health, Segment ingestion (`/v1/*`), and the API (`/api/*`).
//!
//! Errors are RFC 9457 problem details (`application/problem+json`) that say what was wrong.
//! Ingestion authenticates with a write key (HTTP Basic user with an empty password, or
//! `writeKey` in the body, as Segment's libraries send it); the API with a bearer token.
//!
//! Invariant: a request is answered `2xx` only after the owner has committed its effect.

use crate::api::{
    Admin, App, Eng, admin_object, ask, authorize, get_document, internal, json_object, problem, problem_with,
    put_document, query, query_owner, status_name,
};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use flowmark_core::Timestamp;
use std::collections::HashMap;

use flowmark_core::engine::{RunId, RunStatus};
use flowmark_core::limits::{
    BATCH_SIZE_BYTES_MAX, EVENT_SIZE_BYTES_MAX, IDEMPOTENCY_KEY_LENGTH_MAX, REQUEST_SIZE_BYTES_MAX,
};
use flowmark_runtime::{DeployError, StartRequest, Started};
use flowmark_store::{RunFilter, Scope, Store, WorkflowStatus};
use serde_json::{Value, json};

use crate::owner::{Command, Owner, now};
use crate::segment;

/// Keys given on the command line, on top of the tokens stored: write keys may ingest, API
/// tokens may do everything.
#[derive(Clone, Default)]
pub struct Config {
    pub write_keys: Vec<String>,
    pub admin_tokens: Vec<String>,
    /// The secret unsubscribe links are signed with; without it `/u/…` answers 404.
    pub unsubscribe_secret: Option<Vec<u8>>,
    /// Secrets inbound webhooks (`/hooks/{source}`) are verified with; none means the
    /// endpoint answers 404.
    pub inbound_webhook_secrets: Vec<flowmark_runtime::webhook::Secret>,
    /// Mark the web UI's session cookie `Secure` (the server is reached over https).
    pub secure_cookies: bool,
    /// The webhook URLs that answered `410 Gone`, shared with the webhook connectors:
    /// `/api/webhooks/gone` lists them and enables one again.
    pub gone_endpoints: flowmark_runtime::webhook::GoneEndpoints,
}

pub fn router(owner: Owner, config: Config) -> Router {
    let app = App { owner, config: Arc::new(config) };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/{kind}", post(ingest))
        .route("/api/workflows", post(deploy).get(workflows))
        .route("/api/workflows/{id}/runs", post(start_run))
        .route("/api/workflows/{id}/{action}", post(set_status))
        .route("/api/runs", get(runs))
        .route("/metrics", get(metrics))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/why", get(why))
        .route("/api/runs/{id}/tasks/{step}", post(complete_task))
        .route("/api/runs/{id}/approvals/{step}", post(decide_approval))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/workflows/{id}", get(workflow))
        .route("/api/contacts/import", post(import_contacts))
        .route("/api/contacts/{id}/scores", get(contact_scores))
        .route("/api/score-models", get(score_models).put(put_score_models))
        .route("/api/segments", get(segments).put(put_segments))
        .route("/api/contacts/{id}/segments", get(contact_segments))
        .route("/api/contacts/{id}", get(contact).put(upsert_contact))
        .route("/api/events", get(events))
        .route("/api/webhooks/gone", get(gone_endpoints).delete(enable_endpoint))
        .route("/api/openapi.json", get(openapi))
        .route("/u/{subject}/{signature}", get(unsubscribe_page).post(unsubscribe))
        .route("/hooks/{source}", post(inbound_webhook))
        .route("/t/c/{token}", get(track_click))
        .route("/t/o/{token}", get(track_open))
        .merge(crate::people::routes())
        .merge(crate::ui::routes())
        // Bodies past the largest limit are cut off by the framework (413); below it, each
        // endpoint checks its own limit and says which one was crossed (400).
        .layer(DefaultBodyLimit::max(REQUEST_SIZE_BYTES_MAX))
        .layer(axum::middleware::from_fn(too_large_as_problem))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(app)
}

/// The framework refuses a body over `REQUEST_SIZE_BYTES_MAX` with a plain-text 413; this
/// answers it as every other refusal is answered, a problem detail that names the limit.
async fn too_large_as_problem(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_problem {
        return response;
    }
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request too large",
        format!("the body is over {REQUEST_SIZE_BYTES_MAX} bytes (1 MiB), the limit for any request"),
    )
}

/// Logs each request with its outcome: server errors as errors, refusals at `info`, the rest
/// at `debug` (ingestion is too busy a path to log every success by default).
async fn log_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match status {
        500.. => tracing::error!(%method, %path, status, ms, "request failed"),
        400.. => tracing::info!(%method, %path, status, ms, "request refused"),
        _ => tracing::debug!(%method, %path, status, ms, "request"),
    }
    response
}

/// The write key from HTTP Basic (user part) or from the body's `writeKey`.
fn write_key(headers: &HeaderMap, body: &Value) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|userpass| userpass.split(':').next().unwrap_or_default().to_owned());
    from_header.or_else(|| body.get("writeKey").and_then(Value::as_str).map(str::to_owned))
}

/// A 400 for a body over the size of one event (`EVENT_SIZE_BYTES_MAX`), titled `title`.
fn over_event_size(title: &str, body: &[u8]) -> Option<Response> {
    (body.len() > EVENT_SIZE_BYTES_MAX).then(|| {
        let detail = format!("the body is {} bytes; the limit is {EVENT_SIZE_BYTES_MAX} bytes", body.len());
        problem(StatusCode::BAD_REQUEST, title, detail)
    })
}

async fn ingest(State(app): State<App>, Path(kind): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if body.len() > BATCH_SIZE_BYTES_MAX {
        return problem(
            StatusCode::BAD_REQUEST,
            "Batch too large",
            format!("the body is {} bytes; the limit is {BATCH_SIZE_BYTES_MAX} bytes (500 KB) per batch", body.len()),
        );
    }
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}"));
        }
    };
    if let Err(response) = authorize(&app, write_key(&headers, &value), Scope::Ingest).await {
        return response;
    }
    let received_at = now();
    // Each item is taken out of the body and becomes its event's payload without a copy.
    let batch = kind == "batch";
    let batch_context = if batch { value.get("context").cloned() } else { None };
    let items: Vec<Value> = if batch {
        let Some(Value::Array(items)) = value.get_mut("batch").map(Value::take) else {
            return problem(StatusCode::BAD_REQUEST, "Invalid batch", "a batch needs a `batch` array");
        };
        items
    } else if segment::KINDS.contains(&kind.as_str()) {
        vec![value]
    } else {
        return problem(StatusCode::NOT_FOUND, "Unknown call", format!("`/v1/{kind}` is not a Segment call"));
    };
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let item_kind = if batch { item.get("type").and_then(Value::as_str).unwrap_or_default() } else { &kind };
        let Some(item_kind) = segment::KINDS.iter().copied().find(|known| *known == item_kind) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid event",
                format!("batch item {index}: unknown type `{item_kind}`"),
            );
        };
        match segment::read(item_kind, item, batch_context.as_ref(), received_at) {
            Ok(message) => messages.push(message),
            Err(error) => {
                let detail = if batch { format!("batch item {index}: {error}") } else { error };
                return problem(StatusCode::BAD_REQUEST, "Invalid event", detail);
            }
        }
    }
    // One command, one commit: the whole call is durable before it is acknowledged.
    match ask(&app.owner, |reply| Command::Ingest { messages, reply }).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error),
        Err(response) => return response,
    }
    axum::Json(json!({ "success": true })).into_response()
}

async fn deploy(State(app): State<App>, _admin: Admin, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(source) = String::from_utf8(body.to_vec()) else {
        return problem(StatusCode::BAD_REQUEST, "Not text", "the workflow must be UTF-8 YAML");
    };
    let name = headers.get("x-flowmark-filename").and_then(|v| v.to_str().ok()).unwrap_or("workflow.yaml").to_owned();
    match query(&app.owner, move |engine, now| engine.deploy(&name, &source, now)).await {
        Ok(Ok((id, version))) => {
            (StatusCode::CREATED, axum::Json(json!({ "id": id, "version": version }))).into_response()
        }
        Ok(Err(DeployError::Invalid(diagnostics))) => problem_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid workflow",
            format!("the workflow has {} problem(s)", diagnostics.len()),
            json!({ "diagnostics": diagnostics }),
        ),
        Ok(Err(error)) => problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error.to_string()),
        Err(response) => response,
    }
}

async fn workflows(State(app): State<App>, _admin: Admin) -> Response {
    match query_owner(&app, |engine, _| engine.store().workflows()).await {
        Ok(list) => axum::Json(
            list.into_iter()
                .map(|w| {
                    json!({ "id": w.id, "version": w.latest_version, "status": status_name(w.status), "updated_at": w.updated_at })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(response) => response,
    }
}

/// A listing's `limit` parameter: `default` when absent; what is wrong with it when it is not
/// a whole number from 1 to `max`.
fn query_limit(params: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, String> {
    match params.get("limit").map(|v| v.parse::<usize>()) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!("`limit` must be a whole number from 1 to {max}")),
    }
}

/// Most gone webhook URLs one listing returns (newest first).
pub const GONE_ENDPOINTS_PAGE_COUNT_MAX: usize = 1000;

/// `GET /api/webhooks/gone[?limit=N]`: the webhook URLs that answered `410 Gone` and are not
/// called any more, newest first.
async fn gone_endpoints(
    State(app): State<App>,
    _admin: Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query_limit(&params, GONE_ENDPOINTS_PAGE_COUNT_MAX, GONE_ENDPOINTS_PAGE_COUNT_MAX) {
        Ok(limit) => limit,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid limit", detail),
    };
    match query_owner(&app, move |engine, _| engine.store().gone_endpoints(limit)).await {
        Ok(list) => axum::Json(
            list.into_iter()
                .map(|e| json!({ "url": e.url, "gone_at": e.gone_at.ms(), "reason": e.reason }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(response) => response,
    }
}

/// `DELETE /api/webhooks/gone?url=URL`: calls the URL again from the next effect on; `404`
/// when it is not disabled.
async fn enable_endpoint(
    State(app): State<App>,
    _admin: Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(url) = params.get("url").cloned() else {
        return problem(StatusCode::BAD_REQUEST, "Missing URL", "say which URL to enable: `?url=…`");
    };
    // Store and memory in one step on the owner thread: a dispatcher round in between could
    // otherwise store the URL again after it was forgotten here.
    let (forget, gone) = (url.clone(), app.config.gone_endpoints.clone());
    let forgotten = query_owner(&app, move |engine, _| {
        let stored = engine.forget_gone_endpoint(&forget)?;
        Ok(gone.forget(&forget) || stored)
    });
    match forgotten.await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "Not disabled", format!("`{url}` is not a disabled webhook URL")),
        Err(response) => response,
    }
}

/// Most runs one listing returns; page with filters.
pub const RUNS_PAGE_COUNT_MAX: usize = 1000;
const RUNS_PAGE_COUNT_DEFAULT: usize = 100;

async fn runs(State(app): State<App>, _admin: Admin, Query(params): Query<HashMap<String, String>>) -> Response {
    const KNOWN: [&str; 6] = ["workflow", "version", "status", "subject", "step", "limit"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Unknown filter",
            format!("`{unknown}` is not a filter; use {}", KNOWN.join(", ")),
        );
    }
    let number = |key: &str| {
        params.get(key).map(|v| v.parse::<u64>().map_err(|_| format!("`{key}` must be a whole number, not `{v}`")))
    };
    let version = match number("version").transpose() {
        Ok(v) => v.map(|v| v as u32),
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid filter", detail),
    };
    let limit = match number("limit").transpose() {
        Ok(Some(n)) if (1..=RUNS_PAGE_COUNT_MAX as u64).contains(&n) => n as usize,
        Ok(Some(n)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                format!("`limit` is {n}; it must be from 1 to {RUNS_PAGE_COUNT_MAX}"),
            );
        }
        Ok(None) => RUNS_PAGE_COUNT_DEFAULT,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid filter", detail),
    };
    let status = match params.get("status").map(String::as_str) {
        None => None,
        Some(name) if RunStatus::parse(name).is_some() => RunStatus::parse(name),
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                format!("`status` is `{other}`; use active, completed, converted, exited or failed"),
            );
        }
    };
    let filter = RunFilter {
        workflow_id: params.get("workflow").cloned(),
        version,
        status,
        subject_id: params.get("subject").cloned(),
        at: None,
    };
    let step = params.get("step").cloned();
    let listing = query(&app.owner, move |engine, _| -> Result<Vec<Value>, flowmark_runtime::Error> {
        let mut list = Vec::new();
        for run in engine.runs(&filter, step.as_deref(), limit)? {
            let workflow = engine.workflow(&run.workflow_id, Some(run.version))?;
            let steps: Vec<&str> = run.current_steps().map(|at| &*workflow.step(at).id).collect();
            list.push(json!({
                "id": run.id,
                "workflow": run.workflow_id,
                "version": run.version,
                "subject": run.subject_id,
                "status": run.status,
                "steps": steps,
                "started_at": run.started_at,
                "ended_at": run.ended_at,
            }));
        }
        Ok(list)
    });
    match listing.await {
        Ok(Ok(list)) => axum::Json(list).into_response(),
        Ok(Err(error)) => internal(error),
        Err(response) => response,
    }
}

async fn set_status(State(app): State<App>, _admin: Admin, Path((id, action)): Path<(String, String)>) -> Response {
    let status = match action.as_str() {
        "activate" => WorkflowStatus::Active,
        "pause" => WorkflowStatus::Paused,
        other => {
            return problem(
                StatusCode::NOT_FOUND,
                "Unknown action",
                format!("`{other}` is not an action; use activate or pause"),
            );
        }
    };
    let wanted = id.clone();
    match query(&app.owner, move |engine, now| engine.set_status(&wanted, status, now)).await {
        Ok(Ok(true)) => axum::Json(json!({ "id": id, "status": action })).into_response(),
        Ok(Ok(false)) => problem(StatusCode::NOT_FOUND, "No such workflow", format!("there is no workflow `{id}`")),
        Ok(Err(error)) => internal(error),
        Err(response) => response,
    }
}

async fn metrics(State(app): State<App>, _admin: Admin) -> Response {
    let page = query_owner(&app, |engine, _| {
        let durability = engine.store().durability();
        let dispatch = crate::metrics::Dispatch { in_flight: engine.in_flight(), connectors: engine.connector_stats() };
        let depth = engine.store().outbox_depth()?;
        Ok(crate::metrics::render(engine.stats(), depth, &dispatch, durability.as_deref()))
    });
    match page.await {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        Err(response) => response,
    }
}

async fn run(State(app): State<App>, _admin: Admin, Path(id): Path<String>) -> Response {
    let Some(id) = id.parse::<u64>().ok() else { return invalid_run_id(&id) };
    let detail = query_owner(&app, move |engine, _| {
        let store = engine.store();
        let Some(run) = store.run(RunId(id))? else { return Ok(None) };
        Ok(Some(json!({ "run": run, "history": store.history(run.id)?, "decisions": store.decisions(run.id)? })))
    });
    match detail.await {
        Ok(Some(run)) => axum::Json(run).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {id}")),
        Err(response) => response,
    }
}

/// The OpenAPI 3.1 document of this API. Public, like `/healthz`: it describes the API and
/// holds no data.
async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The OpenAPI document, written by hand beside the handlers; a test checks that it lists
/// exactly the routes `router` serves.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route `router` serves, as (method, path in OpenAPI's template syntax).
pub const ROUTES: [(&str, &str); 45] = [
    ("get", "/healthz"),
    ("post", "/v1/{kind}"),
    ("post", "/api/workflows"),
    ("get", "/api/workflows"),
    ("get", "/api/workflows/{id}"),
    ("post", "/api/workflows/{id}/{action}"),
    ("post", "/api/workflows/{id}/runs"),
    ("get", "/api/runs"),
    ("get", "/api/runs/{id}"),
    ("get", "/api/runs/{id}/why"),
    ("post", "/api/runs/{id}/tasks/{step}"),
    ("post", "/api/runs/{id}/approvals/{step}"),
    ("post", "/api/runs/{id}/cancel"),
    ("get", "/api/contacts/{id}"),
    ("put", "/api/contacts/{id}"),
    ("post", "/api/contacts/import"),
    ("get", "/api/contacts/{id}/scores"),
    ("get", "/api/score-models"),
    ("put", "/api/score-models"),
    ("get", "/api/segments"),
    ("put", "/api/segments"),
    ("get", "/api/contacts/{id}/segments"),
    ("get", "/api/events"),
    ("get", "/api/webhooks/gone"),
    ("delete", "/api/webhooks/gone"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/u/{subject}/{signature}"),
    ("post", "/u/{subject}/{signature}"),
    ("post", "/hooks/{source}"),
    ("get", "/t/c/{token}"),
    ("get", "/t/o/{token}"),
    ("get", "/api/directory"),
    ("put", "/api/directory"),
    ("get", "/api/people/{email}/work"),
    ("get", "/api/people/{email}/notifications"),
    ("get", "/api/people/{email}/calendar"),
    ("get", "/api/work/{id}"),
    ("post", "/api/work/{id}/{action}"),
    ("get", "/api/items/{id}/work"),
    ("get", "/api/items/{id}/comments"),
    ("post", "/api/items/{id}/comments"),
    ("post", "/api/items/{id}/attachments"),
    ("get", "/cal/people/{email}/{token}"),
    ("get", "/cal/workspace/{token}"),
];

fn invalid_run_id(id: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, "Invalid run id", format!("`{id}` is not a run id (a positive integer)"))
}

async fn workflow(
    State(app): State<App>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let version = match query.get("version").map(|v| v.parse::<u32>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid version", "`version` must be a whole number");
        }
    };
    let wanted = id.clone();
    let answer = query_owner(&app, move |engine, _| {
        let store = engine.store();
        let Some((version, source)) = store.workflow_source(&wanted, version)? else { return Ok(None) };
        let summary = store.workflows()?.into_iter().find(|w| w.id == wanted);
        Ok(Some(json!({
            "id": wanted,
            "version": version,
            "latest_version": summary.as_ref().map(|s| s.latest_version),
            "status": summary.map(|s| status_name(s.status)),
            "source": source,
        })))
    })
    .await;
    match answer {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => {
            problem(StatusCode::NOT_FOUND, "No such workflow", format!("there is no workflow `{id}` at that version"))
        }
        Err(response) => response,
    }
}

fn contact_json(contact: &flowmark_store::Contact) -> Value {
    json!({
        "id": contact.id,
        "traits": contact.traits,
        "timezone": contact.timezone,
        "updated_at": contact.updated_at,
    })
}

async fn contact(State(app): State<App>, _admin: Admin, Path(id): Path<String>) -> Response {
    let wanted = id.clone();
    match query_owner(&app, move |engine, _| engine.store().contact(&wanted)).await {
        Ok(Some(contact)) => axum::Json(contact_json(&contact)).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`")),
        Err(response) => response,
    }
}

/// Creates a contact or merges traits into it: `{"traits": {...}, "timezone": "Europe/Paris"}`.
async fn upsert_contact(State(app): State<App>, _admin: Admin, Path(id): Path<String>, body: Bytes) -> Response {
    if let Some(response) = over_event_size("Contact too large", &body) {
        return response;
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}"));
        }
    };
    let Value::Object(fields) = &value else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid contact",
            "the body must be an object with `traits` and/or `timezone`",
        );
    };
    if let Some(unknown) = fields.keys().find(|k| !["traits", "timezone"].contains(&k.as_str())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid contact",
            format!("`{unknown}` is not a field; use traits, timezone"),
        );
    }
    let traits = match fields.get("traits") {
        None => json!({}),
        Some(traits @ Value::Object(_)) => traits.clone(),
        Some(_) => return problem(StatusCode::BAD_REQUEST, "Invalid contact", "`traits` must be an object"),
    };
    let timezone = match fields.get("timezone") {
        None | Some(Value::Null) => None,
        Some(Value::String(tz)) if tz.parse::<chrono_tz::Tz>().is_ok() => Some(tz.clone()),
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid contact",
                format!("`timezone` is {other}; it must be an IANA time zone such as `Europe/Paris`"),
            );
        }
    };
    match query(&app.owner, move |engine, now| engine.put_contact(&id, &traits, timezone.as_deref(), now)).await {
        Ok(Ok(contact)) => axum::Json(contact_json(&contact)).into_response(),
        Ok(Err(error)) => internal(error),
        Err(response) => response,
    }
}

/// Most events one listing returns.
pub const EVENTS_PAGE_COUNT_MAX: usize = 1000;

/// A subject's events, oldest first: the newest `limit` (default 100) at or after `since`.
async fn events(State(app): State<App>, _admin: Admin, Query(query): Query<HashMap<String, String>>) -> Response {
    const KNOWN: [&str; 3] = ["subject", "since", "limit"];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Unknown filter",
            format!("`{unknown}` is not a filter; use {}", KNOWN.join(", ")),
        );
    }
    let Some(subject) = query.get("subject").cloned() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Missing subject",
            "give `subject`: events are listed per contact or item",
        );
    };
    let limit = match query_limit(&query, 100, EVENTS_PAGE_COUNT_MAX) {
        Ok(limit) => limit,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid filter", detail),
    };
    let since = match query.get("since").map(|v| chrono::DateTime::parse_from_rfc3339(v)) {
        None => Timestamp(i64::MIN),
        Some(Ok(at)) => Timestamp::from_chrono(&at.with_timezone(&chrono::Utc)),
        Some(Err(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                "`since` must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
            );
        }
    };
    match query_owner(&app, move |engine, _| engine.store().events_of_subject(&subject, since, limit)).await {
        Ok(events) => axum::Json(json!(
            events
                .iter()
                .map(|e| json!({ "messageId": e.id, "event": e.name, "at": e.at, "payload": e.payload }))
                .collect::<Vec<_>>()
        ))
        .into_response(),
        Err(response) => response,
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5\"><h1>{title}</h1>{body}</body></html>"
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn signed(app: &App, subject: &str, signature: &str) -> bool {
    app.config
        .unsubscribe_secret
        .as_deref()
        .is_some_and(|secret| flowmark_runtime::unsubscribe::verify(secret, subject, signature))
}

/// The page an unsubscribe link opens: a button, not an unsubscribe, because mail scanners
/// follow links; the button (and mail clients' one-click) POSTs.
async fn unsubscribe_page(State(app): State<App>, Path((subject, signature)): Path<(String, String)>) -> Response {
    if !signed(&app, &subject, &signature) {
        return page(StatusCode::NOT_FOUND, "Link not recognised", "<p>This unsubscribe link is not valid.</p>");
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        "<p>Stop receiving marketing email from us?</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\" autofocus>Unsubscribe</button></form>",
    )
}

/// RFC 8058 one-click unsubscribe: the contact is suppressed at once (no marketing email goes
/// out to it again, queued ones included) and an `Unsubscribed` event is recorded, which
/// workflows can exit on.
async fn unsubscribe(State(app): State<App>, Path((subject, signature)): Path<(String, String)>) -> Response {
    if !signed(&app, &subject, &signature) {
        return page(StatusCode::NOT_FOUND, "Link not recognised", "<p>This unsubscribe link is not valid.</p>");
    }
    let at = now();
    let event = flowmark_core::engine::Event {
        id: format!("unsubscribe:{subject}"),
        name: "Unsubscribed".to_owned(),
        at,
        payload: json!({ "type": "track", "event": "Unsubscribed", "userId": subject,
                         "properties": { "channel": "email", "method": "one-click" } })
        .into(),
    };
    let traits = json!({ flowmark_runtime::UNSUBSCRIBED_TRAIT: true });
    let incoming = flowmark_runtime::Incoming::with_traits(&subject, event, traits, None);
    match ingest_one(&app, incoming).await {
        Ok(()) => {
            page(StatusCode::OK, "You are unsubscribed", "<p>You will not receive marketing email from us again.</p>")
        }
        Err(response) => response,
    }
}

/// An inbound webhook, signed the Standard Webhooks way: verified against the configured
/// secrets, then ingested as an event for the body's `userId` (or `anonymousId`), named by its
/// `event` (default `Webhook Received`), with `webhook-id` as its `messageId`, so the
/// sender's retries are applied once. The signature is the credential: no token is needed.
async fn inbound_webhook(
    State(app): State<App>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if app.config.inbound_webhook_secrets.is_empty() {
        return problem(StatusCode::NOT_FOUND, "No inbound webhooks", "this server has no inbound webhook secret");
    }
    if let Some(response) = over_event_size("Webhook too large", &body) {
        return response;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    if id.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "Unsigned webhook", "a `webhook-id` header is required");
    }
    let now_s = now().ms().div_euclid(1000);
    let secrets = &app.config.inbound_webhook_secrets;
    if let Err(error) = flowmark_runtime::webhook::verify(secrets, &id, &timestamp, &signature, &body, now_s) {
        return problem(StatusCode::UNAUTHORIZED, "Bad signature", error.to_string());
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return problem(StatusCode::BAD_REQUEST, "Invalid webhook", "the body must be a JSON object"),
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}"));
        }
    };
    let subject = ["userId", "anonymousId"]
        .iter()
        .find_map(|k| value.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    // An ESP's bounce or complaint knows the address, not the contact: look it up.
    let subject = match (subject, value.get("email").and_then(Value::as_str)) {
        (Some(subject), _) => subject,
        (None, Some(email)) => {
            let wanted = email.to_owned();
            match query_owner(&app, move |engine, _| engine.store().contact_id_by_email(&wanted)).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    return problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Unknown contact",
                        format!("no contact has the email `{email}`"),
                    );
                }
                Err(response) => return response,
            }
        }
        (None, None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid webhook",
                "the body needs a `userId`, an `anonymousId` or the contact's `email`",
            );
        }
    };
    let name = value.get("event").and_then(Value::as_str).unwrap_or("Webhook Received").to_owned();
    let mut payload = value.clone();
    if let Value::Object(fields) = &mut payload {
        fields.insert("type".to_owned(), json!("track"));
        fields.insert("source".to_owned(), json!(source));
        fields.insert("event".to_owned(), json!(name));
    }
    let event = flowmark_core::engine::Event { id, name, at: now(), payload: payload.into() };
    let incoming = flowmark_runtime::Incoming::event(&subject, event);
    match ingest_one(&app, incoming).await {
        Ok(()) => (StatusCode::NO_CONTENT, ()).into_response(),
        Err(response) => response,
    }
}

/// A run explained step by step: `{"run": …, "lines": [{"at", "step", "text", "decision"}], "text": "…"}`.
async fn why(State(app): State<App>, _admin: Admin, Path(id): Path<String>) -> Response {
    let Some(number) = id.parse::<u64>().ok() else { return invalid_run_id(&id) };
    let answer = query_owner(&app, move |engine, _| {
        let store = engine.store();
        let Some(run) = store.run(RunId(number))? else { return Ok(None) };
        let lines = flowmark_runtime::why::explain(&store.history(run.id)?, &store.decisions(run.id)?);
        Ok(Some(json!({
            "run": { "id": run.id, "workflow": run.workflow_id, "version": run.version, "subject": run.subject_id, "status": run.status },
            "text": flowmark_runtime::why::render(&lines),
            "lines": lines,
        })))
    })
    .await;
    match answer {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {number}")),
        Err(response) => response,
    }
}

/// Contacts from a CSV body (the rules of `flowmark import contacts`): every row is checked
/// first and a bad file is refused whole with each row's errors (422); a good one is written
/// 1 000 rows per commit with a checkpoint, so sending the same file again after a failure
/// resumes it, and after a success changes nothing. A segment sweep pass starts right after.
async fn import_contacts(State(app): State<App>, _admin: Admin, body: Bytes) -> Response {
    let rows = match flowmark_runtime::import::read(body.as_ref()) {
        Ok(rows) => rows,
        Err(rejected) => {
            return problem_with(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid contacts",
                format!("{} problem(s); nothing was imported", rejected.total),
                json!({ "errors": rejected.errors, "total": rejected.total }),
            );
        }
    };
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect()
    };
    let checkpoint = format!("import:contacts:{digest}");
    let count = rows.len();
    match query_owner(&app, move |engine, now| {
        // The engine restarts the segment sweep: the rows join their segments now.
        engine.import_contacts(&rows, &checkpoint, now)
    })
    .await
    {
        Ok(imported) => axum::Json(json!({ "rows": count, "outcome": imported })).into_response(),
        Err(response) => response,
    }
}

async fn score_models(State(app): State<App>, headers: HeaderMap) -> Response {
    get_document(&app, &headers, |engine| engine.score_models().cloned(), json!({ "models": [] })).await
}

/// Replaces the workspace's score models: `{"models": [{"name", "half_life", "rules":
/// [{"event", "where", "add"}], "thresholds": [{"at", "event"}]}]}`.
async fn put_score_models(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    put_document(&app, &headers, &body, "score models", Eng::set_score_models).await
}

async fn segments(State(app): State<App>, headers: HeaderMap) -> Response {
    get_document(&app, &headers, |engine| engine.segments().cloned(), json!({ "segments": [] })).await
}

/// Replaces the workspace's segments: `{"segments": [{"name", "description", "where"}]}`.
async fn put_segments(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    put_document(&app, &headers, &body, "segments", Eng::set_segments).await
}

/// A contact's segments: whether it is a member of each, and what each condition says now
/// with the values it read.
async fn contact_segments(State(app): State<App>, _admin: Admin, Path(id): Path<String>) -> Response {
    let wanted = id.clone();
    match query_owner(&app, move |engine, now| engine.explain_segments(&wanted, now)).await {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`")),
        Err(response) => response,
    }
}

/// A contact's scores as they stand now (decayed) and its score history, newest first.
async fn contact_scores(State(app): State<App>, _admin: Admin, Path(id): Path<String>) -> Response {
    let wanted = id.clone();
    let answer = query_owner(&app, move |engine, now| {
        let Some(contact) = engine.store().contact(&wanted)? else { return Ok(None) };
        let mut traits = contact.traits;
        engine.decay_scores(&mut traits, now);
        let history = engine.store().score_history(&wanted, 1000)?;
        Ok(Some(json!({ "scores": traits.get("scores").cloned().unwrap_or(json!({})), "history": history })))
    })
    .await;
    match answer {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`")),
        Err(response) => response,
    }
}

/// Records an engagement event for a tracking token's contact, in the Segment shape journeys
/// wait for (`properties.email_id` is the sending effect's key).
async fn record_engagement(
    app: &App,
    tracked: &flowmark_runtime::tracking::Tracked,
    name: &str,
    id: String,
) -> Result<(), Response> {
    let mut properties = json!({ "email_id": tracked.key });
    if !tracked.url.is_empty() {
        properties["url"] = json!(tracked.url);
    }
    let event = flowmark_core::engine::Event {
        id,
        name: name.to_owned(),
        at: now(),
        payload: json!({ "type": "track", "event": name, "userId": tracked.subject, "properties": properties }).into(),
    };
    ingest_one(app, flowmark_runtime::Incoming::event(&tracked.subject, event)).await
}

/// Ingests one event the server made itself (an unsubscribe, a click, an inbound webhook),
/// committed before the answer.
async fn ingest_one(app: &App, incoming: flowmark_runtime::Incoming) -> Result<(), Response> {
    match ask(&app.owner, |reply| Command::Ingest { messages: vec![incoming], reply }).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error)),
        Err(response) => Err(response),
    }
}

fn tracked(app: &App, token: &str) -> Option<flowmark_runtime::tracking::Tracked> {
    let secret = app.config.unsubscribe_secret.as_deref()?;
    flowmark_runtime::tracking::read(secret, token)
}

/// A tracked link: records `Email Link Clicked`, then redirects to where the link pointed.
async fn track_click(State(app): State<App>, Path(token): Path<String>) -> Response {
    let Some(tracked) = tracked(&app, &token).filter(|t| !t.url.is_empty()) else {
        return page(StatusCode::NOT_FOUND, "Link not recognised", "<p>This link is not valid.</p>");
    };
    // Every click counts: the id is the effect, the moment and the link.
    let id = format!("click:{}:{}:{}", tracked.key, now().ms(), tracked.url);
    if record_engagement(&app, &tracked, flowmark_runtime::tracking::CLICKED_EVENT, id).await.is_err() {
        tracing::warn!(effect = %tracked.key, "a click could not be recorded; redirecting anyway");
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(&tracked.url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The open pixel: records `Email Opened` once per email, answers a transparent GIF.
async fn track_open(State(app): State<App>, Path(token): Path<String>) -> Response {
    const GIF: &[u8] = &[
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00,
        0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
    ];
    if let Some(tracked) = tracked(&app, &token) {
        let id = format!("open:{}", tracked.key);
        let _ = record_engagement(&app, &tracked, flowmark_runtime::tracking::OPENED_EVENT, id).await;
    }
    ([(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store")], GIF).into_response()
}

/// Delivers a person's input to a run and answers with the run as it stands, or `409` with
/// the reason the run gave for ignoring it (not waiting at that step, not that person's role,
/// already decided, the run has ended).
async fn deliver(app: &App, id: &str, input: flowmark_core::engine::Input) -> Response {
    let Some(number) = id.parse::<u64>().ok() else { return invalid_run_id(id) };
    let answer = query(&app.owner, move |engine, now| -> Result<Option<(Option<String>, Value)>, String> {
        let transition = engine.deliver(RunId(number), &input, now).map_err(|e| e.to_string())?;
        let Some(t) = transition else { return Ok(None) };
        let ignored = t.history.iter().find_map(|h| match &h.kind {
            flowmark_core::engine::HistoryKind::InputIgnored { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        let workflow = engine.workflow(&t.run.workflow_id, Some(t.run.version)).map_err(|e| e.to_string())?;
        let steps: Vec<String> = t.run.current_steps().map(|at| workflow.step(at).id.to_string()).collect();
        Ok(Some((ignored, json!({ "id": t.run.id, "status": t.run.status, "steps": steps }))))
    })
    .await;
    match answer {
        Ok(Ok(Some((None, run)))) => axum::Json(run).into_response(),
        Ok(Ok(Some((Some(reason), _)))) => problem(StatusCode::CONFLICT, "Input ignored", reason),
        Ok(Ok(None)) => problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {number}")),
        Ok(Err(error)) => internal(error),
        Err(response) => response,
    }
}

/// Completes a task: `{"by": "sam@example.com", "fields": {"keywords": "…"}}`.
async fn complete_task(
    State(app): State<App>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = match admin_object(&app, &headers, &body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let Some(by) = fields.get("by").and_then(Value::as_str).filter(|b| !b.is_empty()).map(str::to_owned) else {
        return problem(StatusCode::BAD_REQUEST, "Invalid input", "say who completed the task: `by`");
    };
    match crate::people::parse_action("complete", &fields) {
        Ok(flowmark_runtime::WorkAction::Complete { fields }) => {
            deliver(&app, &id, flowmark_core::engine::Input::TaskCompleted { step, by, fields }).await
        }
        Ok(_) => internal("`complete` parsed as another action"),
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid input", detail),
    }
}

/// Decides an approval: `{"role": "editor", "by": "dana@example.com", "decision": "approve" |
/// "approve_with_changes" | "request_changes" | "reject", "comment": "…"}`.
async fn decide_approval(
    State(app): State<App>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = match admin_object(&app, &headers, &body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
    let (Some(role), Some(by)) = (text("role"), text("by")) else {
        return problem(StatusCode::BAD_REQUEST, "Invalid input", "say who decides and in which role: `by`, `role`");
    };
    match crate::people::parse_action("decide", &fields) {
        Ok(flowmark_runtime::WorkAction::Decide { decision, comment }) => {
            let input = flowmark_core::engine::Input::ApprovalDecided { step, role, by, decision, comment };
            deliver(&app, &id, input).await
        }
        Ok(_) => internal("`decide` parsed as another action"),
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid input", detail),
    }
}

/// Cancels a run: `{"reason": "…"}` (optional). The run ends as exited.
async fn cancel_run(State(app): State<App>, _admin: Admin, Path(id): Path<String>, body: Bytes) -> Response {
    let reason = if body.is_empty() {
        "cancelled over the API".to_owned()
    } else {
        match json_object(&body) {
            Ok(fields) => fields.get("reason").and_then(Value::as_str).unwrap_or("cancelled over the API").to_owned(),
            Err((title, detail)) => return problem(StatusCode::BAD_REQUEST, title, detail),
        }
    };
    deliver(&app, &id, flowmark_core::engine::Input::Cancel { reason }).await
}

/// Starts a run by hand: `{"subject": "<contact or item id>"}`. The workflow must be active;
/// its entry rule decides (`409` when it refuses).
/// `POST /api/workflows/{id}/runs`: starts a run by hand with `{"subject": …}` and, optionally,
/// the event it starts on, `"event": {"name": …, "properties": {…}}` (readable as `event` in
/// the workflow). Answers once the run's first commit is durable, with where it stands then
/// (`status`, and `steps`, what its steps produced): a workflow without waits has run to its
/// end, so a caller gets its result in the response. Concurrent starts share a commit.
async fn start_run(
    State(app): State<App>,
    _admin: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(response) = over_event_size("Start too large", &body) {
        return response;
    }
    let idempotency_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid idempotency key", detail),
    };
    let request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => match start_request(&id, fields) {
            Ok(request) => StartRequest { idempotency_key, ..request },
            Err(detail) => return problem(StatusCode::BAD_REQUEST, "Invalid start", detail),
        },
        Ok(_) => return problem(StatusCode::BAD_REQUEST, "Invalid start", "the body must be a JSON object"),
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}"));
        }
    };
    let answer = match ask(&app.owner, |reply| Command::Start { requests: vec![request], reply }).await {
        Ok(Ok(mut answers)) => answers.pop(),
        Ok(Err(error)) => return internal(error),
        Err(response) => return response,
    };
    match answer {
        Some(Started::Run { id: run, status, outputs, replayed }) => {
            let body = json!({ "run": run, "status": status, "steps": outputs });
            let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
            if replayed {
                // The answer to a retry: the run an earlier call with this key started.
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Some(Started::KeyReused { run }) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency key reused",
            format!(
                "this Idempotency-Key started run {} for another subject or with another event; a retry must \
                 repeat the start as it was, and a new start needs a new key",
                run.0
            ),
        ),
        Some(Started::EntryRefused) => problem(
            StatusCode::CONFLICT,
            "Entry refused",
            format!("the entry rule of `{id}` does not let this subject start again now"),
        ),
        Some(Started::UnknownWorkflow) => {
            problem(StatusCode::NOT_FOUND, "No such workflow", format!("there is no workflow `{id}`"))
        }
        Some(Started::Paused) => {
            problem(StatusCode::CONFLICT, "Workflow paused", format!("`{id}` is paused; activate it first"))
        }
        None => internal("the engine gave no answer for the start"),
    }
}

/// The `Idempotency-Key` header of a start, if sent: 1 to `IDEMPOTENCY_KEY_LENGTH_MAX`
/// visible ASCII characters (a UUID is the usual choice).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| "the Idempotency-Key header must be visible ASCII".to_owned())?.trim();
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LENGTH_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} visible ASCII characters, such as a UUID"
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The start a body asks for, or what is wrong with it.
fn start_request(workflow: &str, mut fields: serde_json::Map<String, Value>) -> Result<StartRequest, String> {
    const SHAPE: &str = "the body must be {\"subject\": \"<contact or item id>\"}, with an optional \
        \"event\": {\"name\": \"…\", \"properties\": {…}}";
    if let Some(key) = fields.keys().find(|k| !matches!(k.as_str(), "subject" | "event")) {
        return Err(format!("unknown field `{key}`: {SHAPE}"));
    }
    let subject = match fields.remove("subject") {
        Some(Value::String(subject)) if !subject.is_empty() => subject,
        _ => return Err(format!("`subject` must be a non-empty string: {SHAPE}")),
    };
    let event = match fields.remove("event") {
        None => None,
        Some(Value::Object(mut event)) => {
            if let Some(key) = event.keys().find(|k| !matches!(k.as_str(), "name" | "properties")) {
                return Err(format!("unknown field `event.{key}`: {SHAPE}"));
            }
            let name = match event.remove("name") {
                Some(Value::String(name)) if !name.is_empty() => name,
                _ => return Err(format!("`event.name` must be a non-empty string: {SHAPE}")),
            };
            let properties = match event.remove("properties") {
                None => Value::Object(Default::default()),
                Some(properties @ Value::Object(_)) => properties,
                Some(_) => return Err(format!("`event.properties` must be an object: {SHAPE}")),
            };
            Some((name, properties))
        }
        Some(_) => return Err(format!("`event` must be an object: {SHAPE}")),
    };
    Ok(StartRequest { workflow_id: workflow.to_owned(), subject_id: subject, event, idempotency_key: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists exactly the routes the router serves, each with its
    /// responses, and names its security for every route but the public ones.
    #[test]
    fn openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = Vec::new();
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                documented.push((method.clone(), path.clone()));
                assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
                let public = [
                    "/healthz",
                    "/api/openapi.json",
                    "/u/{subject}/{signature}",
                    "/hooks/{source}",
                    "/t/c/{token}",
                    "/t/o/{token}",
                    "/cal/people/{email}/{token}",
                    "/cal/workspace/{token}",
                ]
                .contains(&path.as_str());
                assert_eq!(operation["security"].as_array().unwrap().is_empty(), public, "{method} {path}");
            }
        }
        let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        // Every schema referenced exists.
        let text = OPENAPI;
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name} is referenced but not defined");
        }
    }
}
