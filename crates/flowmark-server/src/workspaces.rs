//! The workspaces a server serves, and which one each request is for.
//!
//! Each workspace is a [`Tenant`]: its own store, run by its own owner thread, with its own
//! signing secret and its own record of disabled webhook URLs. A request reaches exactly one
//! tenant, chosen before any handler runs ([`route`]):
//!
//! 1. a path under `/w/{workspace}/…` is for that workspace (the prefix is taken off, so
//!    `/w/acme/api/runs` is `/api/runs` in `acme`); links a workspace sends out (unsubscribe,
//!    click tracking, calendar feeds, notifications) carry its prefix;
//! 2. otherwise a stored token (`Authorization: Bearer`, or a write key as the HTTP Basic
//!    user) is for the workspace it was made for;
//! 3. otherwise a web UI session cookie names its workspace (`acme.fm_…`; a bare `fm_…` is
//!    the default workspace's);
//! 4. otherwise the request is for the `default` workspace.
//!
//! Handlers get the chosen tenant as their [`App`](crate::api::App) and nothing else: there
//! is no handle on another workspace's store to reach by mistake, and a credential is
//! accepted only by the workspace it belongs to (`api::credential`).
//!
//! Invariant: a request made with workspace A's token, session or link is served by A's
//! owner and store only; the one store two workspaces share is the `default` workspace's token
//! catalogue, read by hash.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use flowmark_store::WorkspaceName;

use crate::owner::Owner;

/// One workspace as the server runs it.
#[derive(Clone)]
pub struct Tenant {
    /// The owner thread over the workspace's engine and store.
    pub owner: Owner,
    /// What the workspace's links (unsubscribe, click tracking, calendar feeds) are signed
    /// with; `None`: those links answer 404.
    pub secret: Option<Vec<u8>>,
    /// The webhook URLs that answered `410 Gone` for this workspace, shared with its webhook
    /// connectors.
    pub gone: flowmark_runtime::webhook::GoneEndpoints,
}

impl Tenant {
    pub fn new(owner: Owner) -> Tenant {
        Tenant { owner, secret: None, gone: flowmark_runtime::webhook::GoneEndpoints::default() }
    }
}

/// Opens (creating its store when new) a workspace and starts its owner: how a server adds a
/// workspace while it runs (`POST /api/workspaces`).
pub type Opener = Arc<dyn Fn(&WorkspaceName) -> Result<Tenant, String> + Send + Sync>;

/// The tenants of one server, by name; `default` is always there.
#[derive(Clone)]
pub struct Workspaces {
    tenants: Arc<RwLock<BTreeMap<WorkspaceName, Tenant>>>,
    opener: Option<Opener>,
    /// Held while a workspace is being created, so two requests for one name never both
    /// open its store.
    creating: Arc<std::sync::Mutex<()>>,
}

/// Why a workspace could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the workspace `{0}` exists already")]
    Exists(WorkspaceName),
    #[error("this server cannot create workspaces while it runs")]
    Unsupported,
    #[error("cannot create the workspace: {0}")]
    Failed(String),
}

impl Workspaces {
    /// A server of one workspace, `default` (no workspaces can be added while it runs).
    pub fn single(default: Tenant) -> Workspaces {
        let mut tenants = BTreeMap::new();
        tenants.insert(WorkspaceName::default_workspace(), default);
        Workspaces { tenants: Arc::new(RwLock::new(tenants)), opener: None, creating: Arc::default() }
    }

    /// A server that adds workspaces with `opener`.
    pub fn with_opener(mut self, opener: Opener) -> Workspaces {
        self.opener = Some(opener);
        self
    }

    /// Serves `tenant` as workspace `name` (replacing one of that name).
    pub fn insert(&self, name: WorkspaceName, tenant: Tenant) {
        self.write().insert(name, tenant);
    }

    pub fn get(&self, name: &WorkspaceName) -> Option<Tenant> {
        self.read().get(name).cloned()
    }

    /// The names served, `default` among them, in order.
    pub fn names(&self) -> Vec<WorkspaceName> {
        self.read().keys().cloned().collect()
    }

    /// Every tenant (the clock's `advance` fires due work in all of them).
    pub fn all(&self) -> Vec<Tenant> {
        self.read().values().cloned().collect()
    }

    /// The `default` workspace's owner, whose store holds the token catalogue.
    pub fn catalogue(&self) -> Owner {
        self.read()
            .get(&WorkspaceName::default_workspace())
            .map(|t| t.owner.clone())
            .expect("`default` is always served")
    }

    /// Creates workspace `name` and starts serving it.
    pub fn create(&self, name: &WorkspaceName) -> Result<(), CreateError> {
        let opener = self.opener.as_ref().ok_or(CreateError::Unsupported)?;
        let _one_at_a_time = self.creating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.read().contains_key(name) {
            return Err(CreateError::Exists(name.clone()));
        }
        let tenant = opener(name).map_err(CreateError::Failed)?;
        let mut tenants = self.write();
        if tenants.contains_key(name) {
            return Err(CreateError::Exists(name.clone()));
        }
        tenants.insert(name.clone(), tenant);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<WorkspaceName, Tenant>> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<WorkspaceName, Tenant>> {
        self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Splits `/w/{workspace}/rest` into the workspace's name and `/rest`; `None` for any other
/// path (and for a prefix that is not a workspace name).
pub(crate) fn split_prefix(path: &str) -> Option<(WorkspaceName, &str)> {
    let rest = path.strip_prefix("/w/")?;
    let (name, rest) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    WorkspaceName::parse(name).ok().map(|name| (name, rest))
}

/// The workspace a session cookie's value names, and the session token in it.
pub(crate) fn split_cookie(value: &str) -> (WorkspaceName, &str) {
    match value.split_once('.') {
        Some((name, token)) => match WorkspaceName::parse(name) {
            Ok(name) => (name, token),
            Err(_) => (WorkspaceName::default_workspace(), value),
        },
        None => (WorkspaceName::default_workspace(), value),
    }
}

/// A session cookie's value for `token` in `workspace`.
pub(crate) fn cookie_value(workspace: &WorkspaceName, token: &str) -> String {
    if workspace.is_default() { token.to_owned() } else { format!("{workspace}.{token}") }
}

/// The path under which a workspace's links are served: empty for `default`, `/w/{name}`
/// otherwise.
pub fn link_prefix(workspace: &WorkspaceName) -> String {
    if workspace.is_default() { String::new() } else { format!("/w/{workspace}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_name_a_workspace_and_keep_the_rest() {
        let (name, rest) = split_prefix("/w/acme/api/runs").unwrap();
        assert_eq!((name.as_str(), rest), ("acme", "/api/runs"));
        assert_eq!(split_prefix("/w/acme").map(|(n, r)| (n.to_string(), r)), Some(("acme".into(), "/")));
        assert!(split_prefix("/w/../api").is_none());
        assert!(split_prefix("/api/w/acme").is_none());
        let (name, token) = split_cookie("acme.fm_abc");
        assert_eq!((name.as_str(), token), ("acme", "fm_abc"));
        let (name, token) = split_cookie("fm_abc");
        assert_eq!((name.as_str(), token), ("default", "fm_abc"));
        assert_eq!(cookie_value(&WorkspaceName::parse("acme").unwrap(), "fm_x"), "acme.fm_x");
        assert_eq!(cookie_value(&WorkspaceName::default_workspace(), "fm_x"), "fm_x");
        assert_eq!(link_prefix(&WorkspaceName::parse("acme").unwrap()), "/w/acme");
    }
}
