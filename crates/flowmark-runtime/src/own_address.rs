//! Flowmark's own ingestion address, so a workflow never calls itself over HTTP.
//!
//! A webhook to our own `/v1/…` (Segment-compatible ingestion) or `/hooks/…` (signed inbound
//! webhooks) would loop an event through the network, the owner's queue and the outbox's
//! retries, where an `emit` action records it in the same unit of work. [`OwnAddresses`]
//! knows where this server is reached (its public URL and the address it listens on) and
//! says whether a webhook URL is one of those ingestion paths; deploying such a workflow is
//! refused with a located error that names `emit`.
//!
//! Keeps true: only URLs whose scheme, host and port are known when the workflow is deployed
//! are judged (a host written as a template is not guessed at); a loopback spelling
//! (`localhost`, `127.0.0.1`, `[::1]`, `0.0.0.0`) counts as ours when the port is the one this
//! server listens on, on a loopback or unspecified address.

use std::net::{IpAddr, SocketAddr};

use url::Url;

/// The paths under which this server takes events in.
pub const INGESTION_PATHS: [&str; 2] = ["/v1/", "/hooks/"];

/// Where this server is reached.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    /// `(host, port)` of the public URL and of the bound address, host lower-cased.
    origins: Vec<(String, u16)>,
    /// The port loopback spellings of the host reach us on, when we listen on loopback or on
    /// every address.
    loopback_port: Option<u16>,
}

impl OwnAddresses {
    /// The addresses of a server reached at `public_url` and listening on `bound`.
    pub fn new(public_url: &str, bound: SocketAddr) -> OwnAddresses {
        let mut origins = Vec::new();
        if let Some(origin) = Url::parse(public_url).ok().as_ref().and_then(origin) {
            origins.push(origin);
        }
        origins.push((bound.ip().to_string(), bound.port()));
        let ip = bound.ip();
        let loopback_port = (ip.is_loopback() || ip.is_unspecified()).then_some(bound.port());
        OwnAddresses { origins, loopback_port }
    }

    /// Whether `url` (a webhook's URL template's source) is one of this server's ingestion
    /// paths. Only the part before the first Liquid tag is read.
    pub fn is_own_ingestion(&self, url: &str) -> bool {
        let literal = url.split("{{").next().unwrap_or_default().split("{%").next().unwrap_or_default();
        // A host written as a template leaves no host (`http://`) or one that ends where the
        // tag begins, before any path: neither is one of ours.
        let Ok(parsed) = Url::parse(literal) else { return false };
        let Some((host, port)) = origin(&parsed) else { return false };
        let ours = self.origins.iter().any(|(h, p)| *h == host && *p == port)
            || (self.loopback_port == Some(port) && is_loopback(&host));
        ours && INGESTION_PATHS.iter().any(|path| parsed.path().starts_with(path))
    }
}

fn origin(url: &Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(domain) => domain.to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port_or_known_default()?))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> OwnAddresses {
        OwnAddresses::new("https://flowmark.example.com", "127.0.0.1:8080".parse().unwrap())
    }

    #[test]
    fn our_ingestion_paths_are_ours_in_every_spelling() {
        let own = local();
        for url in [
            "http://127.0.0.1:8080/v1/track",
            "http://localhost:8080/v1/batch",
            "http://LOCALHOST:8080/hooks/crm",
            "http://[::1]:8080/v1/identify",
            "http://0.0.0.0:8080/v1/track",
            "https://flowmark.example.com/v1/track",
            "https://Flowmark.Example.com:443/v1/track?x={{ contact.id }}",
            "http://127.0.0.1:8080/v1/{{ kind }}",
        ] {
            assert!(own.is_own_ingestion(url), "{url}");
        }
    }

    #[test]
    fn other_servers_other_paths_and_unknown_hosts_are_not() {
        let own = local();
        for url in [
            "https://api.segment.io/v1/track",
            "http://127.0.0.1:9090/v1/track",
            "http://localhost:8080/api/runs",
            "https://flowmark.example.com/u/unsubscribe",
            "http://flowmark.example.com/v1/track",
            "http://{{ env.host }}/v1/track",
            "http://local{{ x }}:8080/v1/track",
            "not a url",
        ] {
            assert!(!own.is_own_ingestion(url), "{url}");
        }
    }

    #[test]
    fn a_server_on_a_public_address_owns_no_loopback_spelling() {
        let own = OwnAddresses::new("http://10.0.0.5:8080", "10.0.0.5:8080".parse().unwrap());
        assert!(own.is_own_ingestion("http://10.0.0.5:8080/v1/track"));
        assert!(!own.is_own_ingestion("http://localhost:8080/v1/track"));
    }
}
