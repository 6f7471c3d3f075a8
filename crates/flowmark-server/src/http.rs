//! The HTTP surface: health, Segment ingestion (`/v1/*`), and the API (`/api/*`).
//!
//! Errors are RFC 9457 problem details (`application/problem+json`) that say what was wrong.
//! Ingestion authenticates with a write key (HTTP Basic user with an empty password, or
//! `writeKey` in the body, as Segment's libraries send it); the API with a bearer token.
//!
//! Invariant: a request is answered `2xx` only after the owner has committed its effect.

use crate::api::{
    Admin, Answer, App, Eng, Problem, Shared, ask, authorize, get_document, internal, json_object, problem,
    problem_with, put_document, query, query_limit, query_owner, status_name,
};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowmark_core::Timestamp;
use std::collections::HashMap;
use utoipa_axum::{router::OpenApiRouter, routes};

use flowmark_core::engine::{RunId, RunStatus};
use flowmark_core::limits::{
    BATCH_SIZE_BYTES_MAX, EVENT_SIZE_BYTES_MAX, IDEMPOTENCY_KEY_LENGTH_MAX, REQUEST_SIZE_BYTES_MAX,
};
use flowmark_runtime::{DeployError, StartRequest, Started};
use flowmark_store::{RunFilter, Scope, Store, WorkflowStatus};
use serde_json::{Value, json};

use crate::openapi::schema;
use crate::owner::{Command, now};
use crate::segment;
use crate::workspaces::Workspaces;

/// Keys given on the command line, on top of the tokens stored: write keys may ingest, API
/// tokens may do everything.
#[derive(Clone, Default)]
pub struct Config {
    pub write_keys: Vec<String>,
    pub admin_tokens: Vec<String>,
    /// Secrets the `default` workspace's inbound webhooks (`/hooks/{source}`) are verified
    /// with; none means the endpoint answers 404.
    pub inbound_webhook_secrets: Vec<flowmark_runtime::webhook::Secret>,
    /// Mark the web UI's session cookie `Secure` (the server is reached over https).
    pub secure_cookies: bool,
    /// How long a request's body may take to arrive once its head has (`None`:
    /// `BODY_READ_TIMEOUT`).
    pub body_read_timeout: Option<std::time::Duration>,
}

/// The API's routes, each described by its handler's `#[utoipa::path]`.
fn api() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(health))
        .routes(routes!(clock))
        .routes(routes!(advance_clock))
        .routes(routes!(openapi))
        .routes(routes!(ingest))
        .routes(routes!(deploy, workflows))
        .routes(routes!(workflow))
        .routes(routes!(start_run))
        .routes(routes!(set_status))
        .routes(routes!(runs))
        .routes(routes!(metrics))
        .routes(routes!(run))
        .routes(routes!(why))
        .routes(routes!(complete_task))
        .routes(routes!(decide_approval))
        .routes(routes!(cancel_run))
        .routes(routes!(import_contacts))
        .routes(routes!(contact_scores))
        .routes(routes!(score_models, put_score_models))
        .routes(routes!(segments, put_segments))
        .routes(routes!(contact_segments))
        .routes(routes!(contact, upsert_contact, erase_contact))
        .routes(routes!(export_contact))
        .routes(routes!(events))
        .routes(routes!(gone_endpoints, enable_endpoint))
        .routes(routes!(unsubscribe_page, unsubscribe))
        .routes(routes!(inbound_webhook))
        .routes(routes!(track_click))
        .routes(routes!(track_open))
        .merge(crate::people::routes())
        .merge(crate::ui::api_routes())
        .merge(crate::workspace_api::routes())
        .merge(crate::outbox_api::routes())
}

/// The OpenAPI document of every route `router` serves but the web UI's pages.
pub fn openapi_document() -> String {
    crate::openapi::finish(api().split_for_parts().1)
}

/// The server's routes over its workspaces: each request is first routed to one workspace
/// (`api::route`), then to its handler.
pub fn router(workspaces: Workspaces, config: Config) -> Router {
    let (api, document) = api().split_for_parts();
    let shared = Shared {
        workspaces,
        config: Arc::new(config),
        openapi: crate::openapi::finish(document).into(),
        sign_ins: Arc::default(),
        password_checks: Arc::new(tokio::sync::Semaphore::new(crate::api::password_checks_max())),
    };
    let routes = api
        .merge(crate::ui::routes())
        // Bodies past the largest limit are refused before any handler (`bounded_body`, 413,
        // and the framework's own limit behind it); below it, each endpoint checks its own
        // limit and says which one was crossed (400).
        .layer(DefaultBodyLimit::max(REQUEST_SIZE_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), bounded_body))
        .with_state(shared.clone());
    // Around the whole router, so the `/w/{name}` prefix is off before routes are matched.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(shared, crate::api::route))
        .layer(axum::middleware::from_fn(log_request))
}

/// How long a client may take to send a request's body, once its head has arrived.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a request's body before any handler sees it: refused at once with `413` when its
/// declared `Content-Length` is over `REQUEST_SIZE_BYTES_MAX` (nothing of it is read), with
/// `413` when it turns out longer, and with `408` when it is not all there within
/// `BODY_READ_TIMEOUT` (a client trickling a body holds nothing longer than that).
async fn bounded_body(app: App, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let deadline = app.config.body_read_timeout.unwrap_or(BODY_READ_TIMEOUT);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            format!("the body is over {REQUEST_SIZE_BYTES_MAX} bytes (1 MiB), the limit for any request"),
        )
        .into_response()
    };
    if declared.is_some_and(|length| length > REQUEST_SIZE_BYTES_MAX as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, REQUEST_SIZE_BYTES_MAX)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "Request too slow",
                format!("the body did not arrive within {} seconds", deadline.as_secs()),
            )
            .into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
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

/// The write key from the headers: HTTP Basic (user part) or a bearer token.
fn header_key(headers: &HeaderMap) -> Option<String> {
    crate::api::basic_user(headers).or_else(|| crate::api::bearer(headers))
}

/// A 400 for a body over the size of one event (`EVENT_SIZE_BYTES_MAX`), titled `title`.
fn over_event_size(title: &str, body: &[u8]) -> Option<Problem> {
    (body.len() > EVENT_SIZE_BYTES_MAX).then(|| {
        let detail = format!("the body is {} bytes; the limit is {EVENT_SIZE_BYTES_MAX} bytes", body.len());
        problem(StatusCode::BAD_REQUEST, title, detail)
    })
}

#[utoipa::path(
    post,
    path = "/v1/{kind}",
    operation_id = "ingestSegmentCall",
    tag = "ingestion",
    summary = "Send events the way Segment's libraries do",
    description = "Acknowledged only once durable. A `messageId` seen before is acknowledged and not applied again.",
    params(
        ("kind" = schema::SegmentCallKind, Path, description = "The call."),
    ),
    request_body(content = schema::SegmentCall, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored.", body = schema::Acknowledged),
        (status = 400, description = "Invalid JSON, a missing field, or a crossed size limit (32 KB per event, 500 KB per batch); nothing of the call was stored.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a Segment call.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("writeKey" = [])),
)]
async fn ingest(app: App, Path(kind): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    if body.len() > BATCH_SIZE_BYTES_MAX {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Batch too large",
            format!("the body is {} bytes; the limit is {BATCH_SIZE_BYTES_MAX} bytes (500 KB) per batch", body.len()),
        ));
    }
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}")));
        }
    };
    // The key from the headers, else the body's `writeKey`, which names its workspace only
    // now (`route` saw the headers alone).
    let (app, key) = match header_key(&headers) {
        Some(key) => (app, Some(key)),
        None => match value.get("writeKey").and_then(Value::as_str).map(str::to_owned) {
            Some(key) => match app.workspace_of(&key).await? {
                Some(workspace) => (app.switch_to(&workspace)?, Some(key)),
                None => (app, Some(key)),
            },
            None => (app, None),
        },
    };
    authorize(&app, key, Scope::Ingest).await?;
    let received_at = now();
    // Each item is taken out of the body and becomes its event's payload without a copy.
    let batch = kind == "batch";
    let envelope = if batch {
        segment::Batch::of(&value).map_err(|error| problem(StatusCode::BAD_REQUEST, "Invalid batch", error))?
    } else {
        segment::Batch::default()
    };
    let items: Vec<Value> = if batch {
        let Some(Value::Array(items)) = value.get_mut("batch").map(Value::take) else {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid batch", "a batch needs a `batch` array"));
        };
        items
    } else if segment::KINDS.contains(&kind.as_str()) {
        vec![value]
    } else {
        return Err(problem(StatusCode::NOT_FOUND, "Unknown call", format!("`/v1/{kind}` is not a Segment call")));
    };
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let item_kind = if batch { item.get("type").and_then(Value::as_str).unwrap_or_default() } else { &kind };
        let Some(item_kind) = segment::KINDS.iter().copied().find(|known| *known == item_kind) else {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid event",
                format!("batch item {index}: unknown type `{item_kind}`"),
            ));
        };
        match segment::read(item_kind, item, &envelope, received_at) {
            Ok(message) => messages.push(message),
            Err(error) => {
                let detail = if batch { format!("batch item {index}: {error}") } else { error };
                return Err(problem(StatusCode::BAD_REQUEST, "Invalid event", detail));
            }
        }
    }
    // One command, one commit: the whole call is durable before it is acknowledged.
    match ask(&app.owner, |reply| Command::Ingest { messages, reply }).await? {
        Ok(_) => {}
        Err(error) => return Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error)),
    }
    Ok(axum::Json(json!({ "success": true })).into_response())
}

#[utoipa::path(
    post,
    path = "/api/workflows",
    operation_id = "deployWorkflow",
    tag = "workflows",
    summary = "Upload a workflow as a new version",
    params(
        ("x-flowmark-filename" = Option<String>, Header, description = "The name diagnostics give the file."),
    ),
    request_body(content = String, content_type = "application/yaml"),
    responses(
        (status = 201, description = "Stored (or the same as the latest version, which is returned).", body = schema::Deployed),
        (status = 400, description = "Not UTF-8.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid: the problem lists the validator's diagnostics.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn deploy(app: App, _admin: Admin, headers: HeaderMap, body: Bytes) -> Answer {
    let Ok(source) = String::from_utf8(body.to_vec()) else {
        return Err(problem(StatusCode::BAD_REQUEST, "Not text", "the workflow must be UTF-8 YAML"));
    };
    let name = headers.get("x-flowmark-filename").and_then(|v| v.to_str().ok()).unwrap_or("workflow.yaml").to_owned();
    match query(&app.owner, move |engine, now| engine.deploy(&name, &source, now)).await? {
        Ok((id, version)) => {
            Ok((StatusCode::CREATED, axum::Json(json!({ "id": id, "version": version }))).into_response())
        }
        Err(DeployError::Invalid(diagnostics)) => Err(problem_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid workflow",
            format!("the workflow has {} problem(s)", diagnostics.len()),
            json!({ "diagnostics": diagnostics }),
        )),
        Err(error) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error.to_string())),
    }
}

#[utoipa::path(
    get,
    path = "/api/workflows",
    operation_id = "listWorkflows",
    tag = "workflows",
    summary = "List workflows",
    responses(
        (status = 200, description = "Every workflow with its latest version.", body = [schema::WorkflowSummary]),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn workflows(app: App, _admin: Admin) -> Answer {
    let list = query_owner(&app, |engine, _| engine.store().workflows()).await?;
    Ok(axum::Json(
            list.into_iter()
                .map(|w| {
                    json!({ "id": w.id, "version": w.latest_version, "status": status_name(w.status), "updated_at": w.updated_at })
                })
                .collect::<Vec<_>>(),
        )
        .into_response())
}

/// Most gone webhook URLs one listing returns (newest first).
pub const GONE_ENDPOINTS_PAGE_COUNT_MAX: usize = 1000;

/// `GET /api/webhooks/gone[?limit=N]`: the webhook URLs that answered `410 Gone` and are not
/// called any more, newest first.
#[utoipa::path(
    get,
    path = "/api/webhooks/gone",
    operation_id = "listGoneEndpoints",
    tag = "operations",
    summary = "List the webhook URLs disabled because they answered 410 Gone, newest first",
    description = "A URL that answers `410 Gone` (Standard Webhooks: the endpoint is gone) is not called again, by this server or after a restart (up to 100 000 URLs; past that, a start loads the newest 100 000), until it is enabled with `DELETE`. Effects for it fail at once, visibly in their runs. Lists what is stored: the dispatcher stores a new one after the round that met it.",
    params(
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default and most: 1000)."),
    ),
    responses(
        (status = 200, description = "The disabled URLs.", body = [schema::GoneEndpoint]),
        (status = 400, description = "An invalid limit.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn gone_endpoints(app: App, _admin: Admin, Query(params): Query<HashMap<String, String>>) -> Answer {
    let limit = match query_limit(&params, GONE_ENDPOINTS_PAGE_COUNT_MAX, GONE_ENDPOINTS_PAGE_COUNT_MAX) {
        Ok(limit) => limit,
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid limit", detail)),
    };
    let list = query_owner(&app, move |engine, _| engine.store().gone_endpoints(limit)).await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|e| json!({ "url": e.url, "gone_at": e.gone_at.ms(), "reason": e.reason }))
            .collect::<Vec<_>>(),
    )
    .into_response())
}

/// `DELETE /api/webhooks/gone?url=URL`: calls the URL again from the next effect on; `404`
/// when it is not disabled.
#[utoipa::path(
    delete,
    path = "/api/webhooks/gone",
    operation_id = "enableEndpoint",
    tag = "operations",
    summary = "Enable a disabled webhook URL again",
    description = "Effects sent from now on call the URL again; one that answers `410` again is disabled again.",
    params(
        ("url" = String, Query, description = "The URL, exactly as listed."),
    ),
    responses(
        (status = 204, description = "Enabled."),
        (status = 400, description = "No `url` given.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The URL is not disabled.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn enable_endpoint(app: App, _admin: Admin, Query(params): Query<HashMap<String, String>>) -> Answer {
    let Some(url) = params.get("url").cloned() else {
        return Err(problem(StatusCode::BAD_REQUEST, "Missing URL", "say which URL to enable: `?url=…`"));
    };
    // Store and memory in one step on the owner thread: a dispatcher round in between could
    // otherwise store the URL again after it was forgotten here.
    let (forget, gone) = (url.clone(), app.gone.clone());
    let forgotten = query_owner(&app, move |engine, _| {
        let stored = engine.forget_gone_endpoint(&forget)?;
        Ok(gone.forget(&forget) || stored)
    });
    match forgotten.await? {
        true => Ok(StatusCode::NO_CONTENT.into_response()),
        false => Err(problem(StatusCode::NOT_FOUND, "Not disabled", format!("`{url}` is not a disabled webhook URL"))),
    }
}

/// Most runs one listing returns; page with filters.
pub const RUNS_PAGE_COUNT_MAX: usize = 1000;
const RUNS_PAGE_COUNT_DEFAULT: usize = 100;

#[utoipa::path(
    get,
    path = "/api/runs",
    operation_id = "listRuns",
    tag = "runs",
    summary = "List runs, newest first",
    params(
        ("workflow" = Option<String>, Query, description = "Workflow id."),
        ("version" = Option<u64>, Query, description = "Workflow version."),
        ("status" = Option<schema::RunStatus>, Query, description = "Run status."),
        ("subject" = Option<String>, Query, description = "Contact or item id."),
        ("step" = Option<String>, Query, description = "Runs with a token at this step."),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)."),
    ),
    responses(
        (status = 200, description = "The runs.", body = [schema::RunSummary]),
        (status = 400, description = "An unknown or invalid filter.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn runs(app: App, _admin: Admin, Query(params): Query<HashMap<String, String>>) -> Answer {
    const KNOWN: [&str; 6] = ["workflow", "version", "status", "subject", "step", "limit"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Unknown filter",
            format!("`{unknown}` is not a filter; use {}", KNOWN.join(", ")),
        ));
    }
    let number = |key: &str| {
        params.get(key).map(|v| v.parse::<u64>().map_err(|_| format!("`{key}` must be a whole number, not `{v}`")))
    };
    let version = match number("version").transpose() {
        Ok(v) => v.map(|v| v as u32),
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid filter", detail)),
    };
    let limit = match number("limit").transpose() {
        Ok(Some(n)) if (1..=RUNS_PAGE_COUNT_MAX as u64).contains(&n) => n as usize,
        Ok(Some(n)) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                format!("`limit` is {n}; it must be from 1 to {RUNS_PAGE_COUNT_MAX}"),
            ));
        }
        Ok(None) => RUNS_PAGE_COUNT_DEFAULT,
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid filter", detail)),
    };
    let status = match params.get("status").map(String::as_str) {
        None => None,
        Some(name) if RunStatus::parse(name).is_some() => RunStatus::parse(name),
        Some(other) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                format!("`status` is `{other}`; use active, completed, converted, exited or failed"),
            ));
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
    match listing.await? {
        Ok(list) => Ok(axum::Json(list).into_response()),
        Err(error) => Err(internal(error)),
    }
}

#[utoipa::path(
    post,
    path = "/api/workflows/{id}/{action}",
    operation_id = "setWorkflowStatus",
    tag = "workflows",
    summary = "Activate or pause a workflow",
    description = "A paused workflow starts no new runs; its runs go on.",
    params(
        ("id" = String, Path, description = "The workflow id."),
        ("action" = schema::WorkflowAction, Path, description = "What to do."),
    ),
    responses(
        (status = 200, description = "Done.", body = schema::StatusChanged),
        (status = 404, description = "No such workflow or action.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn set_status(app: App, _admin: Admin, Path((id, action)): Path<(String, String)>) -> Answer {
    let status = match action.as_str() {
        "activate" => WorkflowStatus::Active,
        "pause" => WorkflowStatus::Paused,
        other => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                "Unknown action",
                format!("`{other}` is not an action; use activate or pause"),
            ));
        }
    };
    let wanted = id.clone();
    match query(&app.owner, move |engine, now| engine.set_status(&wanted, status, now)).await? {
        Ok(true) => Ok(axum::Json(json!({ "id": id, "status": status_name(status) })).into_response()),
        Ok(false) => Err(problem(StatusCode::NOT_FOUND, "No such workflow", format!("there is no workflow `{id}`"))),
        Err(error) => Err(internal(error)),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Counters, the outbox depth and the timer-lateness histogram, in Prometheus' text format.", body = String, content_type = "text/plain"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn metrics(app: App, _admin: Admin) -> Answer {
    let page = query_owner(&app, |engine, _| {
        let durability = engine.store().durability();
        let dispatch = crate::metrics::Dispatch { in_flight: engine.in_flight(), connectors: engine.connector_stats() };
        let depth = engine.store().outbox_depth()?;
        Ok(crate::metrics::render(engine.stats(), depth, &dispatch, durability.as_deref()))
    });
    let text = page.await?;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/api/runs/{id}",
    operation_id = "getRun",
    tag = "runs",
    summary = "Get a run with its history and decision records",
    params(
        ("id" = u64, Path, minimum = 1, description = "The run id."),
    ),
    responses(
        (status = 200, description = "The run.", body = schema::RunDetail),
        (status = 400, description = "Not a run id.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn run(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let Some(id) = id.parse::<u64>().ok() else { return Err(invalid_run_id(&id)) };
    let detail = query_owner(&app, move |engine, _| {
        let store = engine.store();
        let Some(run) = store.run(RunId(id))? else { return Ok(None) };
        Ok(Some(json!({ "run": run, "history": store.history(run.id)?, "decisions": store.decisions(run.id)? })))
    });
    match detail.await? {
        Some(run) => Ok(axum::Json(run).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "operations",
    summary = "Liveness",
    responses(
        (status = 200, description = "The server is up.", body = String, content_type = "text/plain"),
    ),
)]
async fn health() -> &'static str {
    "ok"
}

/// The OpenAPI 3.1 document of this API. Public, like `/healthz`: it describes the API and
/// holds no data.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "getOpenApiDocument",
    tag = "operations",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI document.", body = schema::OpenApiDocument),
    ),
)]
async fn openapi(app: App) -> Response {
    let mut response = app.openapi.to_string().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn invalid_run_id(id: &str) -> Problem {
    problem(StatusCode::BAD_REQUEST, "Invalid run id", format!("`{id}` is not a run id (a positive integer)"))
}

#[utoipa::path(
    get,
    path = "/api/workflows/{id}",
    operation_id = "getWorkflow",
    tag = "workflows",
    summary = "Get a workflow version",
    params(
        ("id" = String, Path, description = "The workflow id."),
        ("version" = Option<u64>, Query, minimum = 1, description = "A version; the latest when absent."),
    ),
    responses(
        (status = 200, description = "The version's source.", body = schema::WorkflowVersion),
        (status = 400, description = "A bad version.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or version.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn workflow(
    app: App,
    _admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let version = match query.get("version").map(|v| v.parse::<u32>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid version", "`version` must be a whole number"));
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
    match answer? {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(problem(
            StatusCode::NOT_FOUND,
            "No such workflow",
            format!("there is no workflow `{id}` at that version"),
        )),
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

#[utoipa::path(
    get,
    path = "/api/contacts/{id}",
    operation_id = "getContact",
    tag = "contacts",
    summary = "Get a contact",
    params(
        ("id" = String, Path, description = "The contact id (Segment's `userId` or `anonymousId`)."),
    ),
    responses(
        (status = 200, description = "The contact.", body = schema::Contact),
        (status = 404, description = "No such contact.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn contact(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let wanted = id.clone();
    match query_owner(&app, move |engine, _| engine.store().contact(&wanted)).await? {
        Some(contact) => Ok(axum::Json(contact_json(&contact)).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`"))),
    }
}

fn clock_json() -> Value {
    let now = crate::clock::now();
    json!({ "now": now.ms(), "at": now.rfc3339(), "virtual": crate::clock::is_virtual() })
}

/// The server's clock.
#[utoipa::path(
    get,
    path = "/api/clock",
    operation_id = "getClock",
    tag = "clock",
    summary = "Read the server's clock",
    responses(
        (status = 200, description = "The time the server reads, and whether it is virtual.", body = schema::Clock),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn clock(_admin: Admin) -> Answer {
    Ok(axum::Json(clock_json()).into_response())
}

/// Moves the virtual clock forward: `{"by": "2d"}` or `{"to": "2026-12-10T09:00:00Z"}`.
#[utoipa::path(
    post,
    path = "/api/clock/advance",
    operation_id = "advanceClock",
    tag = "clock",
    summary = "Move the virtual clock forward",
    description = "Only on a server started with `--clock virtual` (for tests and demos): time then stands still until moved here. The clock moves from one due timer or schedule to the next up to the target, firing each at its own time and letting the effects already due be performed first, so a move of days does what those days would have done. Never backwards.",
    request_body(content = schema::ClockAdvance, content_type = "application/json"),
    responses(
        (status = 200, description = "The clock after the move.", body = schema::Clock),
        (status = 400, description = "Neither `by` nor `to`, or not a duration or a time.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The server runs on the system clock, or `to` is in the clock's past.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn advance_clock(app: App, _admin: Admin, body: Bytes) -> Answer {
    // The clock is the server's, every workspace's: only its operators move it.
    crate::api::operators_only(&app)?;
    let owners: Vec<crate::owner::Owner> = app.workspaces.all().into_iter().map(|tenant| tenant.owner).collect();
    let fields = json_object(&body).map_err(|(title, detail)| problem(StatusCode::BAD_REQUEST, title, detail))?;
    let invalid = |detail: String| problem(StatusCode::BAD_REQUEST, "Invalid clock move", detail);
    let now = crate::clock::now();
    let to = match (fields.get("by").and_then(Value::as_str), fields.get("to").and_then(Value::as_str)) {
        (Some(by), None) => {
            let by = flowmark_core::Duration::parse(by)
                .map_err(|e| invalid(format!("`by` is not a duration like `2d` or `1h30m`: {e}")))?;
            Timestamp(now.ms().saturating_add(i64::try_from(by.0).unwrap_or(i64::MAX)))
        }
        (None, Some(to)) => chrono::DateTime::parse_from_rfc3339(to)
            .map(|t| Timestamp::from_chrono(&t))
            .map_err(|_| invalid(format!("`to` must be an RFC 3339 time like 2026-12-10T09:00:00Z, not `{to}`")))?,
        _ => return Err(invalid("say how far: `by` (a duration) or `to` (a time), one of the two".to_owned())),
    };
    let refused = |e: crate::clock::MoveError| problem(StatusCode::CONFLICT, "Clock not moved", e.to_string());
    crate::clock::check_move(to).map_err(refused)?;
    // Time moves from one due timer or schedule to the next, each fired at its own time, as
    // it would have been on the system clock: a wait that times out during the move starts
    // what follows it then, not at the end of the move.
    for _ in 0..CLOCK_STEPS_MAX {
        let mut next = None;
        for owner in &owners {
            let due = query(owner, move |engine, _| -> Result<Option<Timestamp>, flowmark_store::Error> {
                let timer = engine.store().due_timers(to, 1)?.first().map(|t| t.due_at);
                let schedule = engine.store().due_schedules(to, 1)?.first().map(|s| s.due_at);
                Ok(timer.into_iter().chain(schedule).min())
            })
            .await?
            .map_err(internal)?;
            next = next.into_iter().chain(due).min();
        }
        let Some(next) = next.filter(|next| *next > crate::clock::now()) else { break };
        settle(&owners).await?;
        crate::clock::advance_to(next).map_err(refused)?;
        fire_due(&owners).await?;
    }
    settle(&owners).await?;
    crate::clock::advance_to(to).map_err(refused)?;
    fire_due(&owners).await?;
    Ok(axum::Json(clock_json()).into_response())
}

/// How long, in real time, a move of the virtual clock waits at each step for the effects
/// already due to be performed.
const CLOCK_SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until no effect is due and none is at a worker, so that moving the clock cannot
/// make an attempt in flight look timed out (which would send it twice); gives up after
/// `CLOCK_SETTLE_MAX` (an effect stuck at a slow peer then times out, as it would anyway).
async fn settle(owners: &[crate::owner::Owner]) -> Result<(), Problem> {
    let started = std::time::Instant::now();
    while started.elapsed() < CLOCK_SETTLE_MAX {
        let mut quiet = true;
        for owner in owners {
            quiet &= query(owner, |engine, now| -> Result<bool, flowmark_store::Error> {
                Ok(engine.in_flight() == 0 && engine.store().ready_effects(now, 1)?.is_empty())
            })
            .await?
            .map_err(internal)?;
        }
        if quiet {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Most steps one move of the virtual clock takes (due times it stops at).
const CLOCK_STEPS_MAX: usize = 100_000;

/// Fires the timers and schedules due at the clock's time, on each owner.
async fn fire_due(owners: &[crate::owner::Owner]) -> Result<(), Problem> {
    for owner in owners {
        query(owner, |engine, now| -> Result<(), flowmark_runtime::Error> {
            while engine.fire_due_timers(now, 1_000)? == 1_000 {}
            while engine.fire_due_schedules(now, 1_000)? == 1_000 {}
            Ok(())
        })
        .await?
        .map_err(internal)?;
    }
    Ok(())
}

/// Everything held about a contact, as one document (GDPR Art. 15, CCPA access).
#[utoipa::path(
    get,
    path = "/api/contacts/{id}/export",
    operation_id = "exportContact",
    tag = "contacts",
    summary = "Export everything held about a contact",
    params(
        ("id" = String, Path, description = "The contact id, or one of its aliases."),
    ),
    responses(
        (status = 200, description = "The contact, its ids, events, runs with histories and decisions, and score history.", body = schema::ContactExport),
        (status = 404, description = "Nothing is held about this id.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn export_contact(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let asked = id.clone();
    match query(&app.owner, move |engine, _| engine.export_contact(&asked)).await?.map_err(internal)? {
        Some(document) => Ok(axum::Json(document).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such contact", format!("nothing is held about `{id}`"))),
    }
}

/// Erases a contact and everything held about it (GDPR Art. 17, CCPA deletion).
#[utoipa::path(
    delete,
    path = "/api/contacts/{id}",
    operation_id = "eraseContact",
    tag = "contacts",
    summary = "Erase a contact and everything held about it",
    description = "Removes the contact under every id it is known by (its own and its aliases') from every table, in one transaction: its row, events, aliases, score history, runs with their histories, decision records, timers and effects (pending ones are never sent), notifications and the team's work about it. Deleted pages are overwritten. A tombstone (a one-way hash of each id) is kept, so events that name the contact later, re-sent old ones included, are dropped. Idempotent. The erasure is written to the server's log with the token that asked for it.",
    params(
        ("id" = String, Path, description = "The contact id, or one of its aliases."),
    ),
    responses(
        (status = 200, description = "What was removed.", body = schema::Erasure),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn erase_contact(app: App, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let token = crate::api::credential(&app, crate::api::bearer(&headers), flowmark_store::Scope::Admin).await?;
    let asked = id.clone();
    let erasure = query(&app.owner, move |engine, now| engine.erase_contact(&asked, now)).await?.map_err(internal)?;
    let by = token.map_or_else(|| "a command-line token".to_owned(), |t| format!("token `{}`", t.name));
    tracing::warn!(audit = "contact_erased", by = %by, runs = erasure.runs.len(), events = erasure.events, "a contact was erased");
    let mut answer = serde_json::to_value(&erasure).map_err(internal)?;
    answer["erased"] = json!(id);
    Ok(axum::Json(answer).into_response())
}

/// Creates a contact or merges traits into it: `{"traits": {...}, "timezone": "Europe/Paris"}`.
#[utoipa::path(
    put,
    path = "/api/contacts/{id}",
    operation_id = "upsertContact",
    tag = "contacts",
    summary = "Create a contact or merge traits into it",
    params(
        ("id" = String, Path, description = "The contact id."),
    ),
    request_body(content = schema::ContactUpsert, content_type = "application/json"),
    responses(
        (status = 200, description = "The contact as stored.", body = schema::Contact),
        (status = 400, description = "Invalid JSON, an unknown field, traits not an object, an unknown time zone, or over 32 KB.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id was erased; an erased id is not used again.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn upsert_contact(app: App, _admin: Admin, Path(id): Path<String>, body: Bytes) -> Answer {
    if let Some(too_large) = over_event_size("Contact too large", &body) {
        return Err(too_large);
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}")));
        }
    };
    let Value::Object(fields) = &value else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Invalid contact",
            "the body must be an object with `traits` and/or `timezone`",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !["traits", "timezone"].contains(&k.as_str())) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Invalid contact",
            format!("`{unknown}` is not a field; use traits, timezone"),
        ));
    }
    let traits = match fields.get("traits") {
        None => json!({}),
        Some(traits @ Value::Object(_)) => traits.clone(),
        Some(_) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid contact", "`traits` must be an object")),
    };
    let timezone = match fields.get("timezone") {
        None | Some(Value::Null) => None,
        Some(Value::String(tz)) if tz.parse::<chrono_tz::Tz>().is_ok() => Some(tz.clone()),
        Some(other) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid contact",
                format!("`timezone` is {other}; it must be an IANA time zone such as `Europe/Paris`"),
            ));
        }
    };
    let asked = id.clone();
    let put = move |engine: &mut Eng, now| {
        (!engine.is_erased(&asked)).then(|| engine.put_contact(&asked, &traits, timezone.as_deref(), now))
    };
    match query(&app.owner, put).await? {
        Some(Ok(contact)) => Ok(axum::Json(contact_json(&contact)).into_response()),
        Some(Err(error)) => Err(internal(error)),
        None => Err(problem(
            StatusCode::CONFLICT,
            "Contact erased",
            format!("`{id}` was erased; an erased id is not used again (give the person a new id)"),
        )),
    }
}

/// Most events one listing returns.
pub const EVENTS_PAGE_COUNT_MAX: usize = 1000;

/// A subject's events, oldest first: the newest `limit` (default 100) at or after `since`.
#[utoipa::path(
    get,
    path = "/api/events",
    operation_id = "listEvents",
    tag = "contacts",
    summary = "List a subject's events, oldest first",
    params(
        ("subject" = String, Query, description = "Contact or item id."),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this RFC 3339 time."),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "The newest this many (default 100)."),
    ),
    responses(
        (status = 200, description = "The events.", body = [schema::Event]),
        (status = 400, description = "A missing subject or an invalid filter.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn events(app: App, _admin: Admin, Query(query): Query<HashMap<String, String>>) -> Answer {
    const KNOWN: [&str; 3] = ["subject", "since", "limit"];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Unknown filter",
            format!("`{unknown}` is not a filter; use {}", KNOWN.join(", ")),
        ));
    }
    let Some(subject) = query.get("subject").cloned() else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Missing subject",
            "give `subject`: events are listed per contact or item",
        ));
    };
    let limit = match query_limit(&query, 100, EVENTS_PAGE_COUNT_MAX) {
        Ok(limit) => limit,
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid filter", detail)),
    };
    let since = match query.get("since").map(|v| chrono::DateTime::parse_from_rfc3339(v)) {
        None => Timestamp(i64::MIN),
        Some(Ok(at)) => Timestamp::from_chrono(&at.with_timezone(&chrono::Utc)),
        Some(Err(_)) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid filter",
                "`since` must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
            ));
        }
    };
    let events = query_owner(&app, move |engine, _| engine.store().events_of_subject(&subject, since, limit)).await?;
    Ok(axum::Json(json!(
        events
            .iter()
            .map(|e| json!({ "messageId": e.id, "event": e.name, "at": e.at, "payload": e.payload }))
            .collect::<Vec<_>>()
    ))
    .into_response())
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5\"><h1>{title}</h1>{body}</body></html>"
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn signed(app: &App, subject: &str, signature: &str) -> bool {
    app.secret.as_deref().is_some_and(|secret| flowmark_runtime::unsubscribe::verify(secret, subject, signature))
}

/// The page an unsubscribe link opens: a button, not an unsubscribe, because mail scanners
/// follow links; the button (and mail clients' one-click) POSTs.
#[utoipa::path(
    get,
    path = "/u/{subject}/{signature}",
    operation_id = "unsubscribePage",
    tag = "tracking",
    summary = "The page of an unsubscribe link",
    description = "Shows a button; opening the link changes nothing (mail scanners follow links).",
    params(
        ("subject" = String, Path, description = "The contact id."),
        ("signature" = String, Path, description = "The link's HMAC-SHA256 signature."),
    ),
    responses(
        (status = 200, description = "A page with an Unsubscribe button.", body = String, content_type = "text/html"),
        (status = 404, description = "The link is not valid.", body = String, content_type = "text/html"),
    ),
)]
async fn unsubscribe_page(app: App, Path((subject, signature)): Path<(String, String)>) -> Response {
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
#[utoipa::path(
    post,
    path = "/u/{subject}/{signature}",
    operation_id = "unsubscribe",
    tag = "tracking",
    summary = "One-click unsubscribe (RFC 8058)",
    description = "Suppresses the contact at once (`unsubscribed: true`; no marketing email goes out to it again, queued ones included) and records an `Unsubscribed` event.",
    params(
        ("subject" = String, Path, description = "The contact id."),
        ("signature" = String, Path, description = "The link's HMAC-SHA256 signature."),
    ),
    request_body(content = Option<schema::OneClickUnsubscribe>, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Unsubscribed.", body = String, content_type = "text/html"),
        (status = 404, description = "The link is not valid.", body = String, content_type = "text/html"),
    ),
)]
async fn unsubscribe(app: App, Path((subject, signature)): Path<(String, String)>) -> Answer {
    if !signed(&app, &subject, &signature) {
        return Ok(page(StatusCode::NOT_FOUND, "Link not recognised", "<p>This unsubscribe link is not valid.</p>"));
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
    ingest_one(&app, incoming).await?;
    Ok(page(StatusCode::OK, "You are unsubscribed", "<p>You will not receive marketing email from us again.</p>"))
}

/// An inbound webhook, signed the Standard Webhooks way: verified against the configured
/// secrets, then ingested as an event for the body's `userId` (or `anonymousId`), named by its
/// `event` (default `Webhook Received`), with `webhook-id` as its `messageId`, so the
/// sender's retries are applied once. The signature is the credential: no token is needed.
#[utoipa::path(
    post,
    path = "/hooks/{source}",
    operation_id = "receiveWebhook",
    tag = "ingestion",
    summary = "Receive a signed webhook (Standard Webhooks)",
    description = "Verified against the server's inbound secrets (`--inbound-webhook-secret`, `whsec_…`), within 5 minutes of its timestamp, then stored as an event for the body's `userId` or `anonymousId` (or, failing both, the contact whose `email` trait is the body's `email`, as an ESP's bounce or complaint names it), named by its `event` (default `Webhook Received`); its `messageId` is `hook:{source}:{webhook-id}`, so retries are applied once and no source's ids collide with another's or with a Segment `messageId`.",
    params(
        ("source" = String, Path, description = "Who sends it (kept in the event as `source`)."),
        ("webhook-id" = String, Header, description = "The message id."),
        ("webhook-timestamp" = String, Header, description = "Unix seconds."),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space-separated when several."),
    ),
    request_body(content = schema::InboundEvent, content_type = "application/json"),
    responses(
        (status = 204, description = "Stored (or a duplicate of a stored one)."),
        (status = 400, description = "Not a JSON object, no subject, no webhook-id, or over 32 KB.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 401, description = "The signature does not match, or the timestamp is too far from now.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No inbound webhook secret is configured.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body names the contact only by `email`, and no contact has it.", body = schema::Problem, content_type = "application/problem+json"),
    ),
)]
async fn inbound_webhook(app: App, Path(source): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    // The secrets given on the command line are the `default` workspace's.
    if app.config.inbound_webhook_secrets.is_empty() || !app.workspace.is_default() {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "No inbound webhooks",
            "this workspace has no inbound webhook secret",
        ));
    }
    if let Some(too_large) = over_event_size("Webhook too large", &body) {
        return Err(too_large);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    if id.is_empty() {
        return Err(problem(StatusCode::BAD_REQUEST, "Unsigned webhook", "a `webhook-id` header is required"));
    }
    let now_s = now().ms().div_euclid(1000);
    let secrets = &app.config.inbound_webhook_secrets;
    if let Err(error) = flowmark_runtime::webhook::verify(secrets, &id, &timestamp, &signature, &body, now_s) {
        return Err(problem(StatusCode::UNAUTHORIZED, "Bad signature", error.to_string()));
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid webhook", "the body must be a JSON object")),
        Err(error) => {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}")));
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
            match query_owner(&app, move |engine, _| engine.store().contact_id_by_email(&wanted)).await? {
                Some(id) => id,
                None => {
                    return Err(problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Unknown contact",
                        format!("no contact has the email `{email}`"),
                    ));
                }
            }
        }
        (None, None) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid webhook",
                "the body needs a `userId`, an `anonymousId` or the contact's `email`",
            ));
        }
    };
    let name = value.get("event").and_then(Value::as_str).unwrap_or("Webhook Received").to_owned();
    let mut payload = value.clone();
    if let Value::Object(fields) = &mut payload {
        fields.insert("type".to_owned(), json!("track"));
        fields.insert("source".to_owned(), json!(source));
        fields.insert("event".to_owned(), json!(name));
    }
    // Each source's `webhook-id`s are their own: namespaced so none can collide with a Segment
    // `messageId` or with another source's id and be dropped as a duplicate.
    let id = format!("hook:{source}:{id}");
    let event = flowmark_core::engine::Event { id, name, at: now(), payload: payload.into() };
    let incoming = flowmark_runtime::Incoming::event(&subject, event);
    ingest_one(&app, incoming).await?;
    Ok((StatusCode::NO_CONTENT, ()).into_response())
}

/// A run explained step by step: `{"run": …, "lines": [{"at", "step", "text", "decision"}], "text": "…"}`.
#[utoipa::path(
    get,
    path = "/api/runs/{id}/why",
    operation_id = "explainRun",
    tag = "runs",
    summary = "Explain a run step by step",
    description = "From the run's history and decision records: each step, each condition with the values it read and what it gave, the path taken, and why a message was held or skipped (quiet hours, caps, suppression).",
    params(
        ("id" = u64, Path, minimum = 1, description = "The run id."),
    ),
    responses(
        (status = 200, description = "The explanation.", body = schema::Why),
        (status = 400, description = "Not a run id.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn why(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let Some(number) = id.parse::<u64>().ok() else { return Err(invalid_run_id(&id)) };
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
    match answer? {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {number}"))),
    }
}

/// Contacts from a CSV body (the rules of `flowmark import contacts`): every row is checked
/// first and a bad file is refused whole with each row's errors (422); a good one is written
/// 1 000 rows per commit with a checkpoint, so sending the same file again after a failure
/// resumes it, and after a success changes nothing. A segment sweep pass starts right after.
#[utoipa::path(
    post,
    path = "/api/contacts/import",
    operation_id = "importContacts",
    tag = "contacts",
    summary = "Import contacts from CSV",
    description = "A header row with `id` and/or `email` (aliases such as `E-mail Address` are understood), then any fields; ISO-8601 dates, true/1/yes booleans, a do-not-contact column (`Opt out`, `DNC`, …) sets `unsubscribed`. Contacts are found by id, else by email, and created or updated. Every row is checked first: a bad file changes nothing.",
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, description = "Imported.", body = schema::ImportReport),
        (status = 422, description = "Rows with problems: `errors` lists each with its row number and column; nothing was imported.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn import_contacts(app: App, _admin: Admin, body: Bytes) -> Answer {
    let rows = match flowmark_runtime::import::read(body.as_ref()) {
        Ok(rows) => rows,
        Err(rejected) => {
            return Err(problem_with(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid contacts",
                format!("{} problem(s); nothing was imported", rejected.total),
                json!({ "errors": rejected.errors, "total": rejected.total }),
            ));
        }
    };
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect()
    };
    let checkpoint = format!("import:contacts:{digest}");
    let count = rows.len();
    let imported = query_owner(&app, move |engine, now| {
        // The engine restarts the segment sweep: the rows join their segments now.
        engine.import_contacts(&rows, &checkpoint, now)
    })
    .await?;
    Ok(axum::Json(json!({ "rows": count, "outcome": imported })).into_response())
}

#[utoipa::path(
    get,
    path = "/api/score-models",
    operation_id = "getScoreModels",
    tag = "contacts",
    summary = "The workspace's score models",
    responses(
        (status = 200, description = "The models.", body = schema::ScoreModels),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn score_models(app: App, headers: HeaderMap) -> Answer {
    get_document(&app, &headers, |engine| engine.score_models().cloned(), json!({ "models": [] })).await
}

/// Replaces the workspace's score models: `{"models": [{"name", "half_life", "rules":
/// [{"event", "where", "add"}], "thresholds": [{"at", "event"}]}]}`.
#[utoipa::path(
    put,
    path = "/api/score-models",
    operation_id = "putScoreModels",
    tag = "contacts",
    summary = "Replace the workspace's score models",
    request_body(content = schema::ScoreModels, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored; they apply to events from now on.", body = schema::Updated),
        (status = 400, description = "Not score models (JSON, unknown fields).", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Score models with problems: `errors` lists each.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn put_score_models(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    put_document(&app, &headers, &body, "score models", Eng::set_score_models).await
}

#[utoipa::path(
    get,
    path = "/api/segments",
    operation_id = "getSegments",
    tag = "contacts",
    summary = "The workspace's segments",
    responses(
        (status = 200, description = "The segments, as written.", body = schema::Segments),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn segments(app: App, headers: HeaderMap) -> Answer {
    get_document(&app, &headers, |engine| engine.segments().cloned(), json!({ "segments": [] })).await
}

/// Replaces the workspace's segments: `{"segments": [{"name", "description", "where"}]}`.
#[utoipa::path(
    put,
    path = "/api/segments",
    operation_id = "putSegments",
    tag = "contacts",
    summary = "Replace the workspace's segments",
    request_body(content = schema::Segments, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored; events from now on move membership, and a sweep over every contact starts at once.", body = schema::Updated),
        (status = 400, description = "Not segments (JSON, unknown fields).", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Segments with problems: `errors` lists each; nothing was changed.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn put_segments(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    put_document(&app, &headers, &body, "segments", Eng::set_segments).await
}

/// A contact's segments: whether it is a member of each, and what each condition says now
/// with the values it read.
#[utoipa::path(
    get,
    path = "/api/contacts/{id}/segments",
    operation_id = "getContactSegments",
    tag = "contacts",
    summary = "A contact's segments: membership, and what each condition says now with the values it read",
    params(
        ("id" = String, Path, description = "The contact id."),
    ),
    responses(
        (status = 200, description = "One entry per segment: `segment`, `where`, `member`, `now` (true, false, or `{error}`), `inputs`.", body = [schema::SegmentMembership]),
        (status = 404, description = "No such contact.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn contact_segments(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let wanted = id.clone();
    match query_owner(&app, move |engine, now| engine.explain_segments(&wanted, now)).await? {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`"))),
    }
}

/// A contact's scores as they stand now (decayed) and its score history, newest first.
#[utoipa::path(
    get,
    path = "/api/contacts/{id}/scores",
    operation_id = "getContactScores",
    tag = "contacts",
    summary = "A contact's scores and score history",
    params(
        ("id" = String, Path, description = "The contact id."),
    ),
    responses(
        (status = 200, description = "Scores decayed to now, and every change (model, time, before, delta, after, reason), newest first.", body = schema::ContactScores),
        (status = 404, description = "No such contact.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn contact_scores(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let wanted = id.clone();
    let answer = query_owner(&app, move |engine, now| {
        let Some(contact) = engine.store().contact(&wanted)? else { return Ok(None) };
        let mut traits = contact.traits;
        engine.decay_scores(&mut traits, now);
        let history = engine.store().score_history(&wanted, 1000)?;
        Ok(Some(json!({ "scores": traits.get("scores").cloned().unwrap_or(json!({})), "history": history })))
    })
    .await;
    match answer? {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such contact", format!("there is no contact `{id}`"))),
    }
}

/// Records an engagement event for a tracking token's contact, in the Segment shape journeys
/// wait for (`properties.email_id` is the sending effect's key).
async fn record_engagement(
    app: &App,
    tracked: &flowmark_runtime::tracking::Tracked,
    name: &str,
    id: String,
) -> Result<(), Problem> {
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
async fn ingest_one(app: &App, incoming: flowmark_runtime::Incoming) -> Result<(), Problem> {
    match ask(&app.owner, |reply| Command::Ingest { messages: vec![incoming], reply }).await? {
        Ok(_) => Ok(()),
        Err(error) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", error)),
    }
}

fn tracked(app: &App, token: &str) -> Option<flowmark_runtime::tracking::Tracked> {
    let secret = app.secret.as_deref()?;
    flowmark_runtime::tracking::read(secret, token)
}

/// A tracked link: records `Email Link Clicked`, then redirects to where the link pointed.
#[utoipa::path(
    get,
    path = "/t/c/{token}",
    operation_id = "trackClick",
    tag = "tracking",
    summary = "A tracked link in an email",
    description = "Records `Email Link Clicked` (`properties.email_id`, `properties.url`) for the contact, then redirects to the link's URL.",
    params(
        ("token" = String, Path, description = "A signed tracking token from an email."),
    ),
    responses(
        (status = 302, description = "To the link's URL."),
        (status = 404, description = "Not a token of this server.", body = String, content_type = "text/html"),
    ),
)]
async fn track_click(app: App, Path(token): Path<String>) -> Response {
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
#[utoipa::path(
    get,
    path = "/t/o/{token}",
    operation_id = "trackOpen",
    tag = "tracking",
    summary = "The open pixel of an email",
    description = "Records `Email Opened` once per email; answers a 1×1 transparent GIF either way.",
    params(
        ("token" = String, Path, description = "A signed tracking token from an email."),
    ),
    responses(
        (status = 200, description = "A GIF.", body = schema::Pixel, content_type = "image/gif"),
    ),
)]
async fn track_open(app: App, Path(token): Path<String>) -> Response {
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

/// Delivers an input that names no person (a cancellation) to a run and answers with the run as
/// it stands, or `409` with the reason the run gave for ignoring it (the run has ended). A
/// person's input goes through `act_at_step`, with the inbox's checks.
async fn deliver(app: &App, id: &str, input: flowmark_core::engine::Input) -> Answer {
    let Some(number) = id.parse::<u64>().ok() else { return Err(invalid_run_id(id)) };
    let answer = query(&app.owner, move |engine, now| -> Result<Option<(Option<String>, Value)>, String> {
        let transition = engine.deliver(RunId(number), &input, now).map_err(|e| e.to_string())?;
        let Some(t) = transition else { return Ok(None) };
        let ignored = t.history.iter().find_map(|h| match &h.kind {
            flowmark_core::engine::HistoryKind::InputIgnored { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        Ok(Some((ignored, run_state(engine, &t.run)?)))
    })
    .await;
    match answer? {
        Ok(Some((None, run))) => Ok(axum::Json(run).into_response()),
        Ok(Some((Some(reason), _))) => Err(problem(StatusCode::CONFLICT, "Input ignored", reason)),
        Ok(None) => Err(problem(StatusCode::NOT_FOUND, "No such run", format!("there is no run {number}"))),
        Err(error) => Err(internal(error)),
    }
}

/// A run as the run routes answer it: `{"id", "status", "steps"}` (where its tokens stand).
fn run_state(engine: &mut Eng, run: &flowmark_core::engine::Run) -> Result<Value, String> {
    let workflow = engine.workflow(&run.workflow_id, Some(run.version)).map_err(|e| e.to_string())?;
    let steps: Vec<String> = run.current_steps().map(|at| workflow.step(at).id.to_string()).collect();
    Ok(json!({ "id": run.id, "status": run.status, "steps": steps }))
}

/// A person acts on the open work of a run's step, with every check the inbox makes (the
/// person holds the role or was handed the work, separation of duties): the API's run-centred
/// routes and the inbox agree on who may act.
async fn act_at_step(
    app: &App,
    id: &str,
    step: String,
    role: Option<String>,
    (by, via): (String, Option<String>),
    action: flowmark_runtime::WorkAction,
) -> Answer {
    let Some(number) = id.parse::<u64>().ok() else { return Err(invalid_run_id(id)) };
    let answer =
        query(&app.owner, move |engine, now| -> Result<Result<Value, flowmark_runtime::WorkRefusal>, String> {
            let acted = engine.act_at_step_via(RunId(number), &step, role.as_deref(), &by, via.as_deref(), action, now);
            if let Err(refusal) = acted.map_err(|e| e.to_string())? {
                return Ok(Err(refusal));
            }
            let run = engine.store().run(RunId(number)).map_err(|e| e.to_string())?.ok_or("the run is gone")?;
            Ok(Ok(run_state(engine, &run)?))
        })
        .await;
    match answer? {
        Ok(Ok(run)) => Ok(axum::Json(run).into_response()),
        Ok(Err(refusal)) => Err(crate::people::refusal(&refusal)),
        Err(error) => Err(internal(error)),
    }
}

/// Completes a task: `{"by": "sam@example.com", "fields": {"keywords": "…"}}`.
#[utoipa::path(
    post,
    path = "/api/runs/{id}/tasks/{step}",
    operation_id = "completeTask",
    tag = "runs",
    summary = "Complete a task",
    params(
        ("id" = u64, Path, minimum = 1, description = "The run id."),
        ("step" = String, Path, description = "The step's id."),
    ),
    request_body(content = schema::TaskCompletion, content_type = "application/json"),
    responses(
        (status = 200, description = "The run as it stands.", body = schema::RunState),
        (status = 400, description = "Not a run id, or the body is not what the step needs.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing is open at that step (for that role), or the run ignored the input; `detail` says why.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or is bound to another person than `by`, or `by` may not act here: they do not hold the role and were not handed the work, or separation of duties forbids it (an author deciding their own work, one person deciding two stages of a round).", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Unauthenticated,
    ),
    security(("bearer" = [])),
)]
async fn complete_task(app: App, headers: HeaderMap, Path((id, step)): Path<(String, String)>, body: Bytes) -> Answer {
    let (fields, acting) = crate::api::admin_acting(&app, &headers, &body).await?;
    let by = acting.by(&fields, "say who completed the task: `by`")?;
    match crate::people::parse_action("complete", &fields) {
        Ok(flowmark_runtime::WorkAction::Complete { fields }) => {
            let action = flowmark_runtime::WorkAction::Complete { fields };
            act_at_step(&app, &id, step, None, (by, acting.via), action).await
        }
        Ok(_) => Err(internal("`complete` parsed as another action")),
        Err(detail) => Err(problem(StatusCode::BAD_REQUEST, "Invalid input", detail)),
    }
}

/// Decides an approval: `{"role": "editor", "by": "dana@example.com", "decision": "approve" |
/// "approve_with_changes" | "request_changes" | "reject", "comment": "…"}`.
#[utoipa::path(
    post,
    path = "/api/runs/{id}/approvals/{step}",
    operation_id = "decideApproval",
    tag = "runs",
    summary = "Decide an approval",
    params(
        ("id" = u64, Path, minimum = 1, description = "The run id."),
        ("step" = String, Path, description = "The step's id."),
    ),
    request_body(content = schema::ApprovalDecision, content_type = "application/json"),
    responses(
        (status = 200, description = "The run as it stands.", body = schema::RunState),
        (status = 400, description = "Not a run id, or the body is not what the step needs.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing is open at that step (for that role), or the run ignored the input; `detail` says why.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or is bound to another person than `by`, or `by` may not act here: they do not hold the role and were not handed the work, or separation of duties forbids it (an author deciding their own work, one person deciding two stages of a round).", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Unauthenticated,
    ),
    security(("bearer" = [])),
)]
async fn decide_approval(
    app: App,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let (fields, acting) = crate::api::admin_acting(&app, &headers, &body).await?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
    let missing = "say who decides and in which role: `by`, `role`";
    let by = acting.by(&fields, missing)?;
    let Some(role) = text("role") else {
        return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", missing));
    };
    match crate::people::parse_action("decide", &fields) {
        Ok(action @ flowmark_runtime::WorkAction::Decide { .. }) => {
            act_at_step(&app, &id, step, Some(role), (by, acting.via), action).await
        }
        Ok(_) => Err(internal("`decide` parsed as another action")),
        Err(detail) => Err(problem(StatusCode::BAD_REQUEST, "Invalid input", detail)),
    }
}

/// Cancels a run: `{"reason": "…"}` (optional). The run ends as exited.
#[utoipa::path(
    post,
    path = "/api/runs/{id}/cancel",
    operation_id = "cancelRun",
    tag = "runs",
    summary = "Cancel a run",
    params(
        ("id" = u64, Path, minimum = 1, description = "The run id."),
    ),
    request_body(content = Option<schema::Cancellation>, content_type = "application/json"),
    responses(
        (status = 200, description = "The run as it stands.", body = schema::RunState),
        (status = 400, description = "Not a run id, or the body is not what the step needs.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run ignored the input, and `detail` says why (not waiting at that step, not that role, already decided, ended).", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn cancel_run(app: App, _admin: Admin, Path(id): Path<String>, body: Bytes) -> Answer {
    let reason = if body.is_empty() {
        "cancelled over the API".to_owned()
    } else {
        match json_object(&body) {
            Ok(fields) => fields.get("reason").and_then(Value::as_str).unwrap_or("cancelled over the API").to_owned(),
            Err((title, detail)) => return Err(problem(StatusCode::BAD_REQUEST, title, detail)),
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
#[utoipa::path(
    post,
    path = "/api/workflows/{id}/runs",
    operation_id = "startRun",
    tag = "runs",
    summary = "Start a run by hand",
    description = "The API's manual trigger, optionally with the event the run starts on (readable as `event` in the workflow). The workflow must be active; its entry rule decides. The answer comes once the run's first commit is durable, with where the run stands then: a workflow without waits has run to its end, so the caller gets its result (`steps`). Concurrent starts share one commit. Send an `Idempotency-Key` header (such as a UUID) to make retries safe: the first start with a key starts the run, a retry with the same key and the same body starts nothing and answers that run as it stands now, with `Idempotent-Replayed: true`; the same key with another subject or event is refused with 422. Keys are kept per workflow, durably, for 30 days.",
    params(
        ("id" = String, Path, description = "The workflow id."),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "1 to 255 visible ASCII characters naming this start; the same key with another subject is refused (422)."),
    ),
    request_body(content = schema::StartRun, content_type = "application/json"),
    responses(
        (status = 201, description = "Started.", body = schema::RunStarted, headers(("Idempotent-Replayed" = String, description = "`true` when an earlier start with the same `Idempotency-Key` started this run and this call started nothing."))),
        (status = 400, description = "Not `{\"subject\": …, \"event\"?: {\"name\": …, \"properties\"?: {…}}}`, or over 32 KiB; or an `Idempotency-Key` that is empty, longer than 255 characters or not visible ASCII.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workflow is paused, or its entry rule refuses this subject.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` already started a run for another subject, or with another event (name or properties): a retry must repeat the start as it was.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn start_run(app: App, _admin: Admin, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Answer {
    if let Some(too_large) = over_event_size("Start too large", &body) {
        return Err(too_large);
    }
    let idempotency_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid idempotency key", detail)),
    };
    let request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => match start_request(&id, fields) {
            Ok(request) => StartRequest { idempotency_key, ..request },
            Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid start", detail)),
        },
        Ok(_) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid start", "the body must be a JSON object")),
        Err(error) => {
            return Err(problem(StatusCode::BAD_REQUEST, "Invalid JSON", format!("the body is not JSON: {error}")));
        }
    };
    let answer = match ask(&app.owner, |reply| Command::Start { requests: vec![request], reply }).await? {
        Ok(mut answers) => answers.pop(),
        Err(error) => return Err(internal(error)),
    };
    match answer {
        Some(Started::Run { id: run, status, outputs, replayed }) => {
            let body = json!({ "run": run, "status": status, "steps": outputs });
            let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
            if replayed {
                // The answer to a retry: the run an earlier call with this key started.
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Some(Started::KeyReused { run }) => Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency key reused",
            format!(
                "this Idempotency-Key started run {} for another subject or with another event; a retry must \
                 repeat the start as it was, and a new start needs a new key",
                run.0
            ),
        )),
        Some(Started::EntryRefused) => Err(problem(
            StatusCode::CONFLICT,
            "Entry refused",
            format!("the entry rule of `{id}` does not let this subject start again now"),
        )),
        Some(Started::UnknownWorkflow) => {
            Err(problem(StatusCode::NOT_FOUND, "No such workflow", format!("there is no workflow `{id}`")))
        }
        Some(Started::Paused) => {
            Err(problem(StatusCode::CONFLICT, "Workflow paused", format!("`{id}` is paused; activate it first")))
        }
        None => Err(internal("the engine gave no answer for the start")),
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

    /// Every operation has a unique `operationId`, a summary and responses; every one but
    /// the public ones names its security; every schema referenced is defined, and every
    /// schema defined is reached from some operation.
    #[test]
    fn the_generated_document_is_complete() {
        let doc: Value = serde_json::from_str(&openapi_document()).expect("the OpenAPI document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let public = [
            "/healthz",
            "/api/openapi.json",
            "/u/{subject}/{signature}",
            "/hooks/{source}",
            "/t/c/{token}",
            "/t/o/{token}",
            "/cal/people/{email}/{token}",
            "/cal/workspace/{token}",
        ];
        let mut operation_ids = std::collections::HashSet::new();
        let mut operations = 0;
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                operations += 1;
                let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(operation_ids.insert(id.to_owned()), "{method} {path}: operationId `{id}` is used twice");
                assert!(operation["summary"].is_string(), "{method} {path}: no summary");
                assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
                let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
                assert_eq!(secured, !public.contains(&path.as_str()), "{method} {path}: security");
            }
        }
        assert!(operations >= 46, "{operations} operations");
        // Every reference resolves; every schema is reached from the paths.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut reached = std::collections::BTreeSet::new();
        let mut pending: Vec<&Value> = vec![&doc["paths"]];
        while let Some(value) = pending.pop() {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(reference)) = map.get("$ref") {
                        let name = reference.strip_prefix("#/components/schemas/").expect("a schema reference");
                        let schema = schemas.get(name).unwrap_or_else(|| panic!("`{name}` is referenced, not defined"));
                        if reached.insert(name.to_owned()) {
                            pending.push(schema);
                        }
                    }
                    pending.extend(map.values());
                }
                Value::Array(items) => pending.extend(items),
                _ => {}
            }
        }
        let defined: std::collections::BTreeSet<String> = schemas.keys().cloned().collect();
        assert_eq!(reached, defined, "schemas defined but never reached");
    }
}
