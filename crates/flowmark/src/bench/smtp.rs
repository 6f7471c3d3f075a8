//! `flowmark bench smtp`: the SMTP connector sending to a local
//! SMTP sink in this process, at several concurrencies: how many messages per second one
//! Flowmark pushes into an MTA that answers at once.
//!
//! The sink speaks just enough SMTP (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to accept
//! every message and count it; it is the benchmark's peer, not a product feature.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flowmark_core::Timestamp;
use flowmark_core::render::Message;
use flowmark_runtime::smtp::{SmtpConnector, SmtpSettings};
use flowmark_runtime::{Connector, Job, Outcome};
use serde_json::json;

use super::{emit, round2};

#[derive(clap::Args)]
pub struct SmtpArgs {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Messages in flight at once; one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
}

/// Accepts SMTP sessions on `listener` forever, counting the messages it takes.
pub fn sink(listener: TcpListener, received: Arc<AtomicUsize>) {
    for stream in listener.incoming().flatten() {
        let received = received.clone();
        std::thread::spawn(move || {
            let _ = session(stream, &received);
        });
    }
}

fn session(stream: TcpStream, received: &AtomicUsize) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 sink ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match command.as_str() {
            "EHLO" | "HELO" => writer.write_all(b"250-sink\r\n250 8BITMIME\r\n")?,
            "DATA" => {
                writer.write_all(b"354 go on\r\n")?;
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                writer.write_all(b"250 accepted\r\n")?;
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => writer.write_all(b"250 ok\r\n")?,
        }
    }
}

/// The SMTP connector the benchmarks use: to the sink at `port`, links tracked, no pixel.
pub fn connector(port: u16) -> anyhow::Result<SmtpConnector> {
    Ok(SmtpConnector::new(SmtpSettings {
        url: format!("smtp://127.0.0.1:{port}"),
        from: "Flowmark <news@example.com>".to_owned(),
        public_url: "https://flowmark.example.com".to_owned(),
        secret: b"bench".to_vec(),
        track_links: true,
        open_pixel: false,
    })?)
}

pub fn run(args: &SmtpArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    std::thread::spawn(move || sink(listener, counter));
    let message = Message::Email {
        to: Some("ada@example.com".to_owned()),
        template: None,
        subject: Some("Your guide, Ada".to_owned()),
        html: Some("<p>Hi Ada, here is <a href='https://example.com/guide'>your guide</a>.</p>".to_owned()),
        text: Some("Hi Ada, here is your guide: https://example.com/guide".to_owned()),
        from: None,
        transactional: false,
    };
    let effect = flowmark_store::OutboxEffect::Run(flowmark_core::engine::EffectKind::SendMessage {
        channel: flowmark_core::model::Channel::Email,
        transactional: false,
        context: Default::default(),
    });
    for &concurrency in &args.concurrency {
        let connector = connector(port)?;
        let before = received.load(Ordering::Relaxed);
        let next = AtomicUsize::new(0);
        let failures = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1) {
                scope.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= args.messages {
                            return;
                        }
                        let key = format!("bench-{n}");
                        let job = Job {
                            key: &key,
                            effect: &effect,
                            message: Some(&message),
                            subject_id: "ada",
                            attempt: 1,
                            now: Timestamp(0),
                            guard: None,
                        };
                        if !matches!(connector.perform(&job), Outcome::Done { .. }) {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        emit(&json!({
            "scenario": "smtp",
            "concurrency": concurrency,
            "messages": args.messages,
            "received_by_sink": received.load(Ordering::Relaxed) - before,
            "failures": failures.load(Ordering::Relaxed),
            "seconds": round2(seconds),
            "messages_per_s": (args.messages as f64 / seconds).round(),
        }));
    }
    Ok(())
}
