//! The web UI's view of the engine: the workflow list (each with its graph), a workflow's
//! page (its graph with how many active runs wait at each step), the run explorer (filter by
//! workflow, status, step, subject) and a run's page (where it stands on the graph, its
//! history, its decision records).
//!
//! Graphs are drawn by `flowmark_graph` (the same drawing as `flowmark graph`) and served as
//! SVG images from their own URLs, so the pages' strict content security policy holds and
//! the layout runs off the engine's owner thread.
//!
//! Invariant: these pages only read; every list is bounded (`LIST_MAX`) and every query is
//! answered from an index (runs by workflow, status and position; history by run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flowmark_core::Workflow;
use flowmark_core::engine::{RunId, RunStatus};
use flowmark_core::model::SubjectKind;
use flowmark_graph::Marks;
use flowmark_store::{RunFilter, Store};
use serde_json::Value;

use super::html::{esc, seg, time};
use super::{html, signed_in};
use crate::api::{App, Page, Shared, internal, query, status_name};

/// The most runs a list shows, and the most history entries or decision records a run page shows.
pub const LIST_MAX: usize = 200;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/ui/workflows", get(workflows_page))
        .route("/ui/workflows/{id}", get(workflow_page))
        .route("/ui/workflows/{id}/graph.svg", get(workflow_graph))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/graph.svg", get(run_graph))
}

/// Active runs per step id of one version, summed over positions (a run inside a `parallel`
/// counts at each of its steps).
fn waiting_by_step(workflow: &Workflow, positions: &[flowmark_store::Position]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for position in positions {
        for &index in &position.steps {
            if let Some(step) = workflow.steps.get(usize::from(index)) {
                *counts.entry(step.id.to_string()).or_insert(0) += position.runs;
            }
        }
    }
    counts
}

async fn workflows_page(app: App, headers: HeaderMap) -> Page {
    let (email, session) = signed_in(&app, &headers, "/ui/workflows").await?;
    let answer = query(&app.owner, move |engine, _| -> Result<String, flowmark_runtime::Error> {
        let summaries = engine.store().workflows()?;
        let mut body = String::from("<h1>Workflows</h1>");
        if summaries.is_empty() {
            body.push_str(
                "<p class=\"muted\">No workflows yet. Upload one with <code>POST /api/workflows</code>.</p>",
            );
        }
        body.push_str("<div class=\"grid\">");
        for summary in &summaries {
            let workflow = engine.workflow(&summary.id, Some(summary.latest_version))?;
            let active: u64 = engine.store().positions(&summary.id)?.iter().map(|p| p.runs).sum();
            let title = workflow.name.clone().unwrap_or_else(|| summary.id.clone());
            let id = seg(&summary.id);
            let _ = write!(
                body,
                "<article class=\"card workflow\" aria-labelledby=\"wf-{id}\"><h2 id=\"wf-{id}\"><a href=\"/ui/workflows/{id}\">{}</a></h2>\
                 <p class=\"muted\"><code>{}</code> · v{} · <span class=\"pill {status}\">{status}</span> · {} · \
                 <a href=\"/ui/runs?workflow={id}&amp;status=active\">{active} active run{}</a></p>",
                esc(&title),
                esc(&summary.id),
                summary.latest_version,
                workflow.subject.as_str(),
                if active == 1 { "" } else { "s" },
                status = status_name(summary.status),
            );
            if let Some(description) = &workflow.description {
                let _ = write!(body, "<p>{}</p>", esc(description));
            }
            let _ = write!(
                body,
                "<a href=\"/ui/workflows/{id}\"><img class=\"graph thumb\" loading=\"lazy\" src=\"/ui/workflows/{id}/graph.svg?version={}\" \
                 alt=\"The steps of {}: {}\"></a></article>",
                summary.latest_version,
                esc(&title),
                esc(&step_sentence(&workflow)),
            );
        }
        body.push_str("</div>");
        Ok(body)
    })
    .await;
    match answer? {
        Ok(body) => Ok(html(StatusCode::OK, super::html::page("Workflows", Some((&email, &session.csrf)), &body))),
        Err(error) => Err(internal(error).into()),
    }
}

/// The steps in order, as one sentence: the text alternative of a graph.
fn step_sentence(workflow: &Workflow) -> String {
    let steps: Vec<String> = workflow.steps.iter().map(|s| format!("{} ({})", s.id, s.kind_name())).collect();
    steps.join(", ")
}

fn version_param(params: &BTreeMap<String, String>) -> Option<u32> {
    params.get("version").and_then(|v| v.parse().ok())
}

async fn workflow_page(
    app: App,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Page {
    let (email, session) = signed_in(&app, &headers, &format!("/ui/workflows/{}", seg(&id))).await?;
    let version = version_param(&params);
    let answer = query(&app.owner, move |engine, _| -> Result<Option<(String, String)>, flowmark_runtime::Error> {
        let Some(summary) = engine.store().workflows()?.into_iter().find(|w| w.id == id) else { return Ok(None) };
        let version = version.filter(|v| (1..=summary.latest_version).contains(v)).unwrap_or(summary.latest_version);
        let workflow = engine.workflow(&id, Some(version))?;
        let positions: Vec<_> =
            engine.store().positions(&id)?.into_iter().filter(|p| p.version == version).collect();
        let waiting = waiting_by_step(&workflow, &positions);
        let title = workflow.name.clone().unwrap_or_else(|| id.clone());
        let wid = seg(&id);
        let mut body = format!(
            "<p><a href=\"/ui/workflows\">← Workflows</a></p><h1>{}</h1><div class=\"card\"><dl class=\"facts\">\
             <dt>Id</dt><dd><code>{}</code></dd><dt>Status</dt><dd>{}</dd><dt>Subject</dt><dd>{}</dd><dt>Version</dt><dd>",
            esc(&title),
            esc(&id),
            status_name(summary.status),
            workflow.subject.as_str()
        );
        for v in 1..=summary.latest_version {
            if v == version {
                let _ = write!(body, "<strong aria-current=\"page\">v{v}</strong> ");
            } else {
                let _ = write!(body, "<a href=\"/ui/workflows/{wid}?version={v}\">v{v}</a> ");
            }
        }
        let total: u64 = positions.iter().map(|p| p.runs).sum();
        let _ = write!(
            body,
            "</dd><dt>Active runs</dt><dd><a href=\"/ui/runs?workflow={wid}&amp;version={version}&amp;status=active\">{total}</a> on this version</dd></dl>"
        );
        if let Some(description) = &workflow.description {
            let _ = write!(body, "<p>{}</p>", esc(description));
        }
        let _ = write!(
            body,
            "</div><figure class=\"card graph\"><img class=\"graph\" src=\"/ui/workflows/{wid}/graph.svg?version={version}&amp;counts=1\" \
             alt=\"The steps of {}, with the number of active runs at each: {}\"><figcaption class=\"muted\">\
             Orange rings mark steps where active runs stand now, with how many.</figcaption></figure>",
            esc(&title),
            esc(&step_sentence(&workflow))
        );
        body.push_str(
            "<section aria-labelledby=\"steps\"><h2 id=\"steps\">Steps</h2><table class=\"steps\"><thead><tr>\
             <th scope=\"col\">Step</th><th scope=\"col\">Kind</th><th scope=\"col\">Active runs here</th></tr></thead><tbody>",
        );
        for step in &workflow.steps {
            let count = waiting.get(&*step.id).copied().unwrap_or(0);
            let runs = if count == 0 {
                "<span class=\"muted\">0</span>".to_owned()
            } else {
                format!(
                    "<a href=\"/ui/runs?workflow={wid}&amp;version={version}&amp;status=active&amp;step={}\">{count}</a>",
                    seg(&step.id)
                )
            };
            let _ = write!(
                body,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{runs}</td></tr>",
                esc(&step.id),
                step.name.as_ref().map(|n| format!(" {}", esc(n))).unwrap_or_default(),
                step.kind_name()
            );
        }
        body.push_str("</tbody></table></section>");
        Ok(Some((title, body)))
    })
    .await;
    match answer? {
        Ok(Some((title, body))) => {
            Ok(html(StatusCode::OK, super::html::page(&title, Some((&email, &session.csrf)), &body)))
        }
        Ok(None) => Ok(not_found(&email, &session.csrf, "No such workflow")),
        Err(error) => Err(internal(error).into()),
    }
}

fn not_found(email: &str, csrf: &str, what: &str) -> Response {
    html(StatusCode::NOT_FOUND, super::html::page("Not found", Some((email, csrf)), &format!("<h1>{}</h1>", esc(what))))
}

/// An SVG drawing as a response: its own strict policy (styles inside it, nothing else).
fn svg_response(svg: String) -> Response {
    let mut response = svg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    response
}

/// Lays out and draws a graph on a blocking thread (layout is CPU work, not the owner's).
async fn draw(workflow: Arc<Workflow>, marks: Marks) -> Response {
    match tokio::task::spawn_blocking(move || flowmark_graph::svg(&workflow, &marks)).await {
        Ok(svg) => svg_response(svg),
        Err(error) => internal(error).into_response(),
    }
}

async fn workflow_graph(
    app: App,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Page {
    signed_in(&app, &headers, "/ui/workflows").await?;
    let version = version_param(&params);
    let counts = params.contains_key("counts");
    let answer =
        query(&app.owner, move |engine, _| -> Result<Option<(Arc<Workflow>, Marks)>, flowmark_runtime::Error> {
            let Some((latest, _)) = engine.store().workflow_source(&id, None)? else { return Ok(None) };
            let version = version.filter(|v| (1..=latest).contains(v)).unwrap_or(latest);
            let workflow = engine.workflow(&id, Some(version))?;
            let mut marks = Marks::default();
            if counts {
                let positions: Vec<_> =
                    engine.store().positions(&id)?.into_iter().filter(|p| p.version == version).collect();
                marks.steps = waiting_by_step(&workflow, &positions).into_iter().map(|(s, n)| (s, Some(n))).collect();
            }
            Ok(Some((workflow, marks)))
        })
        .await;
    match answer? {
        Ok(Some((workflow, marks))) => Ok(draw(workflow, marks).await),
        Ok(None) => Ok((StatusCode::NOT_FOUND, "no such workflow").into_response()),
        Err(error) => Err(internal(error).into()),
    }
}

/// The run explorer: a filter form (GET, so a filtered view is a link) and the newest runs.
async fn runs_page(app: App, headers: HeaderMap, Query(params): Query<BTreeMap<String, String>>) -> Page {
    let (email, session) = signed_in(&app, &headers, "/ui/runs").await?;
    let text = |key: &str| params.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = RunFilter {
        workflow_id: text("workflow"),
        version: text("version").and_then(|v| v.parse().ok()),
        status: text("status").and_then(|s| RunStatus::parse(&s)),
        subject_id: text("subject"),
        at: None,
    };
    let step = text("step");
    let shown = (filter.clone(), step.clone());
    let who = email.clone();
    let answer = query(&app.owner, move |engine, _| -> Result<String, flowmark_runtime::Error> {
        let zone = super::reader_zone(engine, &who);
        let workflows = engine.store().workflows()?;
        let runs = engine.runs(&filter, step.as_deref(), LIST_MAX)?;
        let (filter, step) = shown;
        let mut body = String::from(
            "<h1>Runs</h1><form class=\"filters card\" method=\"get\" action=\"/ui/runs\" role=\"search\" aria-label=\"Filter runs\">",
        );
        body.push_str("<div><label for=\"f-workflow\">Workflow</label><select id=\"f-workflow\" name=\"workflow\"><option value=\"\">All</option>");
        for w in &workflows {
            let selected = if filter.workflow_id.as_deref() == Some(&w.id) { " selected" } else { "" };
            let _ = write!(body, "<option value=\"{0}\"{selected}>{0}</option>", esc(&w.id));
        }
        body.push_str("</select></div><div><label for=\"f-status\">Status</label><select id=\"f-status\" name=\"status\"><option value=\"\">All</option>");
        for status in RunStatus::ALL {
            let selected = if filter.status == Some(status) { " selected" } else { "" };
            let _ = write!(body, "<option value=\"{0}\"{selected}>{0}</option>", status.as_str());
        }
        let _ = write!(
            body,
            "</select></div><div><label for=\"f-step\">At step</label><input id=\"f-step\" name=\"step\" type=\"text\" value=\"{}\"></div>\
             <div><label for=\"f-subject\">Subject</label><input id=\"f-subject\" name=\"subject\" type=\"text\" value=\"{}\"></div>",
            esc(step.as_deref().unwrap_or_default()),
            esc(filter.subject_id.as_deref().unwrap_or_default())
        );
        if let Some(version) = filter.version {
            let _ = write!(body, "<input type=\"hidden\" name=\"version\" value=\"{version}\">");
        }
        body.push_str("<div class=\"actions\"><button type=\"submit\">Filter</button><a href=\"/ui/runs\">Clear</a></div></form>");
        if runs.is_empty() {
            body.push_str("<p class=\"muted\">No runs match.</p>");
            return Ok(body);
        }
        let _ = write!(
            body,
            "<p class=\"muted\">{} run{}, newest first{}.</p><table class=\"runs\"><thead><tr><th scope=\"col\">Run</th>\
             <th scope=\"col\">Workflow</th><th scope=\"col\">Subject</th><th scope=\"col\">Status</th><th scope=\"col\">At</th>\
             <th scope=\"col\">Started</th></tr></thead><tbody>",
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            if runs.len() == LIST_MAX { " (the first 200; narrow the filter)" } else { "" }
        );
        for run in &runs {
            let workflow = engine.workflow(&run.workflow_id, Some(run.version))?;
            let at: Vec<String> =
                run.current_steps().map(|s| format!("<code>{}</code>", esc(&workflow.step(s).id))).collect();
            let _ = write!(
                body,
                "<tr><td><a href=\"/ui/runs/{id}\">#{id}</a></td><td><a href=\"/ui/workflows/{}?version={}\">{}</a> v{}</td>\
                 <td>{}</td><td><span class=\"pill {status}\">{status}</span></td><td>{}</td><td>{}</td></tr>",
                seg(&run.workflow_id),
                run.version,
                esc(&run.workflow_id),
                run.version,
                subject_link(&workflow, &run.subject_id),
                at.join(", "),
                time(run.started_at, zone),
                id = run.id.0,
                status = run.status.as_str(),
            );
        }
        body.push_str("</tbody></table>");
        Ok(body)
    })
    .await;
    match answer? {
        Ok(body) => Ok(html(StatusCode::OK, super::html::page("Runs", Some((&email, &session.csrf)), &body))),
        Err(error) => Err(internal(error).into()),
    }
}

/// An item subject links to its page; a contact is shown as its id.
fn subject_link(workflow: &Workflow, subject: &str) -> String {
    if workflow.subject == SubjectKind::Item {
        format!("<a href=\"/ui/items/{}\">{}</a>", seg(subject), esc(subject))
    } else {
        esc(subject)
    }
}

/// A JSON value as short text: strings bare, everything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

async fn run_page(app: App, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let (email, session) = signed_in(&app, &headers, &format!("/ui/runs/{}", seg(&id))).await?;
    let Ok(run_id) = id.parse::<u64>() else { return Ok(not_found(&email, &session.csrf, "No such run")) };
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| -> Result<Option<String>, flowmark_runtime::Error> {
        let zone = super::reader_zone(engine, &who);
        let Some(run) = engine.store().run(RunId(run_id))? else { return Ok(None) };
        let workflow = engine.workflow(&run.workflow_id, Some(run.version))?;
        let history = engine.store().history(run.id)?;
        let decisions = engine.store().decisions(run.id)?;
        let at: Vec<String> = run.current_steps().map(|s| format!("<code>{}</code>", esc(&workflow.step(s).id))).collect();
        let mut body = format!(
            "<p><a href=\"/ui/runs?workflow={}\">← Runs of {}</a></p><h1>Run #{} <span class=\"pill {status}\">{status}</span></h1>\
             <div class=\"card\"><dl class=\"facts\"><dt>Workflow</dt><dd><a href=\"/ui/workflows/{}?version={}\">{}</a> v{}</dd>\
             <dt>Subject</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>",
            seg(&run.workflow_id),
            esc(&run.workflow_id),
            run.id.0,
            seg(&run.workflow_id),
            run.version,
            esc(&run.workflow_id),
            run.version,
            subject_link(&workflow, &run.subject_id),
            time(run.started_at, zone),
            status = run.status.as_str(),
        );
        match run.ended_at {
            Some(ended) => {
                let _ = write!(body, "<dt>Ended</dt><dd>{}</dd>", time(ended, zone));
            }
            None => {
                let _ = write!(
                    body,
                    "<dt>Stands at</dt><dd>{}</dd>",
                    if at.is_empty() { "—".to_owned() } else { at.join(", ") }
                );
                if let Some(next) = run.timers.iter().map(|t| t.due_at).min() {
                    let _ = write!(body, "<dt>Next timer</dt><dd>{}</dd>", super::html::due(Some(next), now, zone));
                }
            }
        }
        if let Some(parent) = &run.parent {
            let _ = write!(body, "<dt>Started by</dt><dd><a href=\"/ui/runs/{0}\">run #{0}</a></dd>", parent.run.0);
        }
        let _ = write!(
            body,
            "</dl></div><figure class=\"card graph\"><img class=\"graph\" src=\"/ui/runs/{}/graph.svg\" \
             alt=\"The steps of {}; the run stands at {}\"><figcaption class=\"muted\">Orange rings mark where the run stands.</figcaption></figure>",
            run.id.0,
            esc(&run.workflow_id),
            esc(&run.current_steps().map(|s| workflow.step(s).id.to_string()).collect::<Vec<_>>().join(", "))
        );
        body.push_str("<section aria-labelledby=\"history\"><h2 id=\"history\">History</h2>");
        body.push_str(&history_table(&history, zone));
        body.push_str("</section><section aria-labelledby=\"decisions\"><h2 id=\"decisions\">Decision records</h2>");
        body.push_str(&decisions_table(&decisions, zone));
        body.push_str("</section>");
        Ok(Some(body))
    })
    .await;
    match answer? {
        Ok(Some(body)) => {
            Ok(html(StatusCode::OK, super::html::page(&format!("Run #{id}"), Some((&email, &session.csrf)), &body)))
        }
        Ok(None) => Ok(not_found(&email, &session.csrf, "No such run")),
        Err(error) => Err(internal(error).into()),
    }
}

/// A time to the second in the reader's zone, for histories where many entries share a minute.
fn precise(at: flowmark_core::Timestamp, zone: html::Zone) -> String {
    let utc = at.to_chrono();
    let local = utc.with_timezone(&zone.0);
    format!("<time datetime=\"{}\">{}</time>", utc.to_rfc3339(), local.format("%d %b %Y %H:%M:%S %Z"))
}

fn history_table(history: &[Value], zone: html::Zone) -> String {
    if history.is_empty() {
        return "<p class=\"muted\">Nothing yet.</p>".to_owned();
    }
    let mut out = String::new();
    let skipped = history.len().saturating_sub(LIST_MAX);
    if skipped > 0 {
        let _ = write!(out, "<p class=\"muted\">The latest {LIST_MAX} of {} entries.</p>", history.len());
    }
    out.push_str(
        "<table class=\"history\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Step</th>\
         <th scope=\"col\">What</th><th scope=\"col\">Detail</th></tr></thead><tbody>",
    );
    for entry in &history[skipped..] {
        let at = entry["at"].as_i64().map(|ms| precise(flowmark_core::Timestamp(ms), zone)).unwrap_or_default();
        let detail: Vec<String> = entry
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| !matches!(k.as_str(), "at" | "step" | "what") && !v.is_null())
            .map(|(k, v)| match (k.as_str(), v.as_i64()) {
                ("until", Some(ms)) => format!("until: {}", time(flowmark_core::Timestamp(ms), zone)),
                _ => format!("{}: {}", esc(&k.replace('_', " ")), esc(&plain(v))),
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td>{at}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            entry["step"].as_str().map(|s| format!("<code>{}</code>", esc(s))).unwrap_or_default(),
            esc(&entry["what"].as_str().unwrap_or_default().replace('_', " ")),
            detail.join("; ")
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn decisions_table(decisions: &[Value], zone: html::Zone) -> String {
    if decisions.is_empty() {
        return "<p class=\"muted\">This run has made no decisions yet.</p>".to_owned();
    }
    let mut out = String::from(
        "<table class=\"decisions\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Step</th>\
         <th scope=\"col\">Decision</th><th scope=\"col\">Read</th><th scope=\"col\">Result</th><th scope=\"col\">Went to</th></tr></thead><tbody>",
    );
    for record in decisions.iter().rev().take(LIST_MAX).rev() {
        let at = record["at"].as_i64().map(|ms| precise(flowmark_core::Timestamp(ms), zone)).unwrap_or_default();
        let inputs: Vec<String> = record["inputs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("<code>{}</code> = {}", esc(k), esc(&plain(v))))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{at}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            record["step"].as_str().map(|s| format!("<code>{}</code>", esc(s))).unwrap_or_default(),
            esc(record["kind"].as_str().unwrap_or_default()),
            record["expression"].as_str().map(|e| format!("<br><code>{}</code>", esc(e))).unwrap_or_default(),
            if inputs.is_empty() { "—".to_owned() } else { inputs.join("<br>") },
            esc(&plain(&record["result"])),
            record["path"].as_str().map(|p| format!("<code>{}</code>", esc(p))).unwrap_or_else(|| "—".to_owned()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

async fn run_graph(app: App, headers: HeaderMap, Path(id): Path<String>) -> Page {
    signed_in(&app, &headers, "/ui/runs").await?;
    let Ok(run_id) = id.parse::<u64>() else { return Ok((StatusCode::NOT_FOUND, "no such run").into_response()) };
    let answer =
        query(&app.owner, move |engine, _| -> Result<Option<(Arc<Workflow>, Marks)>, flowmark_runtime::Error> {
            let Some(run) = engine.store().run(RunId(run_id))? else { return Ok(None) };
            let workflow = engine.workflow(&run.workflow_id, Some(run.version))?;
            let mut marks = Marks::default();
            for at in run.current_steps() {
                marks.steps.insert(workflow.step(at).id.to_string(), None);
            }
            Ok(Some((workflow, marks)))
        })
        .await;
    match answer? {
        Ok(Some((workflow, marks))) => Ok(draw(workflow, marks).await),
        Ok(None) => Ok((StatusCode::NOT_FOUND, "no such run").into_response()),
        Err(error) => Err(internal(error).into()),
    }
}
