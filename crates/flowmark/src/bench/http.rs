//! `flowmark bench ingest`: Segment ingestion over HTTP, from client threads in this process
//! against a `flowmark serve` child process on a fresh database.
//!
//! Each connection is a keep-alive HTTP/1.1 connection on its own thread, sending one request
//! at a time and waiting for the answer (as a Segment library's flush does); an answer is
//! `200` only once the events are durable. Most events start nothing (`Page Viewed`); one in
//! a hundred is a whitepaper download that starts a nurture run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::json;

use super::{Fsync, emit, fresh_db, latency_json, remove_db, round2, run_clients};

#[derive(clap::Args)]
pub struct Args {
    /// `track`: one event per request; `batch`: `--batch-size` events per `/v1/batch`.
    #[arg(long, value_enum, default_value = "track")]
    mode: Mode,
    /// Concurrent connections; one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    connections: Vec<usize>,
    /// How long each measurement sends.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per batch in `batch` mode.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Track,
    Batch,
}

const WRITE_KEY: &str = "bench-write-key";
pub(super) const API_TOKEN: &str = "bench-api-token";

/// A `flowmark serve` child process, stopped (SIGKILL) when dropped.
pub(super) struct Server {
    child: Child,
    pub(super) address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_server(db: &Path) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("cannot find the flowmark executable")?;
    let mut child = Command::new(exe)
        .args(["serve", "--bind", "127.0.0.1:0", "--write-key", WRITE_KEY, "--api-token", API_TOKEN, "--db"])
        .arg(db)
        .env("FLOWMARK_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start flowmark serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let Some(address) = line.trim().rsplit("http://").next().filter(|a| a.starts_with("127.0.0.1:")) else {
        bail!("the server did not say where it listens: {line:?}");
    };
    Ok(Server { address: address.to_owned(), child })
}

/// A response's headers, names lower-cased, in order.
pub(super) type Headers = Vec<(String, String)>;

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
pub(super) struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Connection {
    pub(super) fn open(address: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Connection { reader: BufReader::new(stream.try_clone()?), writer: stream, host: address.to_owned() })
    }

    /// Sends a JSON request and returns the status and body.
    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let (status, _, body) =
            self.send(method, path, &[("Authorization", auth), ("Content-Type", "application/json")], body)?;
        Ok((status, body))
    }

    /// Sends a request with these headers; returns the status, the response's headers
    /// (names lower-cased) and its body.
    pub(super) fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Headers, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line.get(9..12).context("no status line")?.parse()?;
        let mut length = 0usize;
        let mut chunked = false;
        let mut answer = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
                if name.eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
                answer.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        if !chunked {
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            return Ok((status, answer, body));
        }
        // Other tools' servers (`bench respond --url`) may answer in chunks.
        let mut body = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
            let start = body.len();
            body.resize(start + size + 2, 0);
            self.reader.read_exact(&mut body[start..])?;
            body.truncate(start + size);
            if size == 0 {
                // Trailers, if any, end with an empty line; the 0-size chunk's CRLF was read.
                return Ok((status, answer, body));
            }
        }
    }
}

/// One event's JSON; `n` makes it unique.
fn event(thread: usize, n: u64) -> serde_json::Value {
    let user = format!("u-{thread}-{}", n % 1000);
    if n.is_multiple_of(100) {
        json!({ "type": "track", "userId": user, "event": "Whitepaper Downloaded", "messageId": format!("{thread}-{n}"),
                "properties": { "topic": "automation" } })
    } else {
        json!({ "type": "track", "userId": user, "event": "Page Viewed", "messageId": format!("{thread}-{n}"),
                "properties": { "path": "/pricing", "referrer": "https://search.example.com/?q=workflows" },
                "context": { "library": { "name": "analytics-python", "version": "2.4.0" } } })
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    events: u64,
    rejected: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

pub fn run(args: &Args, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    let db = fresh_db(dir, "ingest");
    let server = start_server(&db)?;
    let blueprint = include_str!("../../../../blueprints/whitepaper-nurture.yaml");
    let (status, _) = Connection::open(&server.address)?.request(
        "POST",
        "/api/workflows",
        &format!("Bearer {API_TOKEN}"),
        blueprint.as_bytes(),
    )?;
    if status != 201 {
        bail!("the blueprint did not deploy: {status}");
    }
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:")));
    for (round, &connections) in args.connections.iter().enumerate() {
        eprintln!("ingest: {connections} connections for {} s …", args.seconds);
        let (address, auth) = (server.address.clone(), auth.clone());
        let (mode, batch_size) = (args.mode, args.batch_size);
        let (tallies, elapsed) = run_clients(connections, round, args.seconds, move |thread, stop| {
            let mut connection = Connection::open(&address)?;
            let mut tally = Tally::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (path, body, count) = match mode {
                    Mode::Track => {
                        n += 1;
                        ("/v1/track", event(thread, n).to_string(), 1)
                    }
                    Mode::Batch => {
                        let batch: Vec<_> = (0..batch_size)
                            .map(|_| {
                                n += 1;
                                event(thread, n)
                            })
                            .collect();
                        ("/v1/batch", json!({ "batch": batch }).to_string(), batch_size as u64)
                    }
                };
                let sent = Instant::now();
                let (status, _) = connection.request("POST", path, &auth, body.as_bytes())?;
                tally.latencies.push(sent.elapsed());
                tally.requests += 1;
                match status {
                    200 => tally.events += count,
                    429 => tally.rejected += 1,
                    _ => tally.errors += 1,
                }
            }
            Ok(tally)
        })?;
        let mut total = Tally::default();
        for tally in tallies {
            total.requests += tally.requests;
            total.events += tally.events;
            total.rejected += tally.rejected;
            total.errors += tally.errors;
            total.latencies.extend(tally.latencies);
        }
        let requests_per_s = total.requests as f64 / elapsed;
        // One request per connection per fsync is the most a server that syncs each request
        // alone could do; group commit is how Flowmark gets near or past it.
        let ceiling = connections as f64 / (fsync.p50_ms / 1000.0);
        emit(&json!({
            "scenario": "ingest",
            "mode": match args.mode { Mode::Track => "track", Mode::Batch => "batch" },
            "connections": connections,
            "batch_size": if args.mode == Mode::Batch { Some(args.batch_size) } else { None },
            "seconds": round2(elapsed),
            "requests": total.requests,
            "events": total.events,
            "events_per_s": (total.events as f64 / elapsed).round(),
            "requests_per_s": requests_per_s.round(),
            "rejected_429": total.rejected,
            "errors": total.errors,
            "latency_ms": latency_json(&mut total.latencies),
            "fsync": fsync.json(),
            "fsync_ceiling_requests_per_s": ceiling.round(),
            "ratio_to_ceiling": round2(requests_per_s / ceiling),
        }));
    }
    drop(server);
    remove_db(&db);
    Ok(())
}
