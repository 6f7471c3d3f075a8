//! The plumbing every route module shares: the handlers' state (`App`), the `Admin`
//! extractor and the credentials check, the one error handlers refuse with (`Problem`, an
//! RFC 9457 problem detail; handlers return `Answer` and pass refusals up with `?`), and the
//! way a handler asks the owner thread to run a closure on the engine (`query`,
//! `query_owner`) or to read and write a stored document.
//!
//! Route modules (`http`, `people`, `ui`) import from here, never from each other.

use crate::Config;
use crate::auth::{constant_time_eq, token_hash};
use crate::owner::{Command, Owner};
use crate::workspaces::Workspaces;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowmark_core::Timestamp;
use flowmark_store::{Scope, Store, WorkflowStatus, WorkspaceName};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::oneshot;

/// What the router holds: the server's workspaces and settings, shared by every request.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) workspaces: Workspaces,
    pub(crate) config: Arc<Config>,
    /// The OpenAPI document, built once from the routers.
    pub(crate) openapi: Arc<str>,
    /// Failed sign-ins, by account and by address (`throttle`).
    pub(crate) sign_ins: Arc<std::sync::Mutex<crate::throttle::Throttle>>,
    /// Password checks (Argon2, tens of milliseconds of CPU each) run on blocking threads, at
    /// most this many at once, so a flood of sign-ins cannot take every core.
    pub(crate) password_checks: Arc<tokio::sync::Semaphore>,
}

/// What every handler is given: the one workspace the request is for (its owner, its signing
/// secret, its disabled webhook URLs) and the server's settings (through `Deref`). Made only by
/// `route`, from the request (see `workspaces`); a handler has no way to another workspace.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) owner: Owner,
    pub(crate) workspace: WorkspaceName,
    /// What this workspace's links are signed with.
    pub(crate) secret: Option<Vec<u8>>,
    /// This workspace's webhook URLs that answered `410 Gone`.
    pub(crate) gone: flowmark_runtime::webhook::GoneEndpoints,
    /// Did the path name the workspace (`/w/{name}/…`)? Then no credential moves the request
    /// to another.
    named_by_path: bool,
    /// The bearer or Basic credential presented, with the stored token it is (looked up once).
    presented: Option<Arc<(String, Option<flowmark_store::Token>)>>,
    shared: Shared,
}

impl std::ops::Deref for App {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl axum::extract::FromRequestParts<Shared> for App {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &Shared) -> Result<App, Problem> {
        parts.extensions.get::<App>().cloned().ok_or_else(|| internal("the request was not routed to a workspace"))
    }
}

impl Shared {
    /// Workspace `name` as a handler's `App`, or `404` when the server has none of that name.
    fn app(&self, name: &WorkspaceName, named_by_path: bool) -> Result<App, Problem> {
        let Some(tenant) = self.workspaces.get(name) else {
            return Err(problem(StatusCode::NOT_FOUND, "No such workspace", format!("there is no workspace `{name}`")));
        };
        Ok(App {
            owner: tenant.owner,
            workspace: name.clone(),
            secret: tenant.secret,
            gone: tenant.gone,
            named_by_path,
            presented: None,
            shared: self.clone(),
        })
    }

    /// The stored token with this text, from the catalogue (the `default` workspace's store).
    async fn stored_token(&self, presented: &str) -> Result<Option<flowmark_store::Token>, Problem> {
        let hash = token_hash(presented);
        query(&self.workspaces.catalogue(), move |engine, _| engine.store().token(&hash)).await?.map_err(internal)
    }

    /// Is `presented` one of the keys given on the command line (which act for `default`)?
    fn configured(&self, presented: &str, scope: Scope) -> bool {
        let keys = match scope {
            Scope::Ingest => &self.config.write_keys,
            Scope::Admin | Scope::Read => &self.config.admin_tokens,
        };
        keys.iter().chain(&self.config.admin_tokens).any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    }
}

impl App {
    /// The same request in workspace `name`: for a credential that arrives in the body (a
    /// Segment `writeKey`, the sign-in form), which `route` could not see. A path that named
    /// its workspace keeps it.
    pub(crate) fn switch_to(&self, name: &WorkspaceName) -> Result<App, Problem> {
        if self.named_by_path || *name == self.workspace {
            return Ok(self.clone());
        }
        self.shared.app(name, false)
    }

    /// The workspace a key presented in a body is for, when it is a stored token.
    pub(crate) async fn workspace_of(&self, presented: &str) -> Result<Option<WorkspaceName>, Problem> {
        if self.shared.configured(presented, Scope::Ingest) {
            return Ok(Some(WorkspaceName::default_workspace()));
        }
        let token = self.shared.stored_token(presented).await?;
        Ok(token.and_then(|t| WorkspaceName::parse(&t.workspace).ok()))
    }

    /// `path` inside this workspace, as a link (`/w/{name}` before it unless `default`).
    pub(crate) fn link(&self, path: &str) -> String {
        format!("{}{path}", crate::workspaces::link_prefix(&self.workspace))
    }
}

/// Picks the workspace a request is for (the rules are `workspaces`'s) before any route sees
/// it: takes a `/w/{name}` prefix off the path, and hands the handlers that workspace as their
/// `App`. `404` for a workspace the server does not have.
pub(crate) async fn route(
    axum::extract::State(shared): axum::extract::State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut named = None;
    if let Some((name, rest)) = crate::workspaces::split_prefix(request.uri().path()) {
        let rest = match request.uri().query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        match rest.parse::<axum::http::Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                return problem(StatusCode::BAD_REQUEST, "Invalid path", "the path is not a valid URI").into_response();
            }
        }
        named = Some(name);
    }
    let presented = bearer(request.headers()).or_else(|| basic_user(request.headers()));
    let mut token = None;
    if let Some(text) = &presented
        && !shared.configured(text, Scope::Ingest)
    {
        token = match shared.stored_token(text).await {
            Ok(token) => token,
            Err(problem) => return problem.into_response(),
        };
    }
    let workspace = match (&named, &token, presented.is_some()) {
        (Some(name), _, _) => name.clone(),
        (None, Some(token), _) => match WorkspaceName::parse(&token.workspace) {
            Ok(name) => name,
            Err(_) => return unknown_credentials().into_response(),
        },
        (None, None, true) => WorkspaceName::default_workspace(),
        // The session cookie chooses only for the web UI's pages: a signed link (unsubscribe,
        // click tracking, a calendar feed) opened in a browser signed in elsewhere still goes
        // to the workspace that signed it.
        (None, None, false) if request.uri().path().starts_with("/ui") => {
            crate::workspaces::split_cookie(&session_cookie(request.headers()).unwrap_or_default()).0
        }
        (None, None, false) => WorkspaceName::default_workspace(),
    };
    let mut app = match shared.app(&workspace, named.is_some()) {
        Ok(app) => app,
        // A prefix naming no workspace is answered like any path the server does not serve,
        // so which workspaces exist is not told to whoever asks.
        Err(_) if named.is_some() => return StatusCode::NOT_FOUND.into_response(),
        // A token of a workspace that is gone is no credential at all.
        Err(_) if token.is_some() => return unknown_credentials().into_response(),
        // A session cookie of a workspace that is gone is no session at all.
        Err(_) => match shared.app(&WorkspaceName::default_workspace(), false) {
            Ok(app) => app,
            Err(problem) => return problem.into_response(),
        },
    };
    app.presented = presented.map(|text| Arc::new((text, token)));
    request.extensions_mut().insert(app);
    next.run(request).await
}

/// The name of the web UI's session cookie.
pub(crate) const SESSION_COOKIE: &str = "fm_session";

/// The web UI's session cookie, whole (`acme.fm_…`), if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// The user of an `Authorization: Basic …` header (Segment's libraries send the write key so).
pub(crate) fn basic_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|userpass| userpass.split(':').next().unwrap_or_default().to_owned())
}

/// Most password checks at once: half the cores (at least one), so requests that need no
/// password always find a core.
pub(crate) fn password_checks_max() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The client's address, when the server was started with it (`serve` is; a router in a test
/// may not be).
pub(crate) struct PeerAddress(pub(crate) Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let connected = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(PeerAddress(connected.map(|c| c.0.ip())))
    }
}

/// The engine as the server runs it, on whichever store the binary picked.
pub(crate) type Eng = flowmark_runtime::Engine<crate::owner::ServerStore>;

/// The one error every handler answers with: an RFC 9457 problem detail
/// (`application/problem+json`) with `status`, `title`, `detail` and any extra members.
/// Handlers return [`Answer`] and pass refusals up with `?`.
#[derive(Debug)]
pub(crate) struct Problem(Box<Detail>);

#[derive(Debug)]
struct Detail {
    status: StatusCode,
    title: String,
    detail: String,
    extra: Value,
    retry_after: Option<&'static str>,
}

/// What an API handler answers: its response, or the problem that refused the request.
pub(crate) type Answer = Result<Response, Problem>;

/// What a web page answers: the page, or what stands in for it (the redirect to sign in, an
/// error page, a problem detail).
pub(crate) type Page = Result<Response, Response>;

impl From<Problem> for Response {
    fn from(problem: Problem) -> Response {
        problem.into_response()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let Detail { status, title, detail, extra, retry_after } = *self.0;
        let mut body = json!({
            "type": format!("https://flowmark.dev/problems/{}", title.to_lowercase().replace(' ', "-")),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// A problem detail with `status`, `title` and `detail`.
pub(crate) fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Problem {
    problem_with(status, title, detail, Value::Null)
}

/// A problem detail with extra members (`extra` is a JSON object: `errors`, `diagnostics`, …).
pub(crate) fn problem_with(status: StatusCode, title: &str, detail: impl Into<String>, extra: Value) -> Problem {
    Problem(Box::new(Detail { status, title: title.to_owned(), detail: detail.into(), extra, retry_after: None }))
}

/// A `500` for a store that failed.
pub(crate) fn internal(error: impl std::fmt::Display) -> Problem {
    problem(StatusCode::INTERNAL_SERVER_ERROR, "Store failed", error.to_string())
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// An API request made with a token that has the `admin` scope, or, for a `GET` (or
/// `HEAD`), the `read` scope: taking it as a handler's argument is the check (`401` without
/// credentials or with unknown ones, `403` without the scope), so no handler repeats it.
pub(crate) struct Admin;

impl axum::extract::FromRequestParts<Shared> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, shared: &Shared) -> Result<Admin, Problem> {
        let app = App::from_request_parts(parts, shared).await?;
        let reading = parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
        let scope = if reading { Scope::Read } else { Scope::Admin };
        authorize(&app, bearer(&parts.headers), scope).await.map(|()| Admin)
    }
}

/// Checks a presented key or token for a scope: the keys given on the command line first,
/// then the tokens stored (by hash). `401` when unknown, `403` when it lacks the scope.
pub(crate) async fn authorize(app: &App, presented: Option<String>, scope: Scope) -> Result<(), Problem> {
    credential(app, presented, scope).await.map(|_| ())
}

/// As `authorize`, giving the stored token that was presented (`None` for a key given on the
/// command line, which acts for the operator).
pub(crate) async fn credential(
    app: &App,
    presented: Option<String>,
    scope: Scope,
) -> Result<Option<flowmark_store::Token>, Problem> {
    let Some(presented) = presented else {
        let how = match scope {
            Scope::Ingest => "send the write key as the HTTP Basic user (empty password) or as `writeKey` in the body",
            Scope::Admin | Scope::Read => "send an API token as `Authorization: Bearer <token>`",
        };
        return Err(problem(StatusCode::UNAUTHORIZED, "Missing credentials", how));
    };
    if app.workspace.is_default() && app.configured(&presented, scope) {
        return Ok(None);
    }
    let token = match &app.presented {
        Some(known) if known.0 == presented => known.1.clone(),
        _ => app.stored_token(&presented).await?,
    };
    match token {
        // A token is accepted by the workspace it was made for only, and refused as an unknown
        // one would be: which workspace a token is for is not told.
        Some(token) if token.workspace != app.workspace.as_str() => Err(unknown_credentials()),
        // Whatever `read` may do, `admin` may too.
        Some(token)
            if token.scopes.contains(&scope) || (scope == Scope::Read && token.scopes.contains(&Scope::Admin)) =>
        {
            Ok(Some(token))
        }
        Some(_) => Err(problem(
            StatusCode::FORBIDDEN,
            "Missing scope",
            format!("this token does not have the `{}` scope", scope.as_str()),
        )),
        None => Err(unknown_credentials()),
    }
}

/// `403` unless the request is the `default` workspace's: only its admins (the server's
/// operators) list and create workspaces and move the clock.
pub(crate) fn operators_only(app: &App) -> Result<(), Problem> {
    if app.workspace.is_default() {
        Ok(())
    } else {
        Err(problem(
            StatusCode::FORBIDDEN,
            "Not an operator",
            "only the `default` workspace's admins list and create workspaces and move the clock",
        ))
    }
}

/// The `401` for a key or token that is not one of this server's (or not of this workspace).
fn unknown_credentials() -> Problem {
    problem(StatusCode::UNAUTHORIZED, "Unknown credentials", "the key or token is not one of this server's")
}

/// Sends the owner a command made with the reply channel and awaits the answer (`429` when its
/// queue is full, `500` when the work failed on a bug).
pub(crate) async fn ask<T>(owner: &Owner, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Problem> {
    let (reply, answer) = oneshot::channel();
    if !owner.send(make(reply)) {
        let mut overloaded =
            problem(StatusCode::TOO_MANY_REQUESTS, "Overloaded", "the server is busy; try again shortly");
        overloaded.0.retry_after = Some("1");
        return Err(overloaded);
    }
    // The owner drops a reply only when the work failed on a bug (it logged the panic).
    answer.await.map_err(|_| {
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "the server failed on this request; its log says why",
        )
    })
}

/// Runs `work` on the owner thread with the engine and the time, and awaits its answer.
pub(crate) async fn query<T: Send + 'static>(
    owner: &Owner,
    work: impl FnOnce(&mut flowmark_runtime::Engine<crate::owner::ServerStore>, Timestamp) -> T + Send + 'static,
) -> Result<T, Problem> {
    ask(owner, |reply| {
        Command::Query(Box::new(move |engine, now| {
            let _ = reply.send(work(engine, now));
        }))
    })
    .await
}

/// `query`, for work that reads or writes the store: a store error becomes a 500.
pub(crate) async fn query_owner<T: Send + 'static>(
    app: &App,
    work: impl FnOnce(
        &mut flowmark_runtime::Engine<crate::owner::ServerStore>,
        Timestamp,
    ) -> Result<T, flowmark_store::Error>
    + Send
    + 'static,
) -> Result<T, Problem> {
    query(&app.owner, work).await?.map_err(internal)
}

/// A workspace document as written, or `empty` when none was ever set.
pub(crate) async fn get_document<T: serde::Serialize + Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    read: fn(&Eng) -> Option<T>,
    empty: Value,
) -> Answer {
    authorize(app, bearer(headers), Scope::Read).await?;
    match query(&app.owner, move |engine, _| read(engine)).await? {
        Some(document) => Ok(axum::Json(document).into_response()),
        None => Ok(axum::Json(empty).into_response()),
    }
}

/// Replaces a workspace document: `400` when the body is not one (`what`), `422` listing every
/// problem when any part is wrong — nothing changes then.
pub(crate) async fn put_document<T: serde::de::DeserializeOwned + Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    what: &'static str,
    set: SetDocument<T>,
) -> Answer {
    authorize(app, bearer(headers), Scope::Admin).await?;
    let title = format!("Invalid {what}");
    let source: T = match serde_json::from_slice(body) {
        Ok(source) => source,
        Err(error) => return Err(problem(StatusCode::BAD_REQUEST, &title, format!("the body is not {what}: {error}"))),
    };
    match query(&app.owner, move |engine, now| set(engine, source, now).map_err(|e| e.to_string())).await? {
        Ok(Ok(())) => Ok((StatusCode::OK, axum::Json(json!({ "updated": true }))).into_response()),
        Ok(Err(errors)) => Err(problem_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            &title,
            format!("{} problem(s)", errors.len()),
            json!({ "errors": errors }),
        )),
        Err(error) => Err(internal(error)),
    }
}

/// An admin request's JSON object body, or the `401`/`403`/`400` that refuses it.
pub(crate) async fn admin_object(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Map<String, Value>, Problem> {
    authorize(app, bearer(headers), Scope::Admin).await?;
    json_object(body).map_err(|(title, detail)| problem(StatusCode::BAD_REQUEST, title, detail))
}

/// Who a request acts as in the team's work: the person its token is bound to, if it is;
/// otherwise the service token it acts through (`via`), which the history records.
pub(crate) struct Acting {
    person: Option<String>,
    pub(crate) via: Option<String>,
}

impl Acting {
    /// The person acting: a personal token's own person (the body's `by` may repeat it, in any
    /// case, and may not name anyone else: `403`), or else the body's `by` (`400` with
    /// `missing` when there is none).
    pub(crate) fn by(&self, fields: &serde_json::Map<String, Value>, missing: &str) -> Result<String, Problem> {
        let by = fields.get("by").and_then(Value::as_str).map(str::trim).filter(|b| !b.is_empty());
        match (&self.person, by) {
            (Some(person), Some(by)) if !by.eq_ignore_ascii_case(person) => Err(problem(
                StatusCode::FORBIDDEN,
                "Not yours to act as",
                format!("this token acts as `{person}` only; it may not act as `{by}`"),
            )),
            (Some(person), _) => Ok(person.clone()),
            (None, Some(by)) => Ok(by.to_owned()),
            (None, None) => Err(problem(StatusCode::BAD_REQUEST, "Invalid input", missing)),
        }
    }
}

/// As `admin_object`, with who the request may act as.
pub(crate) async fn admin_acting(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(serde_json::Map<String, Value>, Acting), Problem> {
    let token = credential(app, bearer(headers), Scope::Admin).await?;
    let fields = json_object(body).map_err(|(title, detail)| problem(StatusCode::BAD_REQUEST, title, detail))?;
    let via = match &token {
        Some(token) if token.person.is_none() => Some(format!("token `{}`", token.name)),
        Some(_) => None,
        None => Some("an operator's API token".to_owned()),
    };
    Ok((fields, Acting { person: token.and_then(|t| t.person), via }))
}

/// A workflow status as the API spells it.
pub(crate) fn status_name(status: WorkflowStatus) -> &'static str {
    match status {
        WorkflowStatus::Active => "active",
        WorkflowStatus::Paused => "paused",
    }
}

/// How a workspace document (score models, segments) is replaced: checked whole, then stored.
pub(crate) type SetDocument<T> = fn(&mut Eng, T, Timestamp) -> Result<Result<(), Vec<String>>, flowmark_runtime::Error>;

/// The body as a JSON object, or the title and detail of the `400` that says why not.
pub(crate) fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, (&'static str, String)> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(("Invalid input", "the body must be a JSON object".to_owned())),
        Err(error) => Err(("Invalid JSON", format!("the body is not JSON: {error}"))),
    }
}

/// A listing's `limit` parameter: `default` when absent; what is wrong with it when it is not
/// a whole number from 1 to `max`.
pub(crate) fn query_limit(
    params: &std::collections::HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, String> {
    match params.get("limit").map(|v| v.parse::<usize>()) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!("`limit` must be a whole number from 1 to {max}")),
    }
}
