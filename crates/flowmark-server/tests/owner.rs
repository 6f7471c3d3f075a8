//! The owner thread under stress, over real HTTP. Back-pressure: while the owner's queue is
//! full, ingestion answers `429` with `Retry-After` and stores nothing; once the owner catches
//! up, the same call goes in. A bug: work that panics on the owner is rolled back, its caller
//! gets an error (over HTTP, a `500`), and the owner goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, mpsc};

use base64::Engine as _;
use flowmark_core::Timestamp;
use flowmark_runtime::{Connectors, Engine, LogConnector};
use flowmark_server::owner::{Command, Owner, ServerStore};
use flowmark_server::{Config, router};
use flowmark_sqlite::SqliteStore;
use flowmark_store::Store;

fn track(address: &str, message_id: &str) -> String {
    let body = serde_json::json!({ "userId": "ada", "event": "Page Viewed", "messageId": message_id }).to_string();
    let basic = base64::engine::general_purpose::STANDARD.encode("wk:");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Runs `work` on the owner thread and waits for its answer; while the queue is still full
/// of what the owner is catching up on, tries again.
fn on_owner<T: Send + 'static>(
    owner: &Owner,
    work: impl Fn(&mut Engine<ServerStore>, Timestamp) -> T + Clone + Send + 'static,
) -> T {
    let (reply, answer) = mpsc::channel();
    for _ in 0..1000 {
        let (work, reply) = (work.clone(), reply.clone());
        if owner.send(Command::Query(Box::new(move |engine, now| {
            let _ = reply.send(work(engine, now));
        }))) {
            return answer.recv().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the owner never took the command");
}

/// An owner on an in-memory store behind the HTTP API (write key `wk`): the owner, its
/// thread, the runtime serving HTTP, and the address.
fn serve() -> (Owner, std::thread::JoinHandle<()>, tokio::runtime::Runtime, String) {
    let store: ServerStore = Box::new(SqliteStore::open_in_memory().unwrap());
    let engine = Engine::new(store, serde_json::json!({})).unwrap();
    let (owner, owner_thread) = Owner::start(engine, Connectors::new(Arc::new(LogConnector::default())));
    let config = Config { write_keys: vec!["wk".to_owned()], ..Config::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = router(flowmark_server::Workspaces::single(flowmark_server::Tenant::new(owner.clone())), config);
    runtime.spawn(async move { axum::serve(listener, app).await });
    (owner, owner_thread, runtime, address)
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_stores_nothing() {
    let (owner, owner_thread, runtime, address) = serve();

    // The owner takes a command that holds it until released; then the queue fills up.
    let (entered, is_inside) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    assert!(owner.send(Command::Query(Box::new(move |_, _| {
        entered.send(()).unwrap();
        let _ = released.recv();
    }))));
    is_inside.recv().unwrap();
    let mut queued = 0;
    while owner.send(Command::Query(Box::new(|_, _| {}))) {
        queued += 1;
    }
    assert_eq!(queued, flowmark_server::owner::QUEUE_COUNT_MAX);

    let response = track(&address, "m-refused");
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(response.contains("retry-after: 1\r\n"), "{response}");
    assert!(response.contains("content-type: application/problem+json"), "{response}");
    assert!(response.contains("\"title\":\"Overloaded\""), "{response}");

    release.send(()).unwrap();
    let stored = on_owner(&owner, |engine, _| engine.store().has_event("m-refused").unwrap());
    assert!(!stored, "a refused event is not stored");
    let response = track(&address, "m-later");
    assert!(response.starts_with("HTTP/1.1 200"), "once the owner catches up the call goes in: {response}");
    assert!(on_owner(&owner, |engine, _| engine.store().has_event("m-later").unwrap()));

    drop(runtime);
    drop(owner);
    owner_thread.join().unwrap();
}

#[test]
fn a_panic_on_the_owner_is_rolled_back_and_the_owner_goes_on() {
    let (owner, owner_thread, runtime, address) = serve();

    // Work that writes inside a unit of work, then fails on a bug before committing.
    let (reply, answer) = mpsc::channel::<()>();
    assert!(owner.send(Command::Query(Box::new(move |engine, now| {
        let _keep = reply;
        engine.store_mut().begin().unwrap();
        let event = flowmark_core::engine::Event {
            id: "m-half".into(),
            name: "Page Viewed".into(),
            at: now,
            payload: serde_json::json!({}).into(),
        };
        assert!(engine.store_mut().insert_event("ada", &event, now).unwrap());
        panic!("a bug in the middle of a unit of work");
    }))));
    assert!(answer.recv().is_err(), "the caller of the failed work gets no answer, an error");
    let stored = on_owner(&owner, |engine, _| engine.store().has_event("m-half").unwrap());
    assert!(!stored, "what the failed work wrote is rolled back");

    // The owner still serves, over HTTP too.
    let response = track(&address, "m-after");
    assert!(response.starts_with("HTTP/1.1 200"), "the owner goes on after a panic: {response}");
    assert!(on_owner(&owner, |engine, _| engine.store().has_event("m-after").unwrap()));

    drop(runtime);
    drop(owner);
    owner_thread.join().unwrap();
}
