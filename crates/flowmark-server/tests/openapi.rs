//! The OpenAPI document against the router that serves it, over real HTTP.
//!
//! Served routes are documented by construction: API handlers are registered only through
//! `utoipa_axum::routes!`, which takes the route from the handler's `#[utoipa::path]`. What
//! could still slip past is a plain `axum` route; the tidy test below allows those only for the
//! web UI's pages, under `/ui`. The other direction is walked here: every documented operation
//! is answered by a handler of the real router, not by its fallback (`404` with an empty body)
//! or a `405`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use flowmark_runtime::{Connectors, Engine, LogConnector};
use flowmark_server::owner::{Owner, ServerStore};
use flowmark_server::{Config, openapi_document, router};
use flowmark_sqlite::SqliteStore;
use serde_json::Value;

/// `(status, headers, body)` of one request with the admin token and `body`.
fn call(address: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer admin\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn every_documented_operation_is_served() {
    let store: ServerStore = Box::new(SqliteStore::open_in_memory().unwrap());
    let engine = Engine::new(store, serde_json::json!({})).unwrap();
    let (owner, owner_thread): (Owner, _) = Owner::start(engine, Connectors::new(Arc::new(LogConnector::default())));
    let config = Config { admin_tokens: vec!["admin".to_owned()], ..Config::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = router(flowmark_server::Workspaces::single(flowmark_server::Tenant::new(owner.clone())), config);
    runtime.spawn(async move { axum::serve(listener, app).await });

    let doc: Value = serde_json::from_str(&openapi_document()).unwrap();
    let mut walked = 0;
    for (template, methods) in doc["paths"].as_object().unwrap() {
        // Each `{param}` filled with a value of its type.
        let mut path = template.clone();
        for (method, operation) in methods.as_object().unwrap() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "path" {
                    let name = parameter["name"].as_str().unwrap();
                    let value = if parameter["schema"]["type"] == "integer" { "1" } else { "x" };
                    path = path.replace(&format!("{{{name}}}"), value);
                }
            }
            let (status, head, body) = call(&address, &method.to_uppercase(), &path, "{}");
            assert_ne!(status, 405, "{method} {template} is documented but not served: {head}");
            assert!(
                !(status == 404 && body.is_empty()),
                "{method} {template} is documented but the router's fallback answered: {head}"
            );
            walked += 1;
        }
    }
    assert!(walked >= 46, "walked {walked} operations");
    // And the fallback does answer what is not served, so the check above can fail.
    let (status, _, body) = call(&address, "GET", "/api/not-a-route", "");
    assert_eq!((status, body.as_str()), (404, ""));

    drop(runtime);
    drop(owner);
    owner_thread.join().unwrap();
}

/// A plain `axum` route bypasses the document: only the web UI's pages may be one.
#[test]
fn only_web_ui_pages_are_routed_outside_the_document() {
    let src = source_dir();
    let mut offenders = Vec::new();
    let mut plain = 0;
    for (path, text) in sources() {
        for (number, line) in text.lines().enumerate() {
            for call in [".route(", ".route_service(", ".nest(", ".nest_service(", ".fallback("] {
                let Some(at) = line.find(call) else { continue };
                plain += 1;
                let rest = &line[at + call.len()..];
                let in_ui = path.strip_prefix(&src).is_ok_and(|p| p.starts_with("ui"));
                if call != ".route(" || !in_ui || !rest.starts_with("\"/ui") {
                    offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(plain >= 10, "found the UI's routes ({plain})");
    assert!(offenders.is_empty(), "routes outside the OpenAPI document:\n{}", offenders.join("\n"));
}

/// Handlers refuse with `api::Problem` and pass refusals up with `?`: no handler matches a
/// refusal only to hand it back (`Err(response) => response`), and no API handler answers a
/// bare `Response` that could hide a refusal answered some other way.
#[test]
fn handlers_refuse_through_the_one_problem_type() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (number, line) in lines.iter().enumerate() {
            let handed_back = line.contains("Err(response) => response") || line.contains("Err(response) => return");
            // An API handler takes the `Admin` extractor; its signature ends within a few lines.
            let api_handler =
                line.contains("_admin: Admin") && lines[number..].iter().take(8).any(|l| l.contains("-> Response {"));
            if handed_back || api_handler {
                offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "refusals not passed up as a Problem:\n{}", offenders.join("\n"));
}

fn source_dir() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).to_path_buf()
}

/// Every Rust source file of the server, with its text.
fn sources() -> Vec<(std::path::PathBuf, String)> {
    let mut files = vec![source_dir()];
    let mut found = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            found.push((path, text));
        }
    }
    found
}
