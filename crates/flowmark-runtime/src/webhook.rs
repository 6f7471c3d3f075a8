//! Webhooks the Standard Webhooks way (standardwebhooks.com), out and in.
//!
//! Out: `WebhookConnector` performs webhook calls (`Outbound::Webhook`, and chat posts) with
//! `webhook-id` (the effect's key, the same on every retry), `webhook-timestamp` (Unix
//! seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per active secret, so a secret can be
//! rotated without a gap). Secrets are `whsec_<base64>`. It retries on the spec's schedule
//! (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), honours `Retry-After` on 429 and 503, treats
//! `410 Gone` as "this endpoint is gone" (the URL is disabled until someone enables it again:
//! [`GoneEndpoints`], kept in the store across restarts), times out, and refuses addresses in
//! private, loopback and link-local ranges unless allowed (SSRF).
//!
//! In: `verify` checks a request signed the same way, within a 5-minute timestamp tolerance.
//!
//! Invariant: a request leaves only to a public address (unless allowed) and always signed.

use std::collections::HashSet;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use flowmark_core::render::Message;
use flowmark_core::{Duration, Timestamp};
use flowmark_store::GoneEndpoint;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::connector::{Connector, Job, Outcome};

/// Base64 that reads padded and unpadded text alike (secrets are often shared unpadded).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The retry delays Standard Webhooks recommends, after each failed attempt.
pub const STANDARD_WEBHOOKS_DELAYS_MS: [u64; 7] =
    [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];
/// How far a signed timestamp may be from now, either way, for `verify`.
pub const TIMESTAMP_TOLERANCE_S: i64 = 5 * 60;
/// How long a request may take, connecting included.
pub const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must look like `whsec_<base64>`")]
    Format,
}

/// A `whsec_…` secret, decoded.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.strip_prefix("whsec_").ok_or(SecretError::Format)?;
        let bytes = LENIENT.decode(encoded).map_err(|_| SecretError::Format)?;
        if bytes.is_empty() {
            return Err(SecretError::Format);
        }
        Ok(Secret(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header for a message: one `v1,<signature>` per secret.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| format!("v1,{}", BASE64.encode(secret.mac(id, timestamp, body).finalize().into_bytes())))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the `webhook-timestamp` is not a number of seconds")]
    BadTimestamp,
    #[error("the `webhook-timestamp` is more than 5 minutes from now")]
    Stale,
    #[error("no `v1` signature matches any of the secrets")]
    NoMatch,
}

/// Checks a signed request: some `v1` signature in `signatures` must match one of `secrets`
/// (compared in constant time), and the timestamp must be within the tolerance of `now_s`.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now_s - timestamp).abs() > TIMESTAMP_TOLERANCE_S {
        return Err(VerifyError::Stale);
    }
    let matched = signatures.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).any(|signature| {
        let Ok(bytes) = LENIENT.decode(signature) else { return false };
        secrets.iter().any(|secret| secret.mac(id, timestamp, body).verify_slice(&bytes).is_ok())
    });
    if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
}

/// Is this an address a webhook must not reach by default?
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated, still routed by some)
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo: a tunnel to any IPv4 host
                || (first == 0x0064 && v6.segments()[1] == 0xff9b && v6.segments()[2] == 1) // local NAT64
                || embedded_ipv4(v6).is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in every form that reaches one: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`, deprecated but still parsed), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let low = |hi: u16, lo: u16| std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

/// Gone URLs refused from memory at most. Past it, a URL that answers `410` is still stored,
/// but refused only until the process ends: a start loads the newest this many, and an older
/// one may be called again (once: it answers `410` again).
pub const GONE_ENDPOINTS_IN_MEMORY_MAX: usize = 100_000;

/// Webhook URLs that answered `410 Gone`, shared by the webhook connectors (which refuse
/// them), the dispatcher (which stores the new ones after each round: [`GoneEndpoints::take_new`])
/// and the API (which lists them and enables one again). Loaded from the store at start.
///
/// Invariant: a URL marked gone is refused by every connector sharing the record from that
/// moment on, and, once stored, after every restart too (up to
/// [`GONE_ENDPOINTS_IN_MEMORY_MAX`] URLs), until it is forgotten. What waits to be stored
/// holds each URL once, and no more than that many.
#[derive(Clone, Default)]
pub struct GoneEndpoints(Arc<Mutex<GoneState>>);

#[derive(Default)]
struct GoneState {
    urls: HashSet<String>,
    /// Marked since the last `take_new`: not stored yet.
    new: Vec<GoneEndpoint>,
}

impl GoneState {
    /// Keeps `endpoint` to be stored, unless its URL waits already or the queue is full (what
    /// waits is stored after every dispatcher round, so it is short unless the store fails).
    fn queue(&mut self, endpoint: GoneEndpoint) {
        if self.new.len() < GONE_ENDPOINTS_IN_MEMORY_MAX && !self.new.iter().any(|e| e.url == endpoint.url) {
            self.new.push(endpoint);
        }
    }
}

impl GoneEndpoints {
    /// A record holding `stored` (the store's newest first, as `Store::gone_endpoints` gives).
    pub fn loaded(stored: Vec<GoneEndpoint>) -> GoneEndpoints {
        let urls = stored.into_iter().take(GONE_ENDPOINTS_IN_MEMORY_MAX).map(|e| e.url).collect();
        GoneEndpoints(Arc::new(Mutex::new(GoneState { urls, new: Vec::new() })))
    }

    /// The state; a panic elsewhere while it was held leaves it usable (each change to it is
    /// one step), so a poisoned lock is taken as it is rather than forgetting gone URLs.
    fn state(&self) -> std::sync::MutexGuard<'_, GoneState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Is `url` disabled?
    pub fn contains(&self, url: &str) -> bool {
        self.state().urls.contains(url)
    }

    /// Disables `url` from now on, and keeps it to be stored (once, however often it is marked
    /// before the next `take_new`).
    pub fn mark(&self, url: &str, gone_at: Timestamp, reason: String) {
        let mut state = self.state();
        if state.urls.len() < GONE_ENDPOINTS_IN_MEMORY_MAX {
            state.urls.insert(url.to_owned());
        }
        state.queue(GoneEndpoint { url: url.to_owned(), gone_at, reason });
    }

    /// What was marked since the last call, to store; give it back (`keep`) if storing fails.
    pub fn take_new(&self) -> Vec<GoneEndpoint> {
        std::mem::take(&mut self.state().new)
    }

    /// Puts back what could not be stored, to be taken again after the next round.
    pub fn keep(&self, endpoints: Vec<GoneEndpoint>) {
        let mut state = self.state();
        for endpoint in endpoints {
            state.queue(endpoint);
        }
    }

    /// Enables `url` again in memory, and drops it from what waits to be stored; `true` when
    /// it was disabled. The store is the caller's: forget it there in the same step on the
    /// owner thread, so a dispatcher round cannot store it again in between.
    pub fn forget(&self, url: &str) -> bool {
        let mut state = self.state();
        let before = state.new.len();
        state.new.retain(|e| e.url != url);
        state.urls.remove(url) || state.new.len() != before
    }
}

pub struct WebhookSettings {
    /// The active secrets (`whsec_…`); each request is signed with all of them.
    pub secrets: Vec<Secret>,
    /// Let webhooks reach private, loopback and link-local addresses (a test or an intranet).
    pub allow_private: bool,
}

pub struct WebhookConnector {
    agent: ureq::Agent,
    secrets: Vec<Secret>,
    allow_private: bool,
    /// URLs that answered `410 Gone`, shared with whoever stores them.
    gone: GoneEndpoints,
}

impl WebhookConnector {
    pub fn new(settings: WebhookSettings) -> WebhookConnector {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .build()
            .new_agent();
        WebhookConnector {
            agent,
            secrets: settings.secrets,
            allow_private: settings.allow_private,
            gone: GoneEndpoints::default(),
        }
    }

    /// Shares `gone` with other connectors and the dispatcher (see [`GoneEndpoints`]);
    /// without it, a `410` disables a URL for this connector until the process ends.
    pub fn with_gone_endpoints(mut self, gone: GoneEndpoints) -> WebhookConnector {
        self.gone = gone;
        self
    }

    /// Refuses a URL that is not http(s) or whose host resolves to a private address.
    fn check(&self, url: &str) -> Result<(), String> {
        let uri: ureq::http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` is not an http or https URL")),
        };
        let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
        if self.allow_private {
            return Ok(());
        }
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<_> =
            (host, port).to_socket_addrs().map_err(|e| format!("`{host}` does not resolve: {e}"))?.collect();
        if let Some(private) = addresses.iter().find(|a| is_private(a.ip())) {
            return Err(format!(
                "`{host}` resolves to {}, a private address; webhooks may not reach those unless allowed",
                private.ip()
            ));
        }
        Ok(())
    }
}

impl Connector for WebhookConnector {
    fn perform(&self, job: &Job<'_>) -> Outcome {
        let Some(Message::Webhook { url, method, headers, body }) = job.message else {
            return Outcome::Permanent { error: "the webhook connector sends webhook messages only".to_owned() };
        };
        if self.gone.contains(url) {
            return Outcome::Permanent { error: format!("{url} answered 410 Gone earlier and is disabled") };
        }
        if let Err(error) = self.check(url) {
            return Outcome::Permanent { error };
        }
        let body = serde_json::to_vec(body.as_ref().unwrap_or(&serde_json::Value::Null)).unwrap_or_default();
        let timestamp = job.now.ms().div_euclid(1000);
        let mut request = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(url.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", job.key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign(&self.secrets, job.key, timestamp, &body));
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = match request.body(body) {
            Ok(request) => request,
            Err(error) => return Outcome::Permanent { error: format!("the request could not be built: {error}") },
        };
        let response = match self.agent.run(request) {
            Ok(response) => response,
            Err(error) => return Outcome::Retryable { error: format!("{url}: {error}"), retry_after: None },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration(s.saturating_mul(1000)));
        match status {
            200..=299 => Outcome::Done { detail: Some(format!("HTTP {status}")) },
            410 => {
                let error = format!("{url} answered 410 Gone; the endpoint is disabled");
                self.gone.mark(url, job.now, error.clone());
                Outcome::Permanent { error }
            }
            429 | 503 => Outcome::Retryable { error: format!("{url} answered HTTP {status}"), retry_after },
            408 | 500..=599 => Outcome::Retryable { error: format!("{url} answered HTTP {status}"), retry_after: None },
            _ => Outcome::Permanent { error: format!("{url} answered HTTP {status}") },
        }
    }

    fn retry_delays_ms(&self) -> Option<&'static [u64]> {
        Some(&STANDARD_WEBHOOKS_DELAYS_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_any_active_secret_and_nothing_else() {
        let old = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = Secret::parse("whsec_c2VjcmV0LXR3by1mb3Itcm90YXRpb24=").unwrap();
        let body = br#"{"hello":"world"}"#;
        let header = sign(&[old.clone(), new.clone()], "msg_1", 1_700_000_000, body);
        assert_eq!(header.split(' ').count(), 2, "one signature per secret while rotating");
        assert_eq!(verify(std::slice::from_ref(&new), "msg_1", "1700000000", &header, body, 1_700_000_100), Ok(()));
        assert_eq!(verify(std::slice::from_ref(&old), "msg_1", "1700000000", &header, body, 1_700_000_100), Ok(()));
        assert_eq!(
            verify(std::slice::from_ref(&new), "msg_2", "1700000000", &header, body, 1_700_000_100),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(std::slice::from_ref(&new), "msg_1", "1700000000", &header, b"{}", 1_700_000_100),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(std::slice::from_ref(&new), "msg_1", "1700000000", &header, body, 1_700_001_000),
            Err(VerifyError::Stale)
        );
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err(), "the whsec_ prefix is required");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            // IPv6 forms that embed a private IPv4 address.
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "64:ff9b:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in
            ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]
        {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    /// A receiver on loopback that answers every request with `status`, counting requests.
    fn answering(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The head, then as many bytes as it says the body has.
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        (url, count)
    }

    fn call(connector: &WebhookConnector, url: &str) -> Outcome {
        let message =
            Message::Webhook { url: url.to_owned(), method: "POST".to_owned(), headers: Vec::new(), body: None };
        let effect = flowmark_store::OutboxEffect::Run(flowmark_core::engine::EffectKind::SendMessage {
            channel: flowmark_core::model::Channel::Webhook,
            transactional: false,
            context: Default::default(),
        });
        let job = Job {
            key: "1-crm",
            effect: &effect,
            message: Some(&message),
            subject_id: "c1",
            attempt: 1,
            now: Timestamp(1_000),
            guard: None,
        };
        connector.perform(&job)
    }

    #[test]
    fn a_410_disables_the_url_for_every_connector_sharing_the_record_until_forgotten() {
        let (url, calls) = answering("410 Gone");
        let gone = GoneEndpoints::default();
        let settings = || WebhookSettings { secrets: Vec::new(), allow_private: true };
        let first = WebhookConnector::new(settings()).with_gone_endpoints(gone.clone());
        let second = WebhookConnector::new(settings()).with_gone_endpoints(gone.clone());
        assert!(matches!(call(&first, &url), Outcome::Permanent { error } if error.contains("410 Gone")));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(call(&second, &url), Outcome::Permanent { error } if error.contains("earlier")));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "a gone URL is not called again");
        // The new entry is handed over once, to be stored.
        let new = gone.take_new();
        assert_eq!(new.len(), 1);
        assert_eq!((new[0].url.as_str(), new[0].gone_at), (url.as_str(), Timestamp(1_000)));
        assert!(gone.take_new().is_empty());
        assert!(gone.forget(&url));
        assert!(!gone.forget(&url));
        assert!(matches!(call(&second, &url), Outcome::Permanent { error } if error.contains("410 Gone;")));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "called again once enabled");
    }

    #[test]
    fn a_record_loaded_from_the_store_refuses_its_urls_and_keeps_what_failed_to_store() {
        let stored =
            GoneEndpoint { url: "https://gone.example/hook".into(), gone_at: Timestamp(5), reason: "410".into() };
        let gone = GoneEndpoints::loaded(vec![stored.clone()]);
        assert!(gone.contains("https://gone.example/hook"));
        assert!(!gone.contains("https://live.example/hook"));
        assert!(gone.take_new().is_empty(), "what was loaded is stored already");
        gone.mark("https://live.example/hook", Timestamp(9), "410".into());
        gone.mark("https://live.example/hook", Timestamp(10), "410 again".into());
        let new = gone.take_new();
        assert_eq!(new.len(), 1, "stored once: {new:?}");
        gone.keep(new.clone());
        gone.keep(new.clone());
        assert_eq!(gone.take_new(), new, "given back to be stored next round, once");
    }

    #[test]
    fn the_connector_refuses_private_addresses_unless_allowed() {
        let strict = WebhookConnector::new(WebhookSettings { secrets: Vec::new(), allow_private: false });
        assert!(strict.check("http://127.0.0.1:9/x").unwrap_err().contains("private address"));
        assert!(strict.check("ftp://example.com/").unwrap_err().contains("not an http or https URL"));
        let open = WebhookConnector::new(WebhookSettings { secrets: Vec::new(), allow_private: true });
        assert_eq!(open.check("http://127.0.0.1:9/x"), Ok(()));
    }
}
