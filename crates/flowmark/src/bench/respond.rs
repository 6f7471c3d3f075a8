//! `flowmark bench respond`: the n8n-equivalent workload. An HTTP call starts a workflow that
//! branches on a field of the posted body, sets a value and answers with it
//! (`blueprints/lead-routing.yaml`); executions/s and latency at several concurrencies.
//!
//! Without `--url` it measures Flowmark: a `flowmark serve` child process on a fresh database,
//! `POST /api/workflows/lead-routing/runs`, answered once the run is durable. With `--url` it
//! sends the same bodies to another tool's endpoint (`bench/compare/n8n.sh` points it at n8n),
//! so one client measures both. Either way every answer is checked: a `segment` that is not
//! the one the score calls for counts as an error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::http::{API_TOKEN, Connection, start_server};
use super::{Fsync, emit, fresh_db, latency_json, remove_db, round2, run_clients};

#[derive(clap::Args)]
pub struct RespondArgs {
    /// Concurrent connections; one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// How long each measurement sends.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Another tool's endpoint (`http://host:port/path`) to send the same requests to,
    /// instead of a Flowmark server of the benchmark's own.
    #[arg(long)]
    url: Option<String>,
    /// A header to send with each request to `--url` (`Name: value`); repeatable.
    #[arg(long)]
    header: Vec<String>,
}

const WORKFLOW_PATH: &str = "/api/workflows/lead-routing/runs";

struct Target {
    address: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// `http://host:port/path` → address and path.
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (address, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let address = if address.contains(':') { address.to_owned() } else { format!("{address}:80") };
    Ok((address.replace("localhost:", "127.0.0.1:"), path.to_owned()))
}

/// The request body for execution `n` of a thread, and the segment it must come back with.
fn request(thread: usize, n: u64, rng: &mut u64) -> (Vec<u8>, &'static str) {
    // xorshift64: a fixed sequence per thread, so runs are comparable.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let score = *rng % 101;
    let body = json!({
        "subject": format!("lead-{thread}-{n}"),
        "event": { "name": "Lead Scored", "properties": { "score": score, "source": "signup-form" } },
    });
    (body.to_string().into_bytes(), if score > 50 { "hot" } else { "cold" })
}

/// The first `segment` string anywhere in a JSON answer.
fn segment(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map.get("segment").and_then(Value::as_str).or_else(|| map.values().find_map(segment)),
        Value::Array(items) => items.iter().find_map(segment),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    executions: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

pub fn run(args: &RespondArgs, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    let mut own = None;
    let target = match &args.url {
        Some(url) => {
            let (address, path) = parse_url(url)?;
            let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
            for header in &args.header {
                let (name, value) = header.split_once(':').context("a header is `Name: value`")?;
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            Target { address, path, headers }
        }
        None => {
            let db = fresh_db(dir, "respond");
            let server = start_server(&db)?;
            let blueprint = include_str!("../../../../blueprints/lead-routing.yaml");
            let auth = format!("Bearer {API_TOKEN}");
            let (status, _) =
                Connection::open(&server.address)?.request("POST", "/api/workflows", &auth, blueprint.as_bytes())?;
            if status != 201 {
                bail!("the lead-routing blueprint did not deploy: {status}");
            }
            let address = server.address.clone();
            own = Some((server, db));
            let headers =
                vec![("Authorization".to_owned(), auth), ("Content-Type".to_owned(), "application/json".to_owned())];
            Target { address, path: WORKFLOW_PATH.to_owned(), headers }
        }
    };
    let target = Arc::new(target);
    for (round, &connections) in args.connections.iter().enumerate() {
        eprintln!("respond: {connections} connections for {} s …", args.seconds);
        let target = target.clone();
        let (tallies, elapsed) = run_clients(connections, round, args.seconds, move |thread, stop| {
            let mut connection = Connection::open(&target.address)?;
            let headers: Vec<(&str, &str)> = target.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let mut tally = Tally::default();
            let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (thread as u64 + 1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (body, expected) = request(thread, n, &mut rng);
                let sent = Instant::now();
                let (status, _, answer) = connection.send("POST", &target.path, &headers, &body)?;
                tally.latencies.push(sent.elapsed());
                let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                if (200..300).contains(&status) && segment(&answer) == Some(expected) {
                    tally.executions += 1;
                } else {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| format!("{status}: {answer}"));
                }
            }
            Ok(tally)
        })?;
        let mut total = Tally::default();
        for tally in tallies {
            total.executions += tally.executions;
            total.errors += tally.errors;
            total.latencies.extend(tally.latencies);
            if total.first_error.is_none() {
                total.first_error = tally.first_error;
            }
        }
        if let Some(error) = &total.first_error {
            eprintln!("respond: {} wrong answers, the first: {error}", total.errors);
        }
        emit(&json!({
            "scenario": "respond",
            "target": args.url.as_deref().unwrap_or("flowmark"),
            "connections": connections,
            "seconds": round2(elapsed),
            "executions": total.executions,
            "executions_per_s": round2(total.executions as f64 / elapsed),
            "errors": total.errors,
            "latency_ms": latency_json(&mut total.latencies),
            "fsync": fsync.json(),
        }));
    }
    if let Some((server, db)) = own {
        drop(server);
        remove_db(&db);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            parse_url("http://localhost:5678/webhook/lead-score").unwrap(),
            ("127.0.0.1:5678".to_owned(), "/webhook/lead-score".to_owned())
        );
        assert_eq!(parse_url("http://example.com").unwrap(), ("example.com:80".to_owned(), "/".to_owned()));
        assert!(parse_url("https://example.com/").is_err());
    }

    #[test]
    fn the_segment_is_found_wherever_the_answer_puts_it() {
        let flowmark = json!({ "run": 1, "status": "completed", "steps": { "hot": { "set": { "segment": "hot" } } } });
        assert_eq!(segment(&flowmark), Some("hot"));
        assert_eq!(segment(&json!([{ "segment": "cold" }])), Some("cold"));
        assert_eq!(segment(&json!({ "status": "completed" })), None);
    }
}
