//! The HTTP API of workspaces: which workspace a token is for, and, for the `default`
//! workspace's admins (the server's operators), the list of workspaces and making a new one
//! with its first admin token.
//!
//! Invariant: only a credential of the `default` workspace lists or creates workspaces; any
//! other workspace's token learns its own workspace's name and nothing about the others.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use flowmark_store::{Scope, Token, WorkspaceName};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::{
    Admin, Answer, App, Shared, admin_object, get_document, internal, operators_only, problem, put_document, query,
};
use crate::openapi::schema;
use crate::workspaces::CreateError;

pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(this_workspace))
        .routes(routes!(workspaces, create_workspace))
        .routes(routes!(settings, put_settings))
}

#[utoipa::path(
    get,
    path = "/api/workspace/settings",
    operation_id = "getWorkspaceSettings",
    tag = "workspaces",
    summary = "The workspace's settings: its email sender and its variables",
    responses(
        (status = 200, description = "The settings as written.", body = schema::WorkspaceSettings),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn settings(app: App, headers: HeaderMap) -> Answer {
    get_document(&app, &headers, |engine| engine.settings().cloned(), json!({ "variables": {} })).await
}

/// Replaces the workspace's settings: `{"email_from": "Acme <news@acme.example>",
/// "variables": {...}}`.
#[utoipa::path(
    put,
    path = "/api/workspace/settings",
    operation_id = "putWorkspaceSettings",
    tag = "workspaces",
    summary = "Replace the workspace's settings",
    description = "`email_from` is the sender of the workspace's email whose step names none; `variables` are readable as `env.<name>` in its templates and conditions (64 KiB at most). Both apply to what is rendered from now on.",
    request_body(content = schema::WorkspaceSettings, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored.", body = schema::Updated),
        (status = 400, description = "Not settings.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every problem (a sender that is not an address, variables too large); nothing changed.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn put_settings(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    put_document(&app, &headers, &body, "settings", |engine, source, now| engine.set_settings(source, now)).await
}

#[utoipa::path(
    get,
    path = "/api/workspace",
    operation_id = "getWorkspace",
    tag = "workspaces",
    summary = "The workspace the request is for",
    responses(
        (status = 200, description = "Its name and where its links start.", body = schema::Workspace),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn this_workspace(app: App, _admin: Admin) -> Answer {
    Ok(axum::Json(json!({ "name": app.workspace.as_str(), "prefix": app.link("") })).into_response())
}

#[utoipa::path(
    get,
    path = "/api/workspaces",
    operation_id = "listWorkspaces",
    tag = "workspaces",
    summary = "The server's workspaces (the `default` workspace's tokens only)",
    responses(
        (status = 200, description = "Every workspace, `default` first.", body = schema::WorkspaceList),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn workspaces(app: App, _admin: Admin) -> Answer {
    operators_only(&app)?;
    let names: Vec<Value> = app
        .workspaces
        .names()
        .iter()
        .map(|name| json!({ "name": name.as_str(), "prefix": crate::workspaces::link_prefix(name) }))
        .collect();
    Ok(axum::Json(json!({ "workspaces": names })).into_response())
}

#[utoipa::path(
    post,
    path = "/api/workspaces",
    operation_id = "createWorkspace",
    tag = "workspaces",
    summary = "Create a workspace, with an admin token for it (the `default` workspace's admins only)",
    description = "The workspace gets a store of its own; the answer carries an `admin` token for it, shown this once. Its admins then invite people (`PUT /api/directory`, `PUT /api/accounts/{email}`) and make further tokens.",
    request_body(content = schema::NewWorkspace, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = schema::WorkspaceCreated),
        (status = 400, description = "Not a workspace name.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A workspace of that name exists.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn create_workspace(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    let fields = admin_object(&app, &headers, &body).await?;
    operators_only(&app)?;
    let given = fields.get("name").and_then(Value::as_str).unwrap_or_default();
    let name =
        WorkspaceName::parse(given).map_err(|e| problem(StatusCode::BAD_REQUEST, "Invalid input", e.to_string()))?;
    let registry = app.workspaces.clone();
    let creating = name.clone();
    // Opening a database and starting its owner thread blocks: off the async workers.
    let created = tokio::task::spawn_blocking(move || registry.create(&creating))
        .await
        .map_err(|_| internal("creating the workspace failed"))?;
    match created {
        Ok(()) => {}
        Err(CreateError::Exists(name)) => {
            return Err(problem(StatusCode::CONFLICT, "Workspace exists", format!("there is a workspace `{name}`")));
        }
        Err(error @ CreateError::Unsupported) => {
            return Err(problem(StatusCode::NOT_IMPLEMENTED, "Not supported", error.to_string()));
        }
        Err(CreateError::Failed(error)) => return Err(internal(error)),
    }
    let text = crate::auth::new_token().map_err(|e| internal(format!("no randomness for a token: {e}")))?;
    let hash = crate::auth::token_hash(&text);
    let workspace = name.to_string();
    // Into the catalogue, the `default` workspace's store.
    let stored = query(&app.workspaces.catalogue(), move |engine, now| {
        let token = Token {
            workspace,
            name: "first admin token".to_owned(),
            scopes: vec![Scope::Admin, Scope::Ingest],
            created_at: now,
            person: None,
        };
        engine.put_token(&hash, &token)
    })
    .await?;
    stored.map_err(internal)?;
    let answer = json!({
        "name": name.as_str(),
        "prefix": crate::workspaces::link_prefix(&name),
        "token": text,
        "scopes": ["admin", "ingest"],
    });
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}
