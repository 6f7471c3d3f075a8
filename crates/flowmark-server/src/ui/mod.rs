//! The web UI, served by `flowmark serve` under `/ui` and embedded in the binary: sign-in,
//! **My work** (tasks and approvals waiting for the signed-in person, their notifications),
//! a work item's page with its actions, and an item's page (its work, outcomes, comments).
//!
//! Sign-in is a local account (`PUT /api/accounts/{email}`, Argon2id password) that opens a
//! session: a random cookie (`HttpOnly`, `SameSite=Lax`, `Secure` behind https), stored by its
//! SHA-256, 12 hours long. Every form carries the session's CSRF token, checked on POST; the
//! sign-in form is checked by `Origin`. The person acts as themselves: the same rules as the
//! API (`crate::people`) decide what they may do.
//!
//! Invariant: no page is served to a request without a live session, and no POST changes
//! anything without the session's CSRF token.

mod calendar;
mod explore;
mod html;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use flowmark_core::Timestamp;
use flowmark_runtime::WorkRefusal;
use flowmark_store::{Session, Store, WorkItem, WorkKind};
use serde_json::Value;
use std::fmt::Write as _;

use crate::api::SESSION_COOKIE as COOKIE;
use crate::api::{Answer, App, Page, PeerAddress, Shared, admin_object, internal, problem, query};
use crate::auth::{constant_time_eq, hash_password, new_token, token_hash, verify_password};
use crate::openapi::schema;
use crate::owner::now;
use html::{Zone, due, esc, page, seg, time};

/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3_600_000;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/app.css", get(css))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/work/{id}", get(work_page))
        .route("/ui/work/{id}/{action}", post(work_action))
        .route("/ui/items/{id}", get(item_page))
        .route("/ui/items/{id}/comments", post(item_comment))
        .route("/ui/items/{id}/attachments", post(item_attachment))
        .route("/ui/app.js", get(js))
        .merge(explore::routes())
        .merge(calendar::routes())
}

async fn js() -> Response {
    let mut response = html::JS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

async fn css() -> Response {
    let mut response = html::CSS.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// The API route the web UI owns: setting a person's password.
pub(crate) fn api_routes() -> utoipa_axum::router::OpenApiRouter<Shared> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(put_account))
}

/// Creates or replaces a web UI account: `{"password": "…"}` (an API token is needed).
#[utoipa::path(
    put,
    path = "/api/accounts/{email}",
    operation_id = "putAccount",
    tag = "people",
    summary = "Create or replace a person's web UI account",
    description = "Sets the password the person signs in to the web UI with.",
    params(
        ("email" = String, Path, description = "The person's email address (compared case-insensitively)."),
    ),
    request_body(content = schema::Account, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored.", body = schema::Updated),
        (status = 400, description = "Not a JSON object, or no `password`.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an email address, or a password too short or too long.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn put_account(app: App, headers: HeaderMap, Path(email): Path<String>, body: Bytes) -> Answer {
    let fields = admin_object(&app, &headers, &body).await?;
    let email = email.trim().to_lowercase();
    if !flowmark_runtime::directory::looks_like_email(&email) {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid input",
            format!("`{email}` is not an email address"),
        ));
    }
    let Some(password) = fields.get("password").and_then(Value::as_str) else {
        return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", "send the password as `password`"));
    };
    let hash = match hash_password(password) {
        Ok(hash) => hash,
        Err(crate::auth::PasswordError::Length) => {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid input",
                crate::auth::PasswordError::Length.to_string(),
            ));
        }
        Err(error) => return Err(internal(error)),
    };
    match query(&app.owner, move |engine, now| engine.put_account(&email, &hash, now)).await? {
        Ok(()) => Ok(axum::Json(serde_json::json!({ "updated": true })).into_response()),
        Err(error) => Err(internal(error)),
    }
}

/// The session token of the request's cookie, when the cookie is for the request's workspace
/// (a cookie names its workspace: `workspaces::split_cookie`).
fn session_cookie(app: &App, headers: &HeaderMap) -> Option<String> {
    let value = crate::api::session_cookie(headers)?;
    let (workspace, token) = crate::workspaces::split_cookie(&value);
    (workspace == app.workspace).then(|| token.to_owned())
}

/// The signed-in person, from the session cookie.
async fn session(app: &App, headers: &HeaderMap) -> Option<(String, Session)> {
    let hash = token_hash(&session_cookie(app, headers)?);
    let found = query(&app.owner, move |engine, now| engine.store().session(&hash, now)).await.ok()?.ok()??;
    Some((found.email.clone(), found))
}

/// The signed-in person and their session, or the redirect to sign in (then back to `path`).
pub(crate) async fn signed_in(app: &App, headers: &HeaderMap, path: &str) -> Result<(String, Session), Response> {
    session(app, headers).await.ok_or_else(|| to_login(path))
}

fn to_login(path: &str) -> Response {
    Redirect::to(&format!("/ui/login?next={}", seg(path))).into_response()
}

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sign-in form; with a workspace field when the server has more than one workspace
/// (`workspace`: the one to fill in).
fn login_form(next: &str, error: Option<&str>, workspace: Option<&str>) -> String {
    let mut body = String::from("<div class=\"login card\"><h1>Sign in to Flowmark</h1>");
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    let field = workspace.map_or(String::new(), |name| {
        format!(
            "<div><label for=\"workspace\">Workspace</label><input id=\"workspace\" name=\"workspace\" value=\"{}\" \
             autocomplete=\"organization\" required></div>",
            esc(name)
        )
    });
    let _ = write!(
        body,
        "<form class=\"stack\" method=\"post\" action=\"/ui/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">{field}\
         <div><label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required autofocus></div>\
         <div><label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></div>\
         <div><button type=\"submit\">Sign in</button></div></form></div>",
        esc(next)
    );
    page("Sign in", None, &body)
}

async fn login_page(app: App, axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>) -> Response {
    let next = q.iter().find(|(k, _)| k == "next").map_or("/ui", |(_, v)| v.as_str());
    html(StatusCode::OK, login_form(next, None, workspace_field(&app, None)))
}

/// What the sign-in form's workspace field holds: nothing on a server of one workspace.
fn workspace_field<'a>(app: &'a App, given: Option<&'a str>) -> Option<&'a str> {
    (app.workspaces.names().len() > 1).then(|| given.unwrap_or(app.workspace.as_str()))
}

/// A redirect target inside the UI only (no open redirects).
fn safe_next(next: &str) -> String {
    if next.starts_with("/ui") && !next.starts_with("//") && !next.contains('\\') {
        next.to_owned()
    } else {
        "/ui".to_owned()
    }
}

fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Is the request from a page of this server (or a client that sends no `Origin`)?
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

async fn login(
    app: App,
    PeerAddress(address): PeerAddress,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Page {
    let given = form_value(&form, "workspace").map(str::trim).filter(|w| !w.is_empty());
    if !same_origin(&headers) {
        let refusal = login_form("/ui", Some("This form was sent from another site."), workspace_field(&app, given));
        return Ok(html(StatusCode::FORBIDDEN, refusal));
    }
    let email = form_value(&form, "email").unwrap_or_default().trim().to_lowercase();
    let password = form_value(&form, "password").unwrap_or_default().to_owned();
    let next = safe_next(form_value(&form, "next").unwrap_or("/ui"));
    // The form names the workspace to sign in to. One that does not exist is answered like a
    // wrong password, after the same work (a password check against a dummy hash, a failure
    // counted), so neither the answer nor its time tells which workspaces exist.
    let switched = match given.map(flowmark_store::WorkspaceName::parse) {
        None => Some(app.clone()),
        Some(Ok(name)) => app.switch_to(&name).ok(),
        Some(Err(_)) => None,
    };
    let missing = switched.is_none();
    let app = switched.unwrap_or(app);
    // Failures count per account in each workspace (as named, when it does not exist).
    let account = format!("{}/{email}", given.unwrap_or(app.workspace.as_str()));
    let begun = app.sign_ins.lock().map_err(|_| internal("the sign-in throttle is poisoned"))?.begin(
        &account,
        address,
        now().ms(),
    );
    if let Err(locked) = begun {
        let seconds = (locked.retry_after_ms + 999) / 1000;
        let notice = format!(
            "Too many failed sign-ins ({} in a row). Signing in is paused for {seconds} second{}; \
             each further failure doubles the wait.",
            locked.failures,
            if seconds == 1 { "" } else { "s" }
        );
        let locked_out = login_form(&next, Some(&notice), workspace_field(&app, given));
        let mut response = html(StatusCode::TOO_MANY_REQUESTS, locked_out);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return Ok(response);
    }
    let valid = check_password(&app, (!missing).then_some(email.as_str()), password).await;
    let succeeded = matches!(valid, Ok(true));
    if let Ok(mut sign_ins) = app.sign_ins.lock() {
        sign_ins.finish(&account, address, succeeded, now().ms());
    }
    if !valid? {
        let wrong = if workspace_field(&app, given).is_some() {
            "Wrong workspace, email or password."
        } else {
            "Wrong email or password."
        };
        return Ok(html(StatusCode::UNAUTHORIZED, login_form(&next, Some(wrong), workspace_field(&app, given))));
    }
    let (Ok(cookie), Ok(csrf)) = (new_token(), new_token()) else {
        return Err(internal("no randomness for a session").into());
    };
    let hash = token_hash(&cookie);
    let cookie = crate::workspaces::cookie_value(&app.workspace, &cookie);
    // Behind a TLS-terminating proxy that says so, the cookie is `Secure` too (the flag only
    // ever narrows where the browser sends it, so the header needs no trust).
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.split(',').next().is_some_and(|first| first.trim().eq_ignore_ascii_case("https")));
    let secure = app.config.secure_cookies || forwarded_https;
    let answer = query(&app.owner, move |engine, now| {
        let session = Session { email, csrf, expires_at: Timestamp(now.ms() + SESSION_MS) };
        engine.start_session(&hash, &session, now)
    })
    .await;
    match answer? {
        Ok(()) => {
            let mut response = Redirect::to(&next).into_response();
            let cookie = format!(
                "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
                SESSION_MS / 1000,
                if secure { "; Secure" } else { "" }
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            Ok(response)
        }
        Err(error) => Err(internal(error).into()),
    }
}

/// Is `password` the account's (`None`: a workspace that does not exist, which has none)?
/// Verified on a blocking thread under `App::password_checks` (Argon2 takes tens of
/// milliseconds of CPU: never on the async workers), and against a dummy hash when there is no
/// account, so timing does not tell.
async fn check_password(app: &App, email: Option<&str>, password: String) -> Result<bool, crate::api::Problem> {
    let stored = match email {
        Some(email) => {
            let wanted = email.to_owned();
            query(&app.owner, move |engine, _| engine.store().account(&wanted)).await?.map_err(internal)?
        }
        None => None,
    };
    let _permit = app.password_checks.acquire().await.map_err(|_| internal("the password checks are closed"))?;
    tokio::task::spawn_blocking(move || match &stored {
        Some(hash) => verify_password(&password, hash),
        None => {
            let _ = verify_password(&password, &DUMMY_HASH);
            false
        }
    })
    .await
    .map_err(|_| internal("a password check failed"))
}

/// The time zone the signed-in person reads times in: theirs in the directory, else UTC.
pub(crate) fn reader_zone(engine: &crate::api::Eng, email: &str) -> Zone {
    Zone(engine.directory().zone_of(email))
}

/// A real Argon2id hash, verified when an account does not exist (same cost either way).
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("no account has this password").unwrap_or_default());

fn csrf_ok(form: &[(String, String)], session: &Session) -> bool {
    form_value(form, "csrf").is_some_and(|token| constant_time_eq(token.as_bytes(), session.csrf.as_bytes()))
}

async fn logout(app: App, headers: HeaderMap, axum::Form(form): axum::Form<Vec<(String, String)>>) -> Response {
    if let Some((_, session)) = session(&app, &headers).await
        && csrf_ok(&form, &session)
    {
        let hash = token_hash(&session_cookie(&app, &headers).unwrap_or_default());
        let _ = query(&app.owner, move |engine, _| engine.end_session(&hash)).await;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static("fm_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"));
    response
}

fn work_rows(items: &[WorkItem], now: Timestamp, zone: Zone, empty: &str) -> String {
    if items.is_empty() {
        return format!("<p class=\"muted\">{}</p>", esc(empty));
    }
    let mut out = String::from(
        "<table><thead><tr><th scope=\"col\">What</th><th scope=\"col\">Due</th><th scope=\"col\">Item</th><th scope=\"col\">Role</th></tr></thead><tbody>",
    );
    for item in items {
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/work/{}\">{}</a>{}</td><td>{}</td><td><a href=\"/ui/items/{}\">{}</a></td><td>{}</td></tr>",
            seg(&item.id),
            esc(&item.title),
            item.assignee
                .as_ref()
                .map(|a| format!(" <span class=\"pill\">claimed by {}</span>", esc(a)))
                .unwrap_or_default(),
            due(item.due_at, now, zone),
            seg(&item.subject_id),
            esc(&item.subject_id),
            esc(&item.role),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// My work: what waits for the signed-in person, and what they were told.
async fn home(app: App, headers: HeaderMap) -> Page {
    let Some((email, session)) = session(&app, &headers).await else { return Ok(to_login("/ui")) };
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| -> Result<String, flowmark_store::Error> {
        let tasks = engine.store().work_of_person(&who, Some(WorkKind::Task), 200)?;
        let approvals = engine.store().work_of_person(&who, Some(WorkKind::Approval), 200)?;
        let notes = engine.store().notifications(&who, 15)?;
        let zone = reader_zone(engine, &who);
        let mut body = String::from("<h1>My work</h1>");
        let _ = write!(body, "<section aria-labelledby=\"tasks\"><h2 id=\"tasks\">My tasks ({})</h2>", tasks.len());
        body.push_str(&work_rows(&tasks, now, zone, "No tasks wait for you."));
        let _ = write!(
            body,
            "</section><section aria-labelledby=\"approvals\"><h2 id=\"approvals\">Waiting for my approval ({})</h2>",
            approvals.len()
        );
        body.push_str(&work_rows(&approvals, now, zone, "No approvals wait for you."));
        body.push_str("</section><section aria-labelledby=\"notes\"><h2 id=\"notes\">Notifications</h2>");
        if notes.is_empty() {
            body.push_str("<p class=\"muted\">Nothing yet.</p>");
        } else {
            body.push_str("<ul class=\"plain notifications\">");
            for n in &notes {
                let link = n.link.as_deref().and_then(|l| l.find("/ui/").map(|at| &l[at..])).unwrap_or("/ui");
                let _ = write!(
                    body,
                    "<li><span class=\"pill\">{}</span> <a href=\"{}\">{}</a> <span class=\"muted\">{}</span></li>",
                    esc(&n.reason.replace('_', " ")),
                    esc(link),
                    esc(&n.text),
                    time(n.at, zone)
                );
            }
            body.push_str("</ul>");
        }
        body.push_str("</section>");
        Ok(body)
    })
    .await;
    match answer? {
        Ok(body) => Ok(html(StatusCode::OK, page("My work", Some((&email, &session.csrf)), &body))),
        Err(error) => Err(internal(error).into()),
    }
}

/// The item's attachments (links; deliverable versions marked) and the form to add one.
fn attachments_html(
    comments: &[flowmark_store::Comment],
    subject: &str,
    work: Option<&str>,
    csrf: &str,
    zone: Zone,
) -> String {
    let mut out = String::from(
        "<section aria-labelledby=\"attachments\"><h2 id=\"attachments\">Deliverables and attachments</h2><ul class=\"plain attachments\">",
    );
    let mut any = false;
    for c in comments.iter().rev() {
        let Some(link) = &c.link else { continue };
        any = true;
        let _ = write!(
            out,
            "<li>{}<a href=\"{}\" rel=\"noopener noreferrer nofollow\">{}</a> <span class=\"muted\">by {} · {}</span></li>",
            c.version.map(|v| format!("<span class=\"pill version\">v{v}</span> ")).unwrap_or_default(),
            esc(link),
            esc(&c.body),
            esc(&c.by),
            time(c.at, zone)
        );
    }
    if !any {
        out.push_str("<li class=\"muted\">Nothing attached yet.</li>");
    }
    let _ = write!(
        out,
        "</ul><form class=\"stack\" method=\"post\" action=\"/ui/items/{}/attachments\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}\
         <div><label for=\"attach-title\">Title</label><input id=\"attach-title\" name=\"title\" type=\"text\" required maxlength=\"300\"></div>\
         <div><label for=\"attach-url\">Link</label><input id=\"attach-url\" name=\"url\" type=\"url\" required placeholder=\"https://\"></div>\
         <div><input id=\"attach-version\" name=\"new_version\" type=\"checkbox\" aria-describedby=\"attach-help\"> \
         <label for=\"attach-version\" class=\"inline\">A new version of the deliverable</label>\
         <br><small id=\"attach-help\" class=\"muted\">Approvals waiting on this item start over: decisions on the old version no longer count.</small></div>\
         <div><button type=\"submit\" class=\"secondary\">Attach</button></div></form></section>",
        seg(subject),
        esc(csrf),
        work.map(|w| format!("<input type=\"hidden\" name=\"work\" value=\"{}\">", esc(w))).unwrap_or_default()
    );
    out
}

fn comments_html(
    comments: &[flowmark_store::Comment],
    subject: &str,
    work: Option<&str>,
    csrf: &str,
    zone: Zone,
) -> String {
    let mut out = attachments_html(comments, subject, work, csrf, zone);
    out.push_str(
        "<section aria-labelledby=\"comments\"><h2 id=\"comments\">Comments</h2><ul class=\"plain comments\">",
    );
    for c in comments.iter().filter(|c| c.link.is_none()) {
        let _ = write!(
            out,
            "<li><strong>{}</strong> <span class=\"muted\">{}</span><br>{}</li>",
            esc(&c.by),
            time(c.at, zone),
            esc(&c.body)
        );
    }
    if comments.iter().all(|c| c.link.is_some()) {
        out.push_str("<li class=\"muted\">No comments yet.</li>");
    }
    let _ = write!(
        out,
        "</ul><form class=\"stack\" method=\"post\" action=\"/ui/items/{}/comments\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}\
         <div><label for=\"comment-body\">Add a comment</label><textarea id=\"comment-body\" name=\"body\" required \
         aria-describedby=\"comment-help\"></textarea><small id=\"comment-help\" class=\"muted\">Mention someone with @email to notify them.</small></div>\
         <div><button type=\"submit\" class=\"secondary\">Comment</button></div></form></section>",
        seg(subject),
        esc(csrf),
        work.map(|w| format!("<input type=\"hidden\" name=\"work\" value=\"{}\">", esc(w))).unwrap_or_default()
    );
    out
}

/// The form controls of a task's fields.
fn field_controls(detail: &Value) -> String {
    let mut out = String::new();
    for field in detail["fields"].as_array().into_iter().flatten() {
        let name = field["name"].as_str().unwrap_or_default();
        let required = field["required"].as_bool().unwrap_or(false);
        let kind = match field["kind"].as_str().unwrap_or("text") {
            "url" => "url",
            "number" => "number",
            "date" => "date",
            "bool" | "checkbox" => "checkbox",
            _ => "text",
        };
        let id = format!("field-{}", esc(name));
        let label = format!("{}{}", esc(&name.replace('_', " ")), if required { " (required)" } else { "" });
        if kind == "checkbox" {
            let _ = write!(
                out,
                "<div><input id=\"{id}\" type=\"checkbox\" name=\"field.{}\"> <label for=\"{id}\" class=\"inline\">{label}</label></div>",
                esc(name)
            );
        } else {
            let _ = write!(
                out,
                "<div><label for=\"{id}\">{label}</label><input id=\"{id}\" type=\"{kind}\" name=\"field.{}\"{}></div>",
                esc(name),
                if required { " required" } else { "" }
            );
        }
    }
    out
}

fn work_html(item: &WorkItem, email: &str, csrf: &str, now: Timestamp, zone: Zone, error: Option<&str>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/ui\">← My work</a></p><h1>{} <span class=\"pill {}\">{}</span></h1>",
        esc(&item.title),
        item.kind.as_str(),
        item.kind.as_str()
    );
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    body.push_str("<div class=\"card\"><dl class=\"facts\">");
    let _ = write!(
        body,
        "<dt>Item</dt><dd><a href=\"/ui/items/{}\">{}</a></dd>",
        seg(&item.subject_id),
        esc(&item.subject_id)
    );
    let _ = write!(
        body,
        "<dt>Workflow</dt><dd>{} · step <code>{}</code> · run {}</dd>",
        esc(&item.workflow_id),
        esc(&item.step),
        item.run.0
    );
    let _ = write!(body, "<dt>Role</dt><dd>{}</dd>", esc(&item.role));
    if let Some(a) = item.detail["raci"]["accountable"].as_str().or(item.detail["accountable"].as_str()) {
        let _ = write!(body, "<dt>Accountable</dt><dd>{}</dd>", esc(a));
    }
    let _ = write!(body, "<dt>Due</dt><dd>{}</dd>", due(item.due_at, now, zone));
    if item.status == "open" {
        let _ = write!(body, "<dt>For</dt><dd>{}</dd>", esc(&item.people.join(", ")));
    } else {
        let _ = write!(
            body,
            "<dt>Outcome</dt><dd class=\"ok\">{}{}</dd>",
            esc(&item.outcome.clone().unwrap_or_default().replace('_', " ")),
            item.closed_by.as_ref().map(|b| format!(" by {}", esc(b))).unwrap_or_default()
        );
    }
    body.push_str("</dl>");
    if let Some(description) = &item.description {
        let _ = write!(body, "<p>{}</p>", esc(description));
    }
    body.push_str("</div>");
    let mine = item.status == "open" && item.people.iter().any(|p| p == email);
    let id = seg(&item.id);
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    if item.status == "open" && !mine {
        body.push_str("<p class=\"notice\">This is not waiting for you.</p>");
    }
    if item.kind == WorkKind::Task && item.outcome.as_deref() == Some("completed") {
        let _ = write!(
            body,
            "<section aria-labelledby=\"reopen\" class=\"card\"><h2 id=\"reopen\">Send it back</h2>\
             <form class=\"stack\" method=\"post\" action=\"/ui/work/{id}/reopen\">{hidden}\
             <div><label for=\"reopen-reason\">Why it needs more work</label><textarea id=\"reopen-reason\" name=\"reason\"></textarea>\
             <small class=\"muted\">The run goes back to this task; what it waits on now is withdrawn. The person who \
             completed it or its Accountable may.</small></div>\
             <div><button type=\"submit\" class=\"secondary\">Reopen task</button></div></form></section>"
        );
    }
    if mine {
        body.push_str("<section aria-labelledby=\"act\" class=\"card\"><h2 id=\"act\">Your part</h2>");
        match item.kind {
            WorkKind::Task => {
                let _ = write!(
                    body,
                    "<form class=\"stack\" method=\"post\" action=\"/ui/work/{id}/complete\">{hidden}{}\
                     <div><button type=\"submit\">Complete task</button></div></form>",
                    field_controls(&item.detail)
                );
            }
            WorkKind::Approval => {
                let _ = write!(
                    body,
                    "<form class=\"stack\" method=\"post\" action=\"/ui/work/{id}/decide\">{hidden}\
                     <div><label for=\"decision-comment\">Decision comment</label><textarea id=\"decision-comment\" name=\"comment\"></textarea></div>\
                     <div class=\"actions\"><button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
                     <button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"approve_with_changes\">Approve with changes</button>\
                     <button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"request_changes\">Request changes</button>\
                     <button type=\"submit\" class=\"danger\" name=\"decision\" value=\"reject\">Reject</button></div></form>"
                );
            }
        }
        body.push_str("<div class=\"actions spaced\">");
        if item.assignee.as_deref() == Some(email) {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/ui/work/{id}/release\">{hidden}<button type=\"submit\" class=\"secondary\">Release</button></form>"
            );
        } else {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/ui/work/{id}/claim\">{hidden}<button type=\"submit\" class=\"secondary\">Claim</button></form>"
            );
        }
        let _ = write!(
            body,
            "<form class=\"actions\" method=\"post\" action=\"/ui/work/{id}/reassign\">{hidden}\
             <label for=\"reassign-to\">Reassign to</label><input id=\"reassign-to\" name=\"to\" type=\"email\" required>\
             <button type=\"submit\" class=\"secondary\">Reassign</button></form></div></section>"
        );
    }
    body
}

async fn work_page(app: App, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let Some((email, session)) = session(&app, &headers).await else {
        return Err(to_login(&format!("/ui/work/{}", seg(&id))));
    };
    render_work(&app, id, email, session, None, StatusCode::OK).await
}

async fn render_work(
    app: &App,
    id: String,
    email: String,
    session: Session,
    error: Option<String>,
    status: StatusCode,
) -> Page {
    let csrf = session.csrf.clone();
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| -> Result<Option<(String, String)>, flowmark_store::Error> {
        let Some(item) = engine.store().work_item(&id)? else { return Ok(None) };
        let comments = engine.store().comments(&item.subject_id, 100)?;
        let zone = reader_zone(engine, &who);
        let mut body = work_html(&item, &who, &csrf, now, zone, error.as_deref());
        if item.kind == WorkKind::Approval {
            let work = engine.store().work_of_subject(&item.subject_id, 500)?;
            let decisions = decisions_of(engine, &work)?;
            body.push_str(&round_html(&item, &work, &decisions, &comments, zone));
        }
        body.push_str(&comments_html(&comments, &item.subject_id, Some(&item.id), &csrf, zone));
        Ok(Some((item.title, body)))
    })
    .await;
    match answer? {
        Ok(Some((title, body))) => Ok(html(status, page(&title, Some((&email, &session.csrf)), &body))),
        Ok(None) => Ok(html(
            StatusCode::NOT_FOUND,
            page("Not found", Some((&email, &session.csrf)), "<h1>No such work item</h1>"),
        )),
        Err(error) => Err(internal(error).into()),
    }
}

/// A form's task fields (`field.<name>`) as values of their declared kinds.
fn form_fields(form: &[(String, String)], detail: &Value) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    for field in detail["fields"].as_array().into_iter().flatten() {
        let Some(name) = field["name"].as_str() else { continue };
        let kind = field["kind"].as_str().unwrap_or("text");
        let value = form_value(form, &format!("field.{name}")).map(str::trim);
        let value = match (kind, value) {
            ("bool" | "checkbox", v) => Value::Bool(v.is_some()),
            (_, None | Some("")) => continue,
            ("number", Some(v)) => match v.parse::<f64>() {
                Ok(n) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                Err(_) => Value::String(v.to_owned()),
            },
            (_, Some(v)) => Value::String(v.to_owned()),
        };
        fields.insert(name.to_owned(), value);
    }
    fields
}

async fn work_action(
    app: App,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Page {
    let Some((email, session)) = session(&app, &headers).await else {
        return Ok(to_login(&format!("/ui/work/{}", seg(&id))));
    };
    if !csrf_ok(&form, &session) {
        return Ok(html(
            StatusCode::FORBIDDEN,
            page(
                "Refused",
                Some((&email, &session.csrf)),
                "<h1>This form has expired</h1><p>Go back, reload the page and try again.</p>",
            ),
        ));
    }
    let wanted = id.clone();
    let item = match query(&app.owner, move |engine, _| engine.store().work_item(&wanted)).await? {
        Ok(Some(item)) => item,
        Ok(None) => return render_work(&app, id, email, session, None, StatusCode::NOT_FOUND).await,
        Err(error) => return Err(internal(error).into()),
    };
    let mut values = serde_json::Map::new();
    for key in ["to", "decision", "comment", "reason"] {
        if let Some(v) = form_value(&form, key) {
            values.insert(key.to_owned(), Value::String(v.to_owned()));
        }
    }
    if action == "complete" {
        values.insert("fields".to_owned(), Value::Object(form_fields(&form, &item.detail)));
    }
    let action = match crate::people::parse_action(&action, &values) {
        Ok(action) => action,
        Err(error) => return render_work(&app, id, email, session, Some(error), StatusCode::BAD_REQUEST).await,
    };
    let (who, target) = (email.clone(), id.clone());
    let answer = query(&app.owner, move |engine, now| engine.act_on_work(&target, &who, action, now)).await?;
    match answer {
        // A reopened task answers with its new work item.
        Ok(Ok(item)) => Ok(Redirect::to(&format!("/ui/work/{}", seg(&item.id))).into_response()),
        Ok(Err(refused)) => {
            let status = match refused {
                WorkRefusal::NotFound(_) => StatusCode::NOT_FOUND,
                WorkRefusal::NotYours(_) => StatusCode::FORBIDDEN,
                WorkRefusal::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                WorkRefusal::Closed(..) | WorkRefusal::Ignored(_) => StatusCode::CONFLICT,
            };
            render_work(&app, id, email, session, Some(refused.to_string()), status).await
        }
        Err(error) => Err(internal(error).into()),
    }
}

/// The approval decisions in the histories of the runs `work` belongs to, as recorded
/// (`approval_decision` entries: step, role, by, decision, comment, at).
fn decisions_of(engine: &crate::api::Eng, work: &[WorkItem]) -> Result<Vec<Value>, flowmark_store::Error> {
    let mut runs: Vec<flowmark_core::engine::RunId> = work.iter().map(|w| w.run).collect();
    runs.sort_unstable_by_key(|r| r.0);
    runs.dedup();
    let mut decisions = Vec::new();
    for run in runs {
        decisions.extend(engine.store().history(run)?.into_iter().filter(|h| h["what"] == "approval_decision"));
    }
    Ok(decisions)
}

/// The comment given with the decision that closed `w`, if it had one.
fn decision_comment<'d>(decisions: &'d [Value], w: &WorkItem) -> Option<&'d str> {
    let closed = w.closed_at?;
    decisions
        .iter()
        .filter(|d| {
            d["step"] == w.step.as_str() && d["role"] == w.role.as_str() && d["at"].as_i64() <= Some(closed.ms())
        })
        .rfind(|d| w.closed_by.as_deref().is_none_or(|by| d["by"] == by))
        .and_then(|d| d["comment"].as_str())
}

/// On an approval's page: the deliverable under review (its latest version), and the round's
/// decisions so far, with their comments.
fn round_html(
    item: &WorkItem,
    work: &[WorkItem],
    decisions: &[Value],
    comments: &[flowmark_store::Comment],
    zone: Zone,
) -> String {
    let mut html = String::from("<section aria-labelledby=\"round\"><h2 id=\"round\">This round</h2>");
    match comments.iter().filter(|c| c.version.is_some()).max_by_key(|c| c.version) {
        Some(latest) => {
            let _ = write!(
                html,
                "<p>Deliverable: <a href=\"{}\" rel=\"noopener\">{}</a> (version {}, by {}, {})</p>",
                esc(latest.link.as_deref().unwrap_or("#")),
                esc(&latest.body),
                latest.version.unwrap_or(1),
                esc(&latest.by),
                time(latest.at, zone)
            );
        }
        None => html.push_str("<p class=\"muted\">No deliverable attached yet.</p>"),
    }
    let round = &item.detail["round"];
    let mut earlier: Vec<(&WorkItem, Option<&str>)> = work
        .iter()
        .filter(|w| w.run == item.run && w.step == item.step && w.id != item.id && &w.detail["round"] == round)
        .filter(|w| w.status != "open" && w.outcome.as_deref().is_some_and(|o| o != "cancelled" && o != "withdrawn"))
        .map(|w| (w, decision_comment(decisions, w)))
        .collect();
    earlier.sort_by_key(|(w, _)| w.closed_at);
    if earlier.is_empty() {
        html.push_str("<p class=\"muted\">No decisions in this round yet.</p>");
    } else {
        html.push_str("<ul class=\"decisions\">");
        for (w, comment) in earlier {
            let _ = write!(
                html,
                "<li>{} ({}): <strong>{}</strong>, {}{}</li>",
                esc(w.closed_by.as_deref().unwrap_or("someone")),
                esc(&w.role),
                esc(&w.outcome.clone().unwrap_or_default().replace('_', " ")),
                w.closed_at.map(|at| time(at, zone)).unwrap_or_default(),
                comment.map(|c| format!(" — “{}”", esc(c))).unwrap_or_default()
            );
        }
        html.push_str("</ul>");
    }
    html.push_str("</section>");
    html
}

/// An item's page: its fields, its work (open and closed, with outcomes) and comments.
async fn item_page(app: App, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let Some((email, session)) = session(&app, &headers).await else {
        return Ok(to_login(&format!("/ui/items/{}", seg(&id))));
    };
    let csrf = session.csrf.clone();
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| -> Result<Option<String>, flowmark_store::Error> {
        let Some(contact) = engine.store().contact(&id)? else { return Ok(None) };
        let work = engine.store().work_of_subject(&id, 500)?;
        let comments = engine.store().comments(&id, 100)?;
        let decisions = decisions_of(engine, &work)?;
        let zone = reader_zone(engine, &who);
        let title = flowmark_runtime::work::subject_title(&contact.traits, &id);
        let mut body = format!("<h1>{}</h1><div class=\"card\"><dl class=\"facts\">", esc(&title));
        for (key, value) in contact.traits.as_object().into_iter().flatten() {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", esc(key), esc(&shown));
        }
        body.push_str("</dl></div><section aria-labelledby=\"work\"><h2 id=\"work\">Work</h2><table><thead><tr>\
            <th scope=\"col\">What</th><th scope=\"col\">Role</th><th scope=\"col\">Status</th><th scope=\"col\">Due</th></tr></thead><tbody>");
        for w in &work {
            let status = if w.status == "open" {
                format!("<span class=\"pill\">open</span> {}", esc(&w.people.join(", ")))
            } else {
                format!(
                    "<span class=\"pill closed\">{}</span>{}",
                    esc(&w.outcome.clone().unwrap_or_default().replace('_', " ")),
                    w.closed_by.as_ref().map(|b| format!(" by {}", esc(b))).unwrap_or_default()
                )
            };
            // Closed work keeps its due time, marked when it closed after it.
            let due_cell = match (w.status.as_str(), w.due_at, w.closed_at) {
                ("open", due_at, _) => due(due_at, now, zone),
                (_, Some(due_at), Some(closed)) if closed > due_at => {
                    format!("{} <span class=\"overdue\">closed late</span>", time(due_at, zone))
                }
                (_, Some(due_at), _) => time(due_at, zone),
                (_, None, _) => "<span class=\"muted\">no due date</span>".to_owned(),
            };
            let said = decision_comment(&decisions, w)
                .map(|comment| format!("<blockquote class=\"decision\">“{}”</blockquote>", esc(comment)))
                .unwrap_or_default();
            let _ = write!(
                body,
                "<tr><td><a href=\"/ui/work/{}\">{}</a>{said}</td><td>{}</td><td>{status}</td><td>{due_cell}</td></tr>",
                seg(&w.id),
                esc(&w.title),
                esc(&w.role),
            );
        }
        body.push_str("</tbody></table></section>");
        body.push_str(&comments_html(&comments, &id, None, &csrf, zone));
        Ok(Some(body))
    })
    .await;
    match answer? {
        Ok(Some(body)) => Ok(html(StatusCode::OK, page("Item", Some((&email, &session.csrf)), &body))),
        Ok(None) => {
            Ok(html(StatusCode::NOT_FOUND, page("Not found", Some((&email, &session.csrf)), "<h1>No such item</h1>")))
        }
        Err(error) => Err(internal(error).into()),
    }
}

/// A form posted on an item's page or one of its work items' pages: the session and its CSRF
/// token are checked, `act` runs on the engine as the signed-in person (with the item id and
/// the work item the form is about, if any), and the person goes back to the page they came
/// from, or sees the refusal.
async fn item_form<T: Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    id: String,
    form: Vec<(String, String)>,
    act: impl FnOnce(
        &mut crate::api::Eng,
        &str,
        &str,
        Option<&str>,
        &[(String, String)],
        Timestamp,
    ) -> Result<Result<T, WorkRefusal>, flowmark_runtime::Error>
    + Send
    + 'static,
) -> Page {
    let Some((email, session)) = session(app, headers).await else {
        return Ok(to_login(&format!("/ui/items/{}", seg(&id))));
    };
    if !csrf_ok(&form, &session) {
        return Ok(html(
            StatusCode::FORBIDDEN,
            page("Refused", Some((&email, &session.csrf)), "<h1>This form has expired</h1>"),
        ));
    }
    let work = form_value(&form, "work").map(str::to_owned);
    let back = match &work {
        Some(w) => format!("/ui/work/{}", seg(w)),
        None => format!("/ui/items/{}", seg(&id)),
    };
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| act(engine, &who, &id, work.as_deref(), &form, now)).await;
    match answer? {
        Ok(Ok(_)) => Ok(Redirect::to(&back).into_response()),
        Ok(Err(refused)) => Ok(html(
            StatusCode::UNPROCESSABLE_ENTITY,
            page(
                "Refused",
                Some((&email, &session.csrf)),
                &format!(
                    "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"{}\">Back</a></p>",
                    esc(&refused.to_string()),
                    esc(&back)
                ),
            ),
        )),
        Err(error) => Err(internal(error).into()),
    }
}

async fn item_attachment(
    app: App,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Page {
    item_form(&app, &headers, id, form, |engine, who, id, work, form, now| {
        let title = form_value(form, "title").unwrap_or_default();
        let url = form_value(form, "url").unwrap_or_default();
        let new_version = form_value(form, "new_version").is_some();
        let attachment =
            flowmark_runtime::Attachment { subject_id: id, work_id: work, by: who, title, url, new_version };
        engine.attach(attachment, now)
    })
    .await
}

async fn item_comment(
    app: App,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Page {
    item_form(&app, &headers, id, form, |engine, who, id, work, form, now| {
        engine.add_comment(id, work, who, form_value(form, "body").unwrap_or_default(), now)
    })
    .await
}
