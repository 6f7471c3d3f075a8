//! `flowmark bench ingest`: Segment ingestion over HTTP, from this process against a
//! `flowmark serve` child process on a fresh database.
//!
//! Each connection is a keep-alive HTTP/1.1 connection sending one request at a time and
//! waiting for the answer (as a Segment library's flush does); an answer is `200` only once
//! the events are durable. The connections share a few event-driven client threads
//! (`--client-threads`, as `wrk -t` does): a thread per connection, 256 of them, took the two
//! cores' scheduler away from the server's writer and syncer threads (measured on a 7 ms disk:
//! `/v1/track` at 64 connections 0.56 of the ceiling with a thread each, 0.59–0.63 with one
//! client thread). Most events start nothing (`Page Viewed`); one in a hundred is a whitepaper
//! download that starts a nurture run.
//!
//! Each round also reads the server's `/metrics` before and after, to report how its syncer
//! shared syncs (groups committed and requests answered per sync, and how long a sync took),
//! and both processes' CPU time, to report what a request costs the cores and the most of the
//! fsync ceiling that cost allows (`ratio_bound`, see `cpu::ratio_bound`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::json;

use super::cpu::{CpuTimes, Spent, ratio_bound};
use super::{Fsync, emit, fresh_db, latency_json, remove_db, round2};

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
    /// Threads the client's connections share (event-driven, as `wrk -t` does): a thread per
    /// connection would compete with the server's own threads for the same two cores.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Also call a webhook for every run started, and measure each level twice, each on a
    /// fresh server: the webhook's receiver answering at once, then taking `--peer-delay-ms`
    /// per call. The ratio of the two throughputs is what a slow peer costs ingestion.
    #[arg(long)]
    slow_peer: bool,
    /// How long the slow receiver takes per call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    peer_delay_ms: u64,
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
    pub(super) child: Child,
    pub(super) address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_server(db: &Path) -> anyhow::Result<Server> {
    start_server_with(db, &[])
}

/// [`start_server`] with more `serve` arguments.
fn start_server_with(db: &Path, extra: &[&str]) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("cannot find the flowmark executable")?;
    let mut child = Command::new(exe)
        .args(["serve", "--bind", "127.0.0.1:0", "--write-key", WRITE_KEY, "--api-token", API_TOKEN, "--db"])
        .arg(db)
        .args(extra)
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

/// The server's counters of deferred durability (`/metrics`): how its syncer shared syncs.
struct Syncs {
    groups: u64,
    syncs: u64,
    seconds: f64,
}

impl Syncs {
    fn read(address: &str) -> anyhow::Result<Syncs> {
        let text = metrics(address)?;
        Ok(Syncs {
            groups: metric(&text, "flowmark_commit_groups_deferred_total") as u64,
            syncs: metric(&text, "flowmark_wal_syncs_total") as u64,
            seconds: metric(&text, "flowmark_wal_sync_seconds_total"),
        })
    }

    fn since(&self, before: &Syncs) -> Syncs {
        Syncs {
            groups: self.groups - before.groups,
            syncs: self.syncs - before.syncs,
            seconds: self.seconds - before.seconds,
        }
    }

    /// Groups and syncs in the round; with `requests`, how many requests one sync answered
    /// (an estimate: every request of the round is counted, deferred or not).
    fn json(&self, requests: u64) -> serde_json::Value {
        let per_sync = |n: u64| if self.syncs == 0 { 0.0 } else { round2(n as f64 / self.syncs as f64) };
        json!({
            "groups": self.groups,
            "syncs": self.syncs,
            "sync_ms": if self.syncs == 0 { 0.0 } else { round2(self.seconds * 1000.0 / self.syncs as f64) },
            "groups_per_sync": per_sync(self.groups),
            "requests_per_sync": per_sync(requests),
        })
    }
}

/// One event's JSON; `n` makes it unique.
fn event(thread: usize, n: u64) -> String {
    let user = format!("u-{thread}-{}", n % 1000);
    if n.is_multiple_of(100) {
        format!(
            r#"{{"type":"track","userId":"{user}","event":"Whitepaper Downloaded","messageId":"{thread}-{n}","properties":{{"topic":"automation"}}}}"#
        )
    } else {
        format!(
            r#"{{"type":"track","userId":"{user}","event":"Page Viewed","messageId":"{thread}-{n}","properties":{{"path":"/pricing","referrer":"https://search.example.com/?q=workflows"}},"context":{{"library":{{"name":"analytics-python","version":"2.4.0"}}}}}}"#
        )
    }
}

/// What each request carries.
#[derive(Clone, Copy)]
struct Shape {
    mode: Mode,
    batch_size: usize,
}

impl Shape {
    /// The path, body and event count of connection `thread`'s next request.
    fn next(&self, thread: usize, n: &mut u64) -> (&'static str, String, u64) {
        match self.mode {
            Mode::Track => {
                *n += 1;
                ("/v1/track", event(thread, *n), 1)
            }
            Mode::Batch => {
                let mut body = String::from(r#"{"batch":["#);
                for i in 0..self.batch_size {
                    *n += 1;
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&event(thread, *n));
                }
                body.push_str("]}");
                ("/v1/batch", body, self.batch_size as u64)
            }
        }
    }
}

/// Runs `connections` keep-alive connections for `seconds` on `threads` event-driven client
/// threads, each connection sending one request at a time; returns each one's tally and the
/// seconds they ran.
fn run_async_clients(
    address: &str,
    auth: &str,
    connections: usize,
    round: usize,
    seconds: u64,
    threads: usize,
    shape: Shape,
) -> anyhow::Result<(Vec<Tally>, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    runtime.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|index| {
                let (address, auth, stop) = (address.to_owned(), auth.to_owned(), stop.clone());
                tokio::spawn(async move { client(&address, &auth, round * 100_000 + index, shape, &stop).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut tallies = Vec::with_capacity(connections);
        for task in tasks {
            tallies.push(task.await.context("a client task panicked")??);
        }
        Ok((tallies, started.elapsed().as_secs_f64()))
    })
}

/// One connection: sends requests until `stop`, each written at once (head and body in one
/// write) and read back before the next.
async fn client(
    address: &str,
    auth: &str,
    thread: usize,
    shape: Shape,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Tally> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut tally = Tally::default();
    let mut n = 0u64;
    let mut request = Vec::new();
    let mut buffer = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (path, body, count) = shape.next(thread, &mut n);
        request.clear();
        write!(
            request,
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        request.extend_from_slice(body.as_bytes());
        let sent = Instant::now();
        stream.write_all(&request).await?;
        // The answer: a head, then `Content-Length` bytes of body.
        let status = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buffer[..end]).context("a head that is not text")?;
                let status: u16 = head.get(9..12).context("no status line")?.parse()?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                    })
                    .context("an answer without Content-Length")?;
                let whole = end + 4 + length;
                while buffer.len() < whole {
                    if stream.read_buf(&mut buffer).await? == 0 {
                        bail!("the server closed the connection");
                    }
                }
                buffer.drain(..whole);
                break status;
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                bail!("the server closed the connection");
            }
        };
        tally.latencies.push(sent.elapsed());
        tally.requests += 1;
        match status {
            200 => tally.events += count,
            429 => tally.rejected += 1,
            _ => tally.errors += 1,
        }
    }
    Ok(tally)
}

/// CPU per request over a round: the server (its threads by name, and its time in the
/// kernel), the client (and its time in the kernel), and what lies on a request's path (all
/// of it but the server's background checkpoints), in microseconds.
struct CpuPerRequest {
    on_path_us: f64,
    json: serde_json::Value,
}

fn cpu_json(server: &CpuTimes, client: &CpuTimes, requests: u64) -> Option<CpuPerRequest> {
    if requests == 0 {
        return None;
    }
    let us = |seconds: f64| round2(seconds * 1e6 / requests as f64);
    let spent = |spent: &Spent| json!({ "all": us(spent.total()), "kernel": us(spent.system) });
    // The store's `flowmark-checkpoint` thread, as `/proc` names it (15 bytes at most).
    let checkpoints = server.by_thread.get("flowmark-checkp").map_or(0.0, |spent| spent.total());
    let on_path = server.process.total() - checkpoints + client.process.total();
    let threads: serde_json::Map<String, serde_json::Value> =
        server.by_thread.iter().map(|(name, thread)| (name.clone(), spent(thread))).collect();
    Some(CpuPerRequest {
        on_path_us: on_path * 1e6 / requests as f64,
        json: json!({
            "server": spent(&server.process),
            "server_threads": threads,
            "client": spent(&client.process),
            "on_path": us(on_path),
        }),
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    events: u64,
    rejected: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// The webhook secret of `--slow-peer` runs (any `whsec_` secret does: nothing checks it).
const PEER_SECRET: &str = "whsec_YmVuY2gtc2xvdy1wZWVyLXNlY3JldA==";

/// The workflow `--slow-peer` deploys beside the nurture: a webhook call for every download
/// (a run each time, so the line for the slow peer grows all through the measurement).
fn peer_workflow(address: &str) -> String {
    format!(
        "id: bench-peer\nsubject: contact\ntrigger: {{ event: Whitepaper Downloaded }}\nentry: {{ reentry: always }}\nsteps:\n  - id: tell\n    action:\n      webhook: {{ url: \"http://{address}/leads\", body: {{ source: bench, topic: \"{{{{ event.properties.topic }}}}\" }} }}\n"
    )
}

/// The benchmark's webhook receiver: a thread per connection, each request answered `200`
/// after `delay_ms`; counts the calls it answered.
struct Peer {
    address: String,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Peer {
    fn start(delay_ms: u64) -> anyhow::Result<Peer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = answered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, delay_ms, &count);
                });
            }
        });
        Ok(Peer { address, answered })
    }
}

/// Answers the requests of one keep-alive connection until it closes.
fn answer(stream: TcpStream, delay_ms: u64, answered: &std::sync::atomic::AtomicU64) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        answered.fetch_add(1, Ordering::Relaxed);
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}

/// The server's `/metrics` page.
fn metrics(address: &str) -> anyhow::Result<String> {
    let (status, body) = Connection::open(address)?.request("GET", "/metrics", &format!("Bearer {API_TOKEN}"), b"")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One unlabelled value of a `/metrics` page (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn deploy(address: &str, workflow: &str) -> anyhow::Result<()> {
    let (status, body) = Connection::open(address)?.request(
        "POST",
        "/api/workflows",
        &format!("Bearer {API_TOKEN}"),
        workflow.as_bytes(),
    )?;
    if status != 201 {
        bail!("a workflow did not deploy: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

const NURTURE: &str = include_str!("../../../../blueprints/whitepaper-nurture.yaml");

pub fn run(args: &Args, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    if args.slow_peer {
        return run_with_peers(args, dir, fsync);
    }
    let db = fresh_db(dir, "ingest");
    let server = start_server(&db)?;
    deploy(&server.address, NURTURE)?;
    for (round, &connections) in args.connections.iter().enumerate() {
        emit(&measure(args, &server, connections, round, fsync)?);
    }
    drop(server);
    remove_db(&db);
    Ok(())
}

/// `--slow-peer`: each level against a receiver that answers at once, then one that takes
/// `--peer-delay-ms`, each on a fresh server and database; then the ratio.
fn run_with_peers(args: &Args, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    for (round, &connections) in args.connections.iter().enumerate() {
        let mut throughput = Vec::new();
        for delay_ms in [0, args.peer_delay_ms] {
            let peer = Peer::start(delay_ms)?;
            let db = fresh_db(dir, "ingest-peer");
            let server = start_server_with(&db, &["--webhook-secret", PEER_SECRET, "--webhook-allow-private"])?;
            deploy(&server.address, NURTURE)?;
            deploy(&server.address, &peer_workflow(&peer.address))?;
            let mut figures = measure(args, &server, connections, round, fsync)?;
            let requests_per_s = figures["requests_per_s"].as_f64().unwrap_or(0.0);
            figures["peer_delay_ms"] = json!(delay_ms);
            figures["webhooks_answered"] = json!(peer.answered.load(Ordering::Relaxed));
            let after = metrics(&server.address)?;
            figures["outbox_depth_after"] = json!(metric(&after, "flowmark_outbox_depth"));
            figures["effects_in_flight_after"] = json!(metric(&after, "flowmark_effects_in_flight"));
            emit(&figures);
            throughput.push(requests_per_s);
            drop(server);
            remove_db(&db);
        }
        emit(&json!({
            "scenario": "ingest-slow-peer",
            "connections": connections,
            "peer_delay_ms": args.peer_delay_ms,
            "requests_per_s": { "peer_at_once": throughput[0], "peer_slow": throughput[1] },
            "slow_to_normal": if throughput[0] > 0.0 { round2(throughput[1] / throughput[0]) } else { 0.0 },
        }));
    }
    Ok(())
}

/// One level: `connections` clients for `--seconds` against `server`, as one JSON object.
fn measure(
    args: &Args,
    server: &Server,
    connections: usize,
    round: usize,
    fsync: &Fsync,
) -> anyhow::Result<serde_json::Value> {
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:")));
    eprintln!("ingest: {connections} connections for {} s …", args.seconds);
    let before = Syncs::read(&server.address)?;
    let shape = Shape { mode: args.mode, batch_size: args.batch_size };
    let cpu_before = CpuTimes::sample_both(server.child.id());
    let (tallies, elapsed) =
        run_async_clients(&server.address, &auth, connections, round, args.seconds, args.client_threads, shape)?;
    let cpu_after = CpuTimes::sample_both(server.child.id());
    let mut total = Tally::default();
    for tally in tallies {
        total.requests += tally.requests;
        total.events += tally.events;
        total.rejected += tally.rejected;
        total.errors += tally.errors;
        total.latencies.extend(tally.latencies);
    }
    let syncs = Syncs::read(&server.address)?.since(&before);
    let requests_per_s = total.requests as f64 / elapsed;
    // One request per connection per fsync is the most a server that syncs each request
    // alone could do; group commit is how Flowmark gets near or past it.
    let ceiling = connections as f64 / (fsync.p50_ms / 1000.0);
    let cpu = cpu_before.zip(cpu_after).and_then(|((server_before, client_before), (server_after, client_after))| {
        cpu_json(&server_after.since(&server_before), &client_after.since(&client_before), total.requests)
    });
    // The bound: an estimate, from this CPU per request, of the most any schedule of syncs
    // could reach. The checkpointer's time is left out, as it runs beside the requests.
    let bound = cpu.as_ref().map(|cpu| {
        let sync_s = if syncs.syncs > 0 { syncs.seconds / syncs.syncs as f64 } else { fsync.p50_ms / 1000.0 };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        round2(ratio_bound(connections, fsync.p50_ms / 1000.0, sync_s, cpu.on_path_us / 1e6, cores))
    });
    Ok(json!({
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
        "ratio_bound": bound,
        "cpu_per_request_us": cpu.map(|cpu| cpu.json),
        "deferred": syncs.json(total.requests),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_answers_every_request_of_a_keep_alive_connection_after_its_delay() {
        let peer = Peer::start(20).unwrap();
        let mut connection = Connection::open(&peer.address).unwrap();
        let started = Instant::now();
        for _ in 0..2 {
            let (status, _) = connection.request("POST", "/leads", "", br#"{"user":"u1"}"#).unwrap();
            assert_eq!(status, 200);
        }
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(peer.answered.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn metrics_are_read_by_exact_name() {
        let text = "flowmark_outbox_depth_x 9\nflowmark_outbox_depth 12\n";
        assert_eq!(metric(text, "flowmark_outbox_depth"), 12.0);
        assert_eq!(metric(text, "flowmark_effects_in_flight"), 0.0);
    }
}
