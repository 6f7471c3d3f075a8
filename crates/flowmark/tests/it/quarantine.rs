//! An effect that takes the server down with it every time is quarantined, on the real
//! server: a webhook whose every attempt ends with the process killed (SIGKILL while the call
//! is in flight, as a crash in the connector would) is attempted three times across three
//! restarts, then set aside: the server comes up and stays up, the peer is not called a
//! fourth time, and the effect is listed among the dead letters with why. Once the cause is
//! fixed, a person requeues it; it is performed, and its run records the result.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde_json::{Value, json};

use super::serve::Server;
use super::webhooks::SECRET;

const FLOW: &str = r#"
id: poison
subject: contact
trigger: { event: Signed Up }
steps:
  - id: ping
    action: { webhook: { url: "http://PEER/signed-up", body: { who: "a new contact" } } }
"#;

/// A receiver that reports each call on the channel, and answers `200` only once `answer`
/// is set (until then it holds the connection open, answering nothing).
fn receiver(answer: Arc<AtomicBool>) -> (String, mpsc::Receiver<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (calls, called) = mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (answer, calls) = (answer.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                let _ = stream.read(&mut buffer);
                let _ = calls.send(());
                if answer.load(Ordering::SeqCst) {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                } else {
                    std::thread::sleep(Duration::from_secs(120));
                }
            });
        }
    });
    (address, called)
}

fn dead_letters(server: &Server) -> Vec<Value> {
    let (status, _, body) = server.api("GET", "/api/outbox/dead-letters", b"");
    assert_eq!(status, 200, "{body}");
    body["dead_letters"].as_array().cloned().unwrap_or_default()
}

#[test]
fn an_effect_that_crashes_the_server_is_quarantined_and_requeued_by_a_person() {
    let dir = super::validate::fresh_dir("quarantine");
    let db = dir.join("flowmark.db");
    let answer = Arc::new(AtomicBool::new(false));
    let (peer, called) = receiver(answer.clone());
    let args = [
        "--write-key",
        "wk",
        "--api-token",
        "tok",
        "--webhook-secret",
        SECRET,
        "--webhook-allow-private",
        // Short, so each dead attempt's lease (the timeout and 5 s) passes soon; long enough
        // that the kill comes before the attempt times out.
        "--effect-timeout",
        "3",
    ];
    let mut server = Server::start_with(&db, &args);
    assert_eq!(server.api("POST", "/api/workflows", FLOW.replace("PEER", &peer).as_bytes()).0, 201);
    let signed_up = json!({ "userId": "u-1", "event": "Signed Up", "messageId": "s-1" });
    assert_eq!(server.send("track", &signed_up).0, 200);

    // Three attempts, each ended by the process dying while the call is in flight. Each
    // restart attempts it again once the dead attempt's lease has passed.
    for attempt in 1..=3 {
        called.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("attempt {attempt} reaches the peer"));
        server.kill();
        server = Server::start_with(&db, &args);
    }
    // The fourth start sets it aside instead of attempting it, and stays up.
    let mut letters = Vec::new();
    for _ in 0..300 {
        letters = dead_letters(&server);
        if !letters.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        (letter["status"].as_str(), letter["step"].as_str(), letter["attempts"].as_u64()),
        (Some("quarantined"), Some("ping"), Some(3))
    );
    assert!(letter["result"].as_str().unwrap().contains("3 attempts in a row ended with no outcome"), "{letter}");
    assert!(called.recv_timeout(Duration::from_secs(2)).is_err(), "the peer is not called a fourth time");
    assert!(server.alive());
    let (_, _, metrics) = server.request_text("GET", "/metrics", &[("Authorization", "Bearer tok".to_owned())], b"");
    assert!(metrics.contains("effects_quarantined_total 1"), "{metrics}");

    // The cause fixed, a person requeues it: it is performed, and its run records it.
    answer.store(true, Ordering::SeqCst);
    let key = letter["key"].as_str().unwrap().to_owned();
    assert_eq!(server.api("POST", "/api/outbox/requeue", json!({ "key": "nope" }).to_string().as_bytes()).0, 404);
    assert_eq!(server.api("POST", "/api/outbox/requeue", json!({ "key": key }).to_string().as_bytes()).0, 200);
    called.recv_timeout(Duration::from_secs(30)).expect("requeued, it is attempted again");
    let run = letter["run"].as_u64().unwrap();
    let mut result = Value::Null;
    for _ in 0..300 {
        let history = server.api("GET", &format!("/api/runs/{run}"), b"").2["history"].clone();
        if let Some(entry) = history.as_array().unwrap().iter().find(|e| e["what"] == "effect_result") {
            result = entry.clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((result["key"].as_str(), result["ok"].as_bool()), (Some(key.as_str()), Some(true)), "{result}");
    assert!(dead_letters(&server).is_empty());
    assert_eq!(server.api("POST", "/api/outbox/requeue", json!({ "key": key }).to_string().as_bytes()).0, 404, "once");
    server.stop();
}
