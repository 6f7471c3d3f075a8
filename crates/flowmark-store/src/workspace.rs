//! Workspaces, the tenant boundary: a workspace's name, and what a name may be.
//!
//! Every workspace has a store of its own (for the embedded backend, a database file of its
//! own), so a row belongs to exactly one workspace by where it is written: no query of one
//! workspace's store can read or change another's. The `default` workspace's store is also
//! the catalogue of API tokens, each naming the workspace it is for.
//!
//! Invariant: a `WorkspaceName` is 1 to `WORKSPACE_NAME_CHARS_MAX` characters of `a`–`z`,
//! `0`–`9` and `-`, starting with a letter or digit, so it is safe as a file name, a URL path
//! segment and a cookie prefix.

use std::fmt;

/// The workspace a server serves when a request names none, and whose store holds the tokens.
pub const DEFAULT_WORKSPACE: &str = "default";

/// The longest workspace name.
pub const WORKSPACE_NAME_CHARS_MAX: usize = 40;

/// A workspace's name, checked (see the module's invariant).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspaceName(String);

/// Why a text is not a workspace name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a workspace name: use 1 to {WORKSPACE_NAME_CHARS_MAX} lower-case letters, digits and `-`, starting with a letter or digit"
)]
pub struct BadWorkspaceName(pub String);

impl WorkspaceName {
    pub fn parse(text: &str) -> Result<WorkspaceName, BadWorkspaceName> {
        let fine = !text.is_empty()
            && text.len() <= WORKSPACE_NAME_CHARS_MAX
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !text.starts_with('-');
        if fine { Ok(WorkspaceName(text.to_owned())) } else { Err(BadWorkspaceName(text.to_owned())) }
    }

    /// The `default` workspace.
    pub fn default_workspace() -> WorkspaceName {
        WorkspaceName(DEFAULT_WORKSPACE.to_owned())
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_WORKSPACE
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_as_paths_and_cookie_prefixes() {
        for good in ["default", "acme", "a", "team-2", "0x"] {
            assert_eq!(WorkspaceName::parse(good).unwrap().as_str(), good);
        }
        let long = "a".repeat(WORKSPACE_NAME_CHARS_MAX + 1);
        for bad in ["", "-a", "A", "a.b", "../x", "a/b", "a b", "ä", long.as_str()] {
            assert!(WorkspaceName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(WorkspaceName::default_workspace().is_default());
    }
}
