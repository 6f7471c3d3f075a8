//! The HTTP API of the team's work: the directory, people's inboxes, acting on work items,
//! items' work and comments, notifications, and iCalendar feeds.
//!
//! Every route but the feeds takes an API token (`Authorization: Bearer`); an action names
//! the person acting (`by`), who must be one the work item is for — the web UI acts as the
//! signed-in person instead. Feeds are opened by an unguessable token in their URL, since
//! calendar apps cannot send headers.
//!
//! Invariant: a refused action changes nothing and says why (`403` not theirs, `404` no such
//! item, `409` closed or not taken by the run, `422` invalid).

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowmark_core::Timestamp;
use flowmark_core::engine::Decision;
use flowmark_runtime::{WorkAction, WorkRefusal, ical};
use flowmark_store::{Store, WorkKind};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::{
    Admin, Answer, App, Eng, Problem, Shared, get_document, internal, problem, put_document, query, query_owner,
};
use crate::openapi::schema;

/// Most work items or notifications one list answers.
pub const LIST_MAX: usize = 500;

pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(directory, put_directory))
        .routes(routes!(person_work))
        .routes(routes!(person_notifications))
        .routes(routes!(person_calendar_url))
        .routes(routes!(work_item))
        .routes(routes!(act))
        .routes(routes!(item_work))
        .routes(routes!(item_comments, comment))
        .routes(routes!(attach))
        .routes(routes!(person_feed))
        .routes(routes!(workspace_feed))
}

#[utoipa::path(
    get,
    path = "/api/directory",
    operation_id = "getDirectory",
    tag = "people",
    summary = "The workspace's directory of people, teams and role bindings",
    responses(
        (status = 200, description = "The directory as written.", body = schema::Directory),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn directory(app: App, headers: HeaderMap) -> Answer {
    get_document(&app, &headers, |engine| engine.directory().source.clone(), json!({ "people": [] })).await
}

/// Replaces the directory: `{"people": [...], "teams": {...}, "roles": {...}}`.
#[utoipa::path(
    put,
    path = "/api/directory",
    operation_id = "putDirectory",
    tag = "people",
    summary = "Replace the directory",
    request_body(content = schema::Directory, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored; open work is handed to the people its roles now name.", body = schema::Updated),
        (status = 400, description = "Not a directory (JSON, unknown fields).", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A directory with problems: `errors` lists each; nothing changed.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn put_directory(app: App, headers: HeaderMap, body: Bytes) -> Answer {
    put_document(&app, &headers, &body, "directory", Eng::set_directory).await
}

#[derive(serde::Deserialize)]
struct WorkQuery {
    kind: Option<String>,
    limit: Option<usize>,
}

/// A person's open work, soonest due first: "My tasks" (`?kind=task`) and "Waiting for my
/// approval" (`?kind=approval`).
#[utoipa::path(
    get,
    path = "/api/people/{email}/work",
    operation_id = "listPersonWork",
    tag = "people",
    summary = "A person's open work, soonest due first",
    params(
        ("email" = String, Path, description = "A person's email address."),
        ("kind" = Option<schema::WorkKind>, Query),
        ("limit" = Option<u64>, Query, maximum = 500),
    ),
    responses(
        (status = 200, description = "`work`: the items.", body = schema::WorkList),
        (status = 400, description = "`kind` is not task or approval.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn person_work(app: App, _admin: Admin, Path(email): Path<String>, Query(q): Query<WorkQuery>) -> Answer {
    let kind = match q.kind.as_deref() {
        None => None,
        Some(text) => match WorkKind::parse(text) {
            Some(kind) => Some(kind),
            None => return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", "`kind` is task or approval")),
        },
    };
    let limit = q.limit.unwrap_or(100).min(LIST_MAX);
    let items = query_owner(&app, move |engine, _| engine.store().work_of_person(&email, kind, limit)).await?;
    Ok(axum::Json(json!({ "work": items })).into_response())
}

#[utoipa::path(
    get,
    path = "/api/people/{email}/notifications",
    operation_id = "listPersonNotifications",
    tag = "people",
    summary = "A person's notifications, newest first",
    params(
        ("email" = String, Path, description = "A person's email address."),
    ),
    responses(
        (status = 200, description = "`notifications`.", body = schema::NotificationList),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn person_notifications(app: App, _admin: Admin, Path(email): Path<String>) -> Answer {
    let items = query_owner(&app, move |engine, _| engine.store().notifications(&email, LIST_MAX)).await?;
    Ok(axum::Json(json!({ "notifications": items })).into_response())
}

/// The URL of a person's calendar feed (an admin hands it to them).
#[utoipa::path(
    get,
    path = "/api/people/{email}/calendar",
    operation_id = "getPersonCalendarUrl",
    tag = "people",
    summary = "The paths of a person's and the workspace's calendar feeds",
    params(
        ("email" = String, Path, description = "A person's email address."),
    ),
    responses(
        (status = 200, description = "`person` and `workspace`: paths with their tokens.", body = schema::CalendarFeeds),
        (status = 404, description = "The server has no secret to sign feeds with.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn person_calendar_url(app: App, _admin: Admin, Path(email): Path<String>) -> Answer {
    let Some(secret) = app.secret.as_deref() else {
        return Err(problem(StatusCode::NOT_FOUND, "No feeds", "this server has no secret to sign feed links with"));
    };
    let (path, workspace) = feed_paths(&app.link(""), secret, &email.trim().to_lowercase());
    Ok(axum::Json(json!({ "person": path, "workspace": workspace })).into_response())
}

/// The paths of a person's calendar feed and of the workspace's, signed with `secret`, under
/// the workspace's link prefix (`App::link`).
pub(crate) fn feed_paths(prefix: &str, secret: &[u8], email: &str) -> (String, String) {
    let person = format!("{prefix}/cal/people/{}/{}", flowmark_runtime::url_part(email), ical::token(secret, email));
    (person, format!("{prefix}/cal/workspace/{}", ical::token(secret, "workspace")))
}

#[utoipa::path(
    get,
    path = "/api/work/{id}",
    operation_id = "getWorkItem",
    tag = "work",
    summary = "A work item",
    params(
        ("id" = String, Path, description = "A work item's id."),
    ),
    responses(
        (status = 200, description = "The item.", body = schema::WorkItem),
        (status = 404, description = "No such work item.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn work_item(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let wanted = id.clone();
    match query_owner(&app, move |engine, _| engine.store().work_item(&wanted)).await? {
        Some(item) => Ok(axum::Json(item).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, "No such work", format!("there is no work item `{id}`"))),
    }
}

/// The action an API body or a UI form asks for, or what is wrong with it.
pub(crate) fn parse_action(action: &str, fields: &serde_json::Map<String, Value>) -> Result<WorkAction, String> {
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty());
    match action {
        "claim" => Ok(WorkAction::Claim),
        "release" => Ok(WorkAction::Release),
        "reassign" => match text("to") {
            Some(to) => Ok(WorkAction::Reassign { to: to.to_owned() }),
            None => Err("say whom to reassign it to: `to`".to_owned()),
        },
        "complete" => match fields.get("fields") {
            None => Ok(WorkAction::Complete { fields: serde_json::Map::new() }),
            Some(Value::Object(values)) => Ok(WorkAction::Complete { fields: values.clone() }),
            Some(_) => Err("`fields` must be an object".to_owned()),
        },
        "decide" => {
            let decision = fields.get("decision").cloned().map(serde_json::from_value::<Decision>);
            match decision {
                Some(Ok(decision)) => Ok(WorkAction::Decide { decision, comment: text("comment").map(str::to_owned) }),
                _ => Err("`decision` is approve, approve_with_changes, request_changes or reject".to_owned()),
            }
        }
        "reopen" => Ok(WorkAction::Reopen { reason: text("reason").map(str::to_owned) }),
        other => Err(format!("unknown action `{other}`: claim, release, reassign, complete, decide or reopen")),
    }
}

/// A refusal as its problem response.
pub(crate) fn refusal(refusal: &WorkRefusal) -> Problem {
    let (status, title) = match refusal {
        WorkRefusal::NotFound(_) => (StatusCode::NOT_FOUND, "No such work"),
        WorkRefusal::Closed(..) => (StatusCode::CONFLICT, "Work closed"),
        WorkRefusal::NotYours(_) => (StatusCode::FORBIDDEN, "Not yours"),
        WorkRefusal::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid input"),
        WorkRefusal::Ignored(_) => (StatusCode::CONFLICT, "Input ignored"),
    };
    problem(status, title, refusal.to_string())
}

/// Acts on a work item: `claim`, `release`, `reassign` (`to`), `complete` (`fields`),
/// `decide` (`decision`, `comment`); the body names who acts: `by`.
#[utoipa::path(
    post,
    path = "/api/work/{id}/{action}",
    operation_id = "actOnWorkItem",
    tag = "work",
    summary = "Act on a work item as a person",
    params(
        ("id" = String, Path, description = "A work item's id."),
        ("action" = schema::WorkAction, Path),
    ),
    request_body(content = schema::WorkActionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The item afterwards.", body = schema::WorkItem),
        (status = 400, description = "No `by`, or a malformed action.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such work item.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The item is closed, or its run did not take the input (a required field missing).", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input (an unknown person to reassign to).", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn act(app: App, headers: HeaderMap, Path((id, action)): Path<(String, String)>, body: Bytes) -> Answer {
    let (fields, acting) = crate::api::admin_acting(&app, &headers, &body).await?;
    let by = acting.by(&fields, "say who acts: `by`")?;
    let action = match parse_action(&action, &fields) {
        Ok(action) => action,
        Err(detail) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", detail)),
    };
    act_as(&app, id, by, acting.via, action).await
}

/// Runs an action as `by` (through the service token `via`, if one) and answers with the
/// item afterwards, or the refusal.
pub(crate) async fn act_as(app: &App, id: String, by: String, via: Option<String>, action: WorkAction) -> Answer {
    let acted = query(&app.owner, move |engine, now| engine.act_on_work_via(&id, &by, via.as_deref(), action, now));
    match acted.await? {
        Ok(Ok(item)) => Ok(axum::Json(item).into_response()),
        Ok(Err(refused)) => Err(refusal(&refused)),
        Err(error) => Err(internal(error)),
    }
}

/// An item's work, open and closed, oldest first.
#[utoipa::path(
    get,
    path = "/api/items/{id}/work",
    operation_id = "listItemWork",
    tag = "work",
    summary = "An item's work, open and closed",
    params(
        ("id" = String, Path, description = "An item's id (the subject of a work workflow)."),
    ),
    responses(
        (status = 200, description = "`work`.", body = schema::WorkList),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn item_work(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let items = query_owner(&app, move |engine, _| engine.store().work_of_subject(&id, LIST_MAX)).await?;
    Ok(axum::Json(json!({ "work": items })).into_response())
}

#[utoipa::path(
    get,
    path = "/api/items/{id}/comments",
    operation_id = "listItemComments",
    tag = "work",
    summary = "An item's comments, oldest first",
    params(
        ("id" = String, Path, description = "An item's id (the subject of a work workflow)."),
    ),
    responses(
        (status = 200, description = "`comments`.", body = schema::CommentList),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn item_comments(app: App, _admin: Admin, Path(id): Path<String>) -> Answer {
    let comments = query_owner(&app, move |engine, _| engine.store().comments(&id, LIST_MAX)).await?;
    Ok(axum::Json(json!({ "comments": comments })).into_response())
}

/// Comments on an item: `{"by": email, "body": text, "work": work id (optional)}`; people
/// mentioned as `@email` are notified.
#[utoipa::path(
    post,
    path = "/api/items/{id}/comments",
    operation_id = "addItemComment",
    tag = "work",
    summary = "Comment on an item; `@email` mentions are notified",
    params(
        ("id" = String, Path, description = "An item's id (the subject of a work workflow)."),
    ),
    request_body(content = schema::NewComment, content_type = "application/json"),
    responses(
        (status = 201, description = "The comment.", body = schema::Comment),
        (status = 400, description = "No `by` or `body`.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The work item named is not this item's.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An empty or too long comment.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn comment(app: App, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Answer {
    let (fields, acting) = crate::api::admin_acting(&app, &headers, &body).await?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let missing = "say who comments and what: `by`, `body`";
    let by = acting.by(&fields, missing)?;
    let Some(body) = text("body") else {
        return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", missing));
    };
    let work = text("work");
    created(query(&app.owner, move |engine, now| engine.add_comment(&id, work.as_deref(), &by, &body, now)).await)
}

/// An engine answer that creates something: `201` with it, or the refusal as a problem.
fn created<T: serde::Serialize>(
    answer: Result<Result<Result<T, WorkRefusal>, flowmark_runtime::Error>, Problem>,
) -> Answer {
    match answer? {
        Ok(Ok(made)) => Ok((StatusCode::CREATED, axum::Json(made)).into_response()),
        Ok(Err(refused)) => Err(refusal(&refused)),
        Err(error) => Err(internal(error)),
    }
}

/// Attaches a link: `{"by", "title", "url", "work"?, "new_version"?}`.
#[utoipa::path(
    post,
    path = "/api/items/{id}/attachments",
    operation_id = "attachToItem",
    tag = "work",
    summary = "Attach a link to an item; with `new_version`, it is the next version of the item's deliverable and every approval waiting on the item starts a new round",
    params(
        ("id" = String, Path, description = "An item's id (the subject of a work workflow)."),
    ),
    request_body(content = schema::NewAttachment, content_type = "application/json"),
    responses(
        (status = 201, description = "The comment.", body = schema::Comment),
        (status = 400, description = "No `by` or `body`.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The work item named is not this item's.", body = schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An empty or too long comment.", body = schema::Problem, content_type = "application/problem+json"),
        crate::openapi::Refusals,
    ),
    security(("bearer" = [])),
)]
async fn attach(app: App, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Answer {
    let (fields, acting) = crate::api::admin_acting(&app, &headers, &body).await?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let missing = "say who attaches what: `by`, `title`, `url`";
    let by = acting.by(&fields, missing)?;
    let (Some(title), Some(url)) = (text("title"), text("url")) else {
        return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", missing));
    };
    let new_version = match fields.get("new_version") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(problem(StatusCode::BAD_REQUEST, "Invalid input", "`new_version` is true or false")),
    };
    let work = text("work");
    created(
        query(&app.owner, move |engine, now| {
            let attachment = flowmark_runtime::Attachment {
                subject_id: &id,
                work_id: work.as_deref(),
                by: &by,
                title: &title,
                url: &url,
                new_version,
            };
            engine.attach(attachment, now)
        })
        .await,
    )
}

fn calendar(body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/calendar; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    response
}

fn feed_refused() -> Problem {
    problem(StatusCode::NOT_FOUND, "No such feed", "the feed link is wrong or was revoked")
}

/// The publications of items at or after a week ago, as the feed shows them.
fn publications(engine: &Eng, now: Timestamp, only: Option<&[String]>) -> Result<Vec<ical::Publication>, String> {
    let from = Timestamp(now.ms() - 7 * 24 * 3_600_000);
    let items = publications_between(engine, from, None, ical::FEED_ENTRIES_MAX).map_err(|e| e.to_string())?;
    Ok(items.into_iter().filter(|p| only.is_none_or(|ids| ids.contains(&p.item_id))).collect())
}

/// Items' publications (`publish_at`) in `[from, until)`, soonest first, at most `limit`.
///
/// The store compares `publish_at` as text, which orders RFC 3339 times exactly only when
/// they share an offset; the text window is widened by a day each side and each time is then
/// parsed and checked.
pub(crate) fn publications_between(
    engine: &Eng,
    from: Timestamp,
    until: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<ical::Publication>, flowmark_store::Error> {
    const DAY_MS: i64 = 24 * 3_600_000;
    let text = |at: Timestamp| at.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let wide_from = text(Timestamp(from.ms() - DAY_MS));
    let wide_until = until.map(|u| text(Timestamp(u.ms() + DAY_MS)));
    let items = engine.store().scheduled_items(&wide_from, wide_until.as_deref(), limit)?;
    let mut found: Vec<ical::Publication> = items
        .into_iter()
        .filter_map(|(id, data)| {
            let at = data.get(ical::PUBLISH_AT_FIELD)?.as_str()?;
            let at = chrono::DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&chrono::Utc);
            let at = Timestamp::from_chrono(&at);
            (at >= from && until.is_none_or(|u| at < u)).then(|| ical::Publication {
                title: flowmark_runtime::work::subject_title(&data, &id),
                item_id: id,
                at,
                url: None,
            })
        })
        .collect();
    found.sort_by(|a, b| (a.at, &a.item_id).cmp(&(b.at, &b.item_id)));
    Ok(found)
}

/// A person's feed: their open work as to-dos, and the publications of the items it is on.
#[utoipa::path(
    get,
    path = "/cal/people/{email}/{token}",
    operation_id = "personCalendarFeed",
    tag = "calendar",
    summary = "A person's calendar feed: open work as VTODOs, publications as VEVENTs",
    params(
        ("email" = String, Path, description = "A person's email address."),
        ("token" = String, Path, description = "The feed's token (`.ics` may follow)."),
    ),
    responses(
        (status = 200, description = "An iCalendar (RFC 5545) feed.", body = String, content_type = "text/calendar"),
        (status = 404, description = "A wrong or revoked feed link.", body = schema::Problem, content_type = "application/problem+json"),
    ),
)]
async fn person_feed(app: App, Path((email, token)): Path<(String, String)>) -> Answer {
    let token = token.trim_end_matches(".ics").to_owned();
    let Some(secret) = app.secret.as_deref() else { return Err(feed_refused()) };
    if !ical::verify_token(secret, &email, &token) {
        return Err(feed_refused());
    }
    let answer = query(&app.owner, move |engine, now| -> Result<String, String> {
        let work = engine.store().work_of_person(&email, None, ical::FEED_ENTRIES_MAX).map_err(|e| e.to_string())?;
        let items: Vec<String> = work.iter().map(|w| w.subject_id.clone()).collect();
        let publications = publications(engine, now, Some(&items))?;
        Ok(ical::feed(&format!("Flowmark — {email}"), &work, &publications, engine.public_url(), now))
    })
    .await;
    match answer? {
        Ok(body) => Ok(calendar(body)),
        Err(error) => Err(internal(error)),
    }
}

/// The workspace's feed: all open work and every scheduled publication.
#[utoipa::path(
    get,
    path = "/cal/workspace/{token}",
    operation_id = "workspaceCalendarFeed",
    tag = "calendar",
    summary = "The workspace's calendar feed",
    params(
        ("token" = String, Path, description = "The feed's token (`.ics` may follow)."),
    ),
    responses(
        (status = 200, description = "An iCalendar (RFC 5545) feed.", body = String, content_type = "text/calendar"),
        (status = 404, description = "A wrong or revoked feed link.", body = schema::Problem, content_type = "application/problem+json"),
    ),
)]
async fn workspace_feed(app: App, Path(token): Path<String>) -> Answer {
    let token = token.trim_end_matches(".ics").to_owned();
    let Some(secret) = app.secret.as_deref() else { return Err(feed_refused()) };
    if !ical::verify_token(secret, "workspace", &token) {
        return Err(feed_refused());
    }
    let answer = query(&app.owner, move |engine, now| -> Result<String, String> {
        let work = engine.store().open_work_after(None, ical::FEED_ENTRIES_MAX).map_err(|e| e.to_string())?;
        let publications = publications(engine, now, None)?;
        Ok(ical::feed("Flowmark — workspace", &work, &publications, engine.public_url(), now))
    })
    .await;
    match answer? {
        Ok(body) => Ok(calendar(body)),
        Err(error) => Err(internal(error)),
    }
}
