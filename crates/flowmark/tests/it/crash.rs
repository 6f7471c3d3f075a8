//! Crash safety, proven: the real binary is killed with SIGKILL at random moments while
//! other threads drive events at it over HTTP, restarted on the same database each time, and
//! then audited:
//!
//! - every event that got a `2xx` is stored exactly once (clients resend what was not
//!   acknowledged, with the same `messageId`, as Segment's libraries do);
//! - every run resumes where it was and finishes: none is lost, none is duplicated, none is
//!   stuck (a lost timer would leave its run waiting forever);
//! - every effect a committed transition emitted reached its peer at least once, always under
//!   the same idempotency key (`webhook-id`) with the same content, and nothing reached it that
//!   no committed transition emitted; the peer is slow (tens of ms per call), so kills find
//!   effects in flight at the workers, whose claims come back once their leases pass;
//! - bad bodies get a clear `4xx` and change nothing.
//!
//! The seed is printed; `FLOWMARK_CRASH_SEED=<seed>` repeats a run's kill schedule.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::Server;

const SUBJECTS: usize = 300;
const KILLS: usize = 12;
const SENDERS: usize = 4;

/// The workflow, its webhooks to the receiver at `PEER`.
const WORKFLOW: &str = r#"
id: crash-audit
subject: contact
trigger: { event: Signed Up }
entry: { reentry: never }
steps:
  - id: hello
    action: { webhook: { url: "http://PEER/hello", body: { who: "{{ contact.id | default: 'x' }}" } } }
  - id: pause
    wait: { duration: 1s }
  - id: confirm
    wait: { event: Confirmed, timeout: 2s }
    on_timeout: bye
  - id: thanks
    action: { webhook: { url: "http://PEER/thanks", body: { confirmed: "yes" } } }
    next: end
  - id: bye
    action: { webhook: { url: "http://PEER/bye", body: { confirmed: "no" } } }
"#;

/// Every call the slow receiver got: (`webhook-id`, path and body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver that takes 20–80 ms per call (so kills find calls in flight) and
/// records each call's `webhook-id` with its path and body once it has read it whole.
fn slow_receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received: Received = Arc::default();
    let record = received.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let record = record.clone();
            std::thread::spawn(move || answer_slowly(stream, &record, 20 + (n as u64 * 37) % 60));
        }
    });
    (address, received)
}

fn answer_slowly(mut stream: TcpStream, record: &Received, delay_ms: u64) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    let request = loop {
        let Ok(n @ 1..) = stream.read(&mut buffer) else { return };
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if body.len() >= length {
            break (head.to_owned(), body.to_owned());
        }
    };
    let (head, body) = request;
    let id = head.lines().find_map(|l| l.strip_prefix("webhook-id: ")).unwrap_or_default().to_owned();
    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(delay_ms));
    record.lock().unwrap().push((id, format!("{path} {body}")));
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// A small, seedable generator for the kill schedule (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One HTTP/1.1 request that may fail (the server may die mid-request), answered as text.
fn try_request_text(address: &str, method: &str, path: &str, auth: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// `try_request_text`, with the body read as JSON.
fn try_request(address: &str, method: &str, path: &str, auth: &str, body: &[u8]) -> Option<(u16, Value)> {
    let (status, text) = try_request_text(address, method, path, auth, body)?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

const WRITE_KEY_AUTH: &str = "Basic d2s6"; // "wk:"
const TOKEN_AUTH: &str = "Bearer tok";

fn api(address: &str, path: &str) -> Value {
    let (status, body) = try_request(address, "GET", path, TOKEN_AUTH, b"").expect("the server answers");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn acknowledged_work_survives_sigkill_at_random_moments() {
    let seed = std::env::var("FLOWMARK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f10e_u64);
    println!("crash test seed: {seed} (FLOWMARK_CRASH_SEED={seed} repeats the kill schedule)");
    let mut rng = Rng(seed | 1);
    let dir = super::validate::fresh_dir("crash");
    let db = dir.join("flowmark.db");
    let (peer, received) = slow_receiver();
    // A short attempt timeout keeps the leases of calls cut off by a kill short.
    let args = [
        "--write-key",
        "wk",
        "--api-token",
        "tok",
        "--webhook-secret",
        crate::webhooks::SECRET,
        "--webhook-allow-private",
        "--effect-timeout",
        "2",
    ];

    let server = Server::start_with(&db, &args);
    let workflow = WORKFLOW.replace("PEER", &peer);
    let (status, body) =
        try_request(&server.address, "POST", "/api/workflows", TOKEN_AUTH, workflow.as_bytes()).unwrap();
    assert_eq!(status, 201, "{body}");

    // What clients want stored: a sign-up per subject, and a confirmation for every other one.
    let mut pending: VecDeque<Value> = VecDeque::new();
    for i in 0..SUBJECTS {
        pending
            .push_back(json!({ "userId": format!("s-{i}"), "event": "Signed Up", "messageId": format!("signup-{i}") }));
        if i % 2 == 0 {
            pending.push_back(
                json!({ "userId": format!("s-{i}"), "event": "Confirmed", "messageId": format!("confirm-{i}") }),
            );
        }
    }
    let expected: Vec<Value> = pending.iter().cloned().collect();
    let pending = Arc::new(Mutex::new(pending));
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let address = Arc::new(Mutex::new(server.address.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (pending, acknowledged, address, stop) =
                (pending.clone(), acknowledged.clone(), address.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(event) = pending.lock().unwrap().pop_front() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let to = address.lock().unwrap().clone();
                    let answer = try_request(&to, "POST", "/v1/track", WRITE_KEY_AUTH, event.to_string().as_bytes());
                    match answer {
                        Some((200, _)) => {
                            acknowledged.lock().unwrap().insert(event["messageId"].as_str().unwrap().to_owned());
                        }
                        Some((429 | 503, _)) | None => {
                            // Not acknowledged: the client keeps it and sends it again later.
                            pending.lock().unwrap().push_back(event);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Some((status, body)) => panic!("a valid event got {status}: {body}"),
                    }
                }
            })
        })
        .collect();

    let mut server = server;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        server.kill();
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        server = Server::start_with(&db, &args);
        *address.lock().unwrap() = server.address.clone();
    }
    wait_until("every event is acknowledged", Duration::from_secs(120), || pending.lock().unwrap().is_empty());
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    let address = server.address.clone();
    wait_until("every run has finished", Duration::from_secs(60), || {
        api(&address, "/api/runs?status=active&limit=1") == json!([])
    });
    wait_until("the outbox is empty", Duration::from_secs(90), || {
        let (_, metrics) = try_request_text(&address, "GET", "/metrics", TOKEN_AUTH, b"").expect("the server answers");
        metrics.contains("flowmark_outbox_depth 0\n")
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), expected.len(), "every event was acknowledged in the end");

    // Every acknowledged event is stored exactly once.
    for i in 0..SUBJECTS {
        let events = api(&address, &format!("/api/events?subject=s-{i}&limit=1000"));
        let mut ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["messageId"].as_str().unwrap()).collect();
        ids.sort_unstable();
        let mut wanted = vec![format!("signup-{i}")];
        if i % 2 == 0 {
            wanted.push(format!("confirm-{i}"));
        }
        wanted.sort_unstable();
        assert_eq!(ids, wanted, "the events of s-{i}");
    }

    // Every run finished, one per subject; collect the effects committed transitions emitted.
    let mut emitted: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..SUBJECTS {
        let runs = api(&address, &format!("/api/runs?subject=s-{i}"));
        let runs = runs.as_array().unwrap();
        assert_eq!(runs.len(), 1, "exactly one run for s-{i}: {runs:?}");
        assert_eq!(runs[0]["status"], "completed", "the run of s-{i}");
        let id = runs[0]["id"].as_u64().unwrap();
        let detail = api(&address, &format!("/api/runs/{id}"));
        let history = detail["history"].as_array().unwrap();
        let end = history.iter().position(|h| h["what"] == "run_ended").expect("the run's end is in its history");
        assert!(
            history[end + 1..].iter().all(|h| h["what"] == "effect_result"),
            "after its end, a run's history holds only late effect results: {history:?}"
        );
        let results = history.iter().filter(|h| h["what"] == "effect_result" && h["ok"] == true).count();
        assert_eq!(results, 2, "both webhooks of run {id} reported back: {history:?}");
        let steps: Vec<&str> =
            history.iter().filter(|h| h["what"] == "step_entered").map(|h| h["step"].as_str().unwrap()).collect();
        assert!(
            steps == ["hello", "pause", "confirm", "thanks"] || steps == ["hello", "pause", "confirm", "bye"],
            "run {id} went through {steps:?}"
        );
        for entry in history.iter().filter(|h| h["what"] == "effect_emitted") {
            let previous = emitted.insert(entry["key"].as_str().unwrap().to_owned(), id);
            assert!(previous.is_none(), "effect {} emitted twice", entry["key"]);
        }
    }
    assert_eq!(emitted.len(), 2 * SUBJECTS, "two webhooks per run");

    // Every emitted effect reached the peer at least once, always with the same content
    // under its key; nothing else reached it.
    let mut dispatched: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (key, content) in received.lock().unwrap().iter() {
        let entry = dispatched.entry(key.clone()).or_insert_with(|| (content.clone(), 0));
        assert_eq!(&entry.0, content, "effect {key} was delivered with different content");
        entry.1 += 1;
    }
    for key in emitted.keys() {
        assert!(dispatched.contains_key(key), "effect {key} was committed but never delivered");
    }
    for key in dispatched.keys() {
        assert!(emitted.contains_key(key), "effect {key} was delivered but no committed transition emitted it");
    }
    let redispatched = dispatched.values().filter(|(_, n)| *n > 1).count();
    println!("{} effects, {redispatched} delivered more than once (at least once is the promise)", dispatched.len());

    // Bad bodies get a clear 4xx and change nothing.
    let probe = |body: &[u8], path: &str, auth: &str| try_request(&address, "POST", path, auth, body).unwrap();
    let big = json!({ "userId": "probe", "event": "Big", "properties": { "x": "y".repeat(40_000) } }).to_string();
    let mixed = json!({ "batch": [
        { "type": "track", "userId": "probe", "event": "Signed Up", "messageId": "probe-1" },
        { "type": "track", "userId": 7.5e300, "event": { "not": "a name" } },
    ] })
    .to_string();
    let cases: [(&[u8], &str, &str, u16); 5] = [
        (b"{not json", "/v1/track", WRITE_KEY_AUTH, 400),
        (br#"{"userId":"probe","event":42}"#, "/v1/track", WRITE_KEY_AUTH, 400),
        (big.as_bytes(), "/v1/track", WRITE_KEY_AUTH, 400),
        (mixed.as_bytes(), "/v1/batch", WRITE_KEY_AUTH, 400),
        (br#"{"userId":"probe","event":"Signed Up"}"#, "/v1/track", "Basic bm9wZTo=", 401),
    ];
    for (body, path, auth, status) in cases {
        let (got, problem) = probe(body, path, auth);
        assert_eq!(got, status, "{problem}");
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty(), "a problem says why: {problem}");
    }
    assert_eq!(api(&address, "/api/events?subject=probe"), json!([]), "refused bodies stored nothing");
    assert_eq!(api(&address, "/api/runs?subject=probe"), json!([]), "refused bodies started nothing");
    server.stop();
}
