//! `flowmark serve`: the durable server on the embedded SQLite store.
//!
//! Opens (or creates) the database, starts the owner thread over the runtime engine, serves
//! HTTP until SIGINT (Ctrl-C) or SIGTERM, then stops taking requests, lets the owner drain what was
//! queued, and exits. `--demo` deploys the blueprints and a few sample contacts and events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use std::io::Write as _;
use std::sync::Arc;

use flowmark_runtime::smtp::{SmtpConnector, SmtpSettings};
use flowmark_runtime::webhook::{
    GONE_ENDPOINTS_IN_MEMORY_MAX, GoneEndpoints, Secret, WebhookConnector, WebhookSettings,
};
use flowmark_runtime::{Connectors, Engine, Limits, LogConnector, Outbound};
use flowmark_server::owner::Command;
use flowmark_server::{Config, Owner, ServerStore, Tenant, Workspaces, router};
use flowmark_sqlite::SqliteStore;
use flowmark_store::Store;
use flowmark_store::WorkspaceName;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The SQLite database file (created when missing).
    #[arg(long, default_value = "flowmark.db")]
    db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Write keys accepted by the Segment-compatible endpoints, besides the stored tokens with
    /// the `ingest` scope (repeat or comma-separate).
    #[arg(long = "write-key", env = "FLOWMARK_WRITE_KEY", value_delimiter = ',')]
    write_keys: Vec<String>,
    /// Bearer tokens accepted everywhere, besides the stored tokens (`flowmark token create`);
    /// repeat or comma-separate.
    #[arg(long = "api-token", env = "FLOWMARK_API_TOKEN", value_delimiter = ',')]
    api_tokens: Vec<String>,
    /// Deploy the blueprints and sample data, and accept the demo write key and API token.
    #[arg(long)]
    demo: bool,
    /// `system` (the default), or `virtual`: for tests and demos, time stands still until
    /// `POST /api/clock/advance` moves it, so a journey of days runs in seconds.
    #[arg(long, default_value = "system", value_parser = ["system", "virtual"])]
    clock: String,
    /// Where the virtual clock starts (RFC 3339; default: the system clock's time at start).
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    clock_start: Option<flowmark_core::Timestamp>,
    /// Append each effect the log connector performs to this file as a JSON line (default:
    /// the structured log).
    #[arg(long, value_name = "FILE")]
    effects_log: Option<PathBuf>,
    /// Effects the connector performs at the same time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    effects_concurrency: u64,
    /// Effects the connector starts per second at most (a burst of one second's worth may go
    /// at once); unlimited when left out. Effects over the rate wait in the outbox.
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    effects_per_second: Option<f64>,
    /// Send email through this SMTP server: `smtp://host:port` (STARTTLS when offered),
    /// `smtp://host:port?tls=required`, `smtps://host:port`, with `user:password@` for
    /// credentials. Without it, email effects go to the log like every other effect.
    #[arg(long, env = "FLOWMARK_SMTP_URL", value_name = "URL")]
    smtp_url: Option<String>,
    /// The sender of email whose step names none.
    #[arg(long, default_value = "Flowmark <flowmark@localhost>")]
    email_from: String,
    /// Leave marketing email's links as written (by default they go through the click
    /// tracker, which records `Email Link Clicked`).
    #[arg(long)]
    no_link_tracking: bool,
    /// Add an open pixel to marketing email (records `Email Opened`; off by default, since
    /// mail clients that load images for privacy make opens unreliable).
    #[arg(long)]
    open_pixel: bool,
    /// Emails sent at the same time (SMTP connections in the pool).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    smtp_concurrency: u64,
    /// Emails started per second at most; unlimited when left out.
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    smtp_per_second: Option<f64>,
    /// Call webhooks for real, signed the Standard Webhooks way with this secret (`whsec_…`;
    /// repeat or comma-separate to rotate: requests carry a signature per secret). Without
    /// it, webhook effects go to the log like every other effect.
    #[arg(long = "webhook-secret", env = "FLOWMARK_WEBHOOK_SECRET", value_delimiter = ',')]
    webhook_secrets: Vec<String>,
    /// Let webhooks reach private, loopback and link-local addresses (refused by default).
    #[arg(long)]
    webhook_allow_private: bool,
    /// Webhook requests in flight at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    webhook_concurrency: u64,
    /// Webhook requests started per second at most; unlimited when left out.
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    webhook_per_second: Option<f64>,
    /// Seconds one attempt at an effect (an email, a webhook call) may take before it counts
    /// as failed and is retried; the peer's slow answer never holds up anything else.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    effect_timeout: u64,
    /// Seconds a client may take to send a request's head, and a keep-alive connection may
    /// stay idle; past it the connection is closed (a slowloris holds nothing longer).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body once its head has arrived; past it
    /// the request is answered `408`.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout: u64,
    /// Accept signed webhooks at `POST /hooks/{source}`, verified with this secret (`whsec_…`;
    /// repeat or comma-separate for several).
    #[arg(long = "inbound-webhook-secret", env = "FLOWMARK_INBOUND_WEBHOOK_SECRET", value_delimiter = ',')]
    inbound_webhook_secrets: Vec<String>,
    /// The address contacts reach this server at, for the unsubscribe links in email
    /// (default: `http://` and the address it listens on).
    #[arg(long, env = "FLOWMARK_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// How logs are written to standard error: `text` for people, `json` (one object per
    /// line) for log collectors. What is logged is set by `FLOWMARK_LOG` (e.g. `debug`,
    /// `info,flowmark::effects=warn`; default `info`).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn parse_secrets(texts: &[String]) -> anyhow::Result<Vec<Secret>> {
    texts
        .iter()
        .map(|text| Secret::parse(text).map_err(|e| anyhow::anyhow!("a webhook secret is not usable: {e}")))
        .collect()
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a rate; give a positive number of effects per second, such as 50")),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWMARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

const DEMO_WRITE_KEY: &str = "demo-write-key";
const DEMO_API_TOKEN: &str = "demo-api-token";
const BLUEPRINTS: [(&str, &str); 4] = [
    ("whitepaper-nurture.yaml", include_str!("../../../blueprints/whitepaper-nurture.yaml")),
    ("blog-post.yaml", include_str!("../../../blueprints/blog-post.yaml")),
    ("lead-routing.yaml", include_str!("../../../blueprints/lead-routing.yaml")),
    ("webinar-follow-up.yaml", include_str!("../../../blueprints/webinar-follow-up.yaml")),
];

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    init_logs(args.log_format);
    // Settings are checked before anything is opened: a bad flag changes nothing on disk.
    let inbound_webhook_secrets = parse_secrets(&args.inbound_webhook_secrets)?;
    let webhook_secrets = parse_secrets(&args.webhook_secrets)?;
    if let Some(url) = &args.smtp_url {
        SmtpConnector::check(url, &args.email_from).context("cannot set up email")?;
    }
    if args.clock == "virtual" {
        let start = args.clock_start.unwrap_or_else(flowmark_server::clock::now);
        flowmark_server::clock::use_virtual(start);
        tracing::warn!(at = %start.rfc3339(), "on a virtual clock: time moves only through POST /api/clock/advance");
    } else if args.clock_start.is_some() {
        anyhow::bail!("`--clock-start` needs `--clock virtual`");
    }
    let names = flowmark_sqlite::workspace_names(&args.db)
        .with_context(|| format!("cannot list the workspaces beside {}", args.db.display()))?;
    let mut config = Config {
        write_keys: args.write_keys.clone(),
        admin_tokens: args.api_tokens.clone(),
        inbound_webhook_secrets,
        secure_cookies: args.public_url.as_deref().is_some_and(|url| url.starts_with("https://")),
        body_read_timeout: Some(std::time::Duration::from_secs(args.body_timeout)),
    };
    if args.demo {
        config.write_keys.push(DEMO_WRITE_KEY.to_owned());
        config.admin_tokens.push(DEMO_API_TOKEN.to_owned());
    }
    if config.write_keys.is_empty() && config.admin_tokens.is_empty() {
        tracing::warn!(
            "no --write-key or --api-token given: only tokens made with `flowmark token create` are accepted"
        );
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&args.bind))
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr()?;
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("http://{address}"));
    let setup = Arc::new(Setup { args: args.clone(), webhook_secrets, public_url, address });
    let threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();

    // The one place that picks the backend: everything past it talks to the `Store` trait.
    let store =
        SqliteStore::open(&args.db).with_context(|| format!("cannot open the database {}", args.db.display()))?;
    let demo = args.demo;
    let (default, thread) = setup.start(&WorkspaceName::default_workspace(), Box::new(store), |engine, now| {
        if demo {
            for (name, source) in BLUEPRINTS {
                engine
                    .deploy(name, source, now)
                    .map_err(|e| anyhow::anyhow!("the blueprint {name} does not deploy: {e}"))?;
            }
            seed_team(engine, now)?;
        }
        Ok(())
    })?;
    if demo {
        seed_demo(&default.owner);
    }
    lock(&threads).push(thread);
    let workspaces = Workspaces::single(default);
    for name in names.iter().filter(|name| !name.is_default()) {
        let store = flowmark_sqlite::open_workspace(&args.db, name)
            .with_context(|| format!("cannot open the database of workspace `{name}`"))?;
        let (tenant, thread) = setup.start(name, Box::new(store), |_, _| Ok(()))?;
        lock(&threads).push(thread);
        workspaces.insert(name.clone(), tenant);
    }
    // A workspace made while the server runs (`POST /api/workspaces`) gets a database and an
    // owner thread like the ones above.
    let opener = {
        let (setup, threads) = (setup.clone(), threads.clone());
        Arc::new(move |name: &WorkspaceName| -> Result<Tenant, String> {
            let db = &setup.args.db;
            let store = match flowmark_sqlite::create_workspace(db, name) {
                Ok(Some(store)) => store,
                Ok(None) => flowmark_sqlite::open_workspace(db, name).map_err(|e| e.to_string())?,
                Err(error) => return Err(error.to_string()),
            };
            let (tenant, thread) = setup.start(name, Box::new(store), |_, _| Ok(())).map_err(|e| format!("{e:#}"))?;
            lock(&threads).push(thread);
            tracing::info!(workspace = %name, "workspace created");
            Ok(tenant)
        })
    };
    let workspaces = workspaces.with_opener(opener);
    let served = workspaces.names().len();
    runtime.block_on(async {
        // What a person starting the server reads. Whoever started it may have stopped reading
        // standard output (a supervisor, a test that read the first line): the server goes on.
        let mut banner = format!("flowmark: listening on http://{address}\n");
        if served > 1 {
            banner.push_str(&format!("flowmark: {served} workspaces\n"));
        }
        if args.demo {
            banner.push_str(&format!(
                "flowmark: demo write key `{DEMO_WRITE_KEY}`, API token `{DEMO_API_TOKEN}`\n\
                 flowmark: web UI at http://{address}/ui — sign in as sam@example.com (writer), dana@example.com \
                 (editor), sia@example.com (SEO) or lee@example.com (lead), password `{DEMO_PASSWORD}`\n"
            ));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
        drop(stdout);
        let header_timeout = std::time::Duration::from_secs(args.header_timeout);
        flowmark_server::listen::serve(listener, router(workspaces, config), header_timeout, async {
            stop_signal().await;
            tracing::info!("stopping: no new requests; draining what is queued");
        })
        .await;
        anyhow::Ok(())
    })?;
    drop(runtime);
    drop(setup);
    let threads = std::mem::take(&mut *lock(&threads));
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("an owner thread panicked"))?;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What every workspace of a server is started with: the flags, and where the server is
/// reached.
struct Setup {
    args: Args,
    /// `--webhook-secret`, parsed once.
    webhook_secrets: Vec<Secret>,
    public_url: String,
    address: std::net::SocketAddr,
}

impl Setup {
    /// Starts workspace `name` on `store`: its engine (with `prepare` run on it first), its
    /// signing secret, its connectors and its owner thread.
    fn start(
        &self,
        name: &WorkspaceName,
        store: ServerStore,
        prepare: impl FnOnce(&mut Engine<ServerStore>, flowmark_core::Timestamp) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Tenant, std::thread::JoinHandle<()>)> {
        let args = &self.args;
        let mut engine = Engine::new(store, serde_json::json!({})).context("cannot start the engine")?;
        let started = flowmark_server::clock::now();
        engine.sync_all_schedules(started).context("cannot arm the workflows' schedules")?;
        // The secret unsubscribe links are signed with: made on first start, kept in the database.
        let secret = {
            let fresh =
                flowmark_server::auth::new_token().map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
            engine
                .store_mut()
                .put_setting_once(flowmark_runtime::unsubscribe::SECRET_SETTING, &fresh)
                .context("cannot store the unsubscribe secret")?
                .into_bytes()
        };
        prepare(&mut engine, started)?;
        let connector = match &args.effects_log {
            None => LogConnector::default(),
            Some(path) => LogConnector::to_file(path)
                .with_context(|| format!("cannot open the effects log {}", path.display()))?,
        };
        let timeout = flowmark_core::Duration(args.effect_timeout * 1000);
        let limits = |concurrency: u64, per_second: Option<f64>| Limits {
            concurrency: concurrency as usize,
            per_second,
            burst: per_second.map_or(1, |rate| rate.ceil() as u32),
            timeout,
        };
        // The workspace's links carry its prefix, so they come back to it.
        let public_url = format!("{}{}", self.public_url, flowmark_server::workspaces::link_prefix(name));
        engine.set_public_url(&public_url);
        engine.set_own_addresses(flowmark_runtime::own_address::OwnAddresses::new(&self.public_url, self.address));
        // Webhook URLs that answered `410 Gone` stay disabled across restarts: every webhook
        // connector shares the stored record, the dispatcher stores what they add.
        let gone = GoneEndpoints::loaded(
            engine
                .store()
                .gone_endpoints(GONE_ENDPOINTS_IN_MEMORY_MAX)
                .context("cannot read the disabled webhook URLs")?,
        );
        let mut connectors =
            Connectors::with_limits(Arc::new(connector), limits(args.effects_concurrency, args.effects_per_second))
                .with_gone_endpoints(gone.clone());
        if let Some(url) = &args.smtp_url {
            let settings = SmtpSettings {
                url: url.clone(),
                from: args.email_from.clone(),
                public_url: public_url.clone(),
                secret: secret.clone(),
                track_links: !args.no_link_tracking,
                open_pixel: args.open_pixel,
            };
            let smtp = SmtpConnector::new(settings).context("cannot set up email")?;
            connectors = connectors.route(
                "smtp",
                &[Outbound::Email],
                Arc::new(smtp),
                limits(args.smtp_concurrency, args.smtp_per_second),
            );
        }
        let webhook_secrets = self.webhook_secrets.clone();
        // People's chat notifications: posts to Slack-compatible incoming webhooks, signed like
        // every outbound webhook when secrets are set.
        let chat = WebhookSettings { secrets: webhook_secrets.clone(), allow_private: args.webhook_allow_private };
        connectors = connectors.route(
            "chat",
            &[Outbound::Chat],
            Arc::new(WebhookConnector::new(chat).with_gone_endpoints(gone.clone())),
            limits(args.webhook_concurrency, args.webhook_per_second),
        );
        if !webhook_secrets.is_empty() {
            let settings = WebhookSettings { secrets: webhook_secrets, allow_private: args.webhook_allow_private };
            connectors = connectors.route(
                "webhooks",
                &[Outbound::Webhook],
                Arc::new(WebhookConnector::new(settings).with_gone_endpoints(gone.clone())),
                limits(args.webhook_concurrency, args.webhook_per_second),
            );
        }
        let (owner, thread) = Owner::start(engine, connectors);
        Ok((Tenant { owner, secret: Some(secret), gone }, thread))
    }
}

/// The demo team's password (every demo account has it).
const DEMO_PASSWORD: &str = "flowmark-demo";

/// The demo team: a directory, an account per person, and a blog post on its way through the
/// blog-post workflow (started once; a restart keeps the run it has).
fn seed_team(engine: &mut Engine<ServerStore>, now: flowmark_core::Timestamp) -> anyhow::Result<()> {
    let people = [
        ("sam@example.com", "Sam (writer)"),
        ("sia@example.com", "Sia (SEO)"),
        ("omar@example.com", "Omar (SEO)"),
        ("dana@example.com", "Dana (editor)"),
        ("bea@example.com", "Bea (brand)"),
        ("lee@example.com", "Lee (lead)"),
    ];
    let directory = serde_json::json!({
        "people": people.iter().map(|(email, name)| serde_json::json!({ "email": email, "name": name })).collect::<Vec<_>>(),
        "teams": { "content": ["sam@example.com"], "seo": ["sia@example.com", "omar@example.com"], "brand": ["bea@example.com"] },
    });
    let source = serde_json::from_value(directory).context("the demo directory")?;
    engine
        .set_directory(source, now)
        .context("cannot store the demo directory")?
        .map_err(|errors| anyhow::anyhow!("the demo directory is invalid: {}", errors.join("; ")))?;
    let hash = flowmark_server::auth::hash_password(DEMO_PASSWORD).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (email, _) in people {
        engine.store_mut().put_account(email, &hash, now).context("cannot store a demo account")?;
    }
    let publish_at =
        (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let post = serde_json::json!({ "title": "Spring launch: ten workflow tips", "publish_at": publish_at });
    if engine.store().latest_run("blog-post", "demo-post-1").context("cannot read the demo run")?.is_none() {
        engine.store_mut().upsert_contact("demo-post-1", &post, None, now).context("cannot store the demo post")?;
        engine.start("blog-post", "demo-post-1", now).context("cannot start the demo post's workflow")?;
    }
    Ok(())
}

/// A few contacts download the whitepaper, so runs, emails and timers exist at once.
fn seed_demo(owner: &flowmark_server::Owner) {
    let now = flowmark_server::clock::now();
    for (index, name) in ["Ada", "Grace", "Linus"].iter().enumerate() {
        let id = format!("demo-contact-{}", index + 1);
        let traits = serde_json::json!({ "first_name": name, "email": format!("{}@example.com", name.to_lowercase()), "scores": { "engagement": 20 * index } });
        let payload = serde_json::json!({ "type": "track", "event": "Whitepaper Downloaded", "userId": id, "properties": { "topic": "automation" } });
        let event = flowmark_core::engine::Event {
            id: format!("demo-download-{id}"),
            name: "Whitepaper Downloaded".to_owned(),
            at: now,
            payload: payload.into(),
        };
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let message = flowmark_runtime::Incoming::with_traits(&id, event, traits, None);
        owner.send(Command::Ingest { messages: vec![message], reply });
    }
}

/// An RFC 3339 time, as a flag.
fn rfc3339(text: &str) -> Result<flowmark_core::Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| flowmark_core::Timestamp::from_chrono(&t))
        .map_err(|_| format!("`{text}` is not an RFC 3339 time like 2026-12-10T09:00:00Z"))
}
