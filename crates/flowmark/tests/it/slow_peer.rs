//! A slow peer never stalls Flowmark: with an SMTP server that takes 8 s per message and a
//! webhook receiver that takes 15 s per call, the API, ingestion and a one-click unsubscribe
//! answer at once while both are busy, and an email queued for the contact who unsubscribed
//! never reaches the SMTP server after the unsubscribe was answered.
//!
//! Latencies are measured here, around each request, and asserted loosely (≤ 500 ms) so a
//! busy CI machine passes; on a quiet one they are a few milliseconds.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::serve::Server;

const SMTP_DELAY_S: &str = "8";
const WEBHOOK_DELAY: Duration = Duration::from_secs(15);
const LATENCY_MAX: Duration = Duration::from_millis(500);

const LAUNCH: &str = r#"
id: launch
subject: contact
trigger: { event: Signed Up }
steps:
  - id: ping
    action: { webhook: { url: "http://PEER/signed-up", body: { who: "{{ contact.email }}" } } }
  - id: hello
    action: { email: { subject: "Hello {{ contact.email }}", text: "Welcome aboard." } }
"#;

/// A webhook receiver that reads each call and answers it after `WEBHOOK_DELAY`.
fn slow_receiver() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                let _ = stream.read(&mut buffer);
                std::thread::sleep(WEBHOOK_DELAY);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    address
}

fn epoch_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn timed<T>(what: &str, latencies: &mut Vec<(String, Duration)>, request: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let answer = request();
    latencies.push((what.to_owned(), started.elapsed()));
    answer
}

#[test]
fn the_api_ingestion_and_unsubscribe_answer_at_once_while_peers_are_slow() {
    let dir = super::validate::fresh_dir("slow-peer");
    let sink = super::email::slow_smtp_sink(&dir, SMTP_DELAY_S);
    let peer = slow_receiver();
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let db = dir.join("flowmark.db");
    let server = Server::start_with(
        &db,
        &[
            "--write-key",
            "wk",
            "--api-token",
            "tok",
            "--smtp-url",
            &smtp,
            "--smtp-concurrency",
            "1",
            "--webhook-secret",
            crate::webhooks::SECRET,
            "--webhook-allow-private",
        ],
    );
    assert_eq!(server.api("POST", "/api/workflows", LAUNCH.replace("PEER", &peer).as_bytes()).0, 201);
    for who in ["ann", "bob", "vic"] {
        let identify = json!({ "userId": who, "traits": { "email": format!("{who}@example.com") } });
        assert_eq!(server.send("identify", &identify).0, 200);
        assert_eq!(server.send("track", &json!({ "userId": who, "event": "Signed Up" })).0, 200);
    }
    // Ann's email has reached the SMTP server, which now takes 8 s to answer it; the three
    // webhooks hang at the receiver for 15 s; Bob's and Vic's emails wait their turn.
    let started = Instant::now();
    while sink.received().is_empty() {
        if started.elapsed() > Duration::from_secs(20) {
            let (_, _, runs) = server.api("GET", "/api/runs?subject=ann", b"");
            let id = runs[0]["id"].clone();
            let (_, _, run) = server.api("GET", &format!("/api/runs/{id}"), b"");
            panic!("no email reached the SMTP server: {run}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secret: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM settings WHERE key = 'unsubscribe_secret'", [], |row| row.get(0))
        .unwrap();
    let link = flowmark_runtime::unsubscribe::link(&format!("http://{}", server.address), secret.as_bytes(), "vic");

    let mut latencies = Vec::new();
    for round in 0..10 {
        let (status, _, _) = timed("GET /api/runs", &mut latencies, || server.api("GET", "/api/runs", b""));
        assert_eq!(status, 200);
        let event = json!({ "userId": format!("reader-{round}"), "event": "Page Read" });
        let (status, _, _) = timed("POST /v1/track", &mut latencies, || server.send("track", &event));
        assert_eq!(status, 200);
    }
    let (status, page) =
        timed("POST unsubscribe", &mut latencies, || super::email::post_form(&link, "List-Unsubscribe=One-Click"));
    let unsubscribed_at = epoch_s();
    assert_eq!(status, 200, "{page}");
    let busy = started.elapsed();
    for (what, took) in &latencies {
        println!("{what}: {:.1} ms", took.as_secs_f64() * 1000.0);
        assert!(*took <= LATENCY_MAX, "{what} took {took:?} while the peers were busy");
    }
    assert!(busy < Duration::from_secs(8), "the requests were all made while Ann's email was being answered");

    // Bob's email goes next; Vic's, queued before the unsubscribe, never does.
    let started = Instant::now();
    let vic_run = loop {
        assert!(started.elapsed() < Duration::from_secs(40), "Vic's email was never settled");
        let (_, _, runs) = server.api("GET", "/api/runs?subject=vic", b"");
        let id = runs[0]["id"].clone();
        let (_, _, run) = server.api("GET", &format!("/api/runs/{id}"), b"");
        let settled =
            run["history"].as_array().unwrap().iter().any(|h| h["what"] == "effect_result" && h["step"] == "hello");
        if settled {
            break run;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let result = vic_run["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["what"] == "effect_result" && h["step"] == "hello")
        .unwrap()
        .clone();
    assert_eq!(result["ok"], false, "Vic's email was refused: {result}");
    assert!(result["detail"].as_str().unwrap().contains("suppressed"), "{result}");
    for message in sink.received() {
        if message["envelope_to"] == json!(["vic@example.com"]) {
            assert!(
                message["at"].as_f64().unwrap() < unsubscribed_at,
                "an email reached the SMTP server after Vic's unsubscribe was answered"
            );
        }
    }
    // The queue goes on: Bob's email is sent once Ann's is answered.
    let started = Instant::now();
    while !sink.received().iter().any(|m| m["envelope_to"] == json!(["bob@example.com"])) {
        assert!(started.elapsed() < Duration::from_secs(30), "Bob's email was never sent");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sink.received().iter().all(|m| m["envelope_to"] != json!(["vic@example.com"])), "nothing ever went to Vic");
    let (_, _, metrics) = server.request_text("GET", "/metrics", &[("Authorization", "Bearer tok".to_owned())], b"");
    assert!(metrics.contains("flowmark_effects_in_flight "), "{metrics}");
    assert!(metrics.contains("flowmark_effect_attempt_seconds_count{connector=\"smtp\"}"), "{metrics}");
    server.stop();
}
