//! The workspace's people: who they are (name, email, time zone, how they want to be
//! notified, when they are away and who stands in), the teams they form, and which people or
//! teams hold the roles workflows name (`writer`, `editor`, `brand`, …).
//!
//! A role is resolved to people in this order, the first that binds it wins: the item's own
//! `roles.<role>` field (per item), the directory's `roles` (per workspace), the workflow's
//! `roles` (its default), and finally the role's own name when it is an email address (a
//! person named directly, as an escalation `to:` may). A person away at the time is replaced
//! by their delegate (followed through delegates who are away too).
//!
//! Invariant: a compiled directory names only known people in its teams, roles and
//! delegations, and its delegations have no cycle, so resolution always ends.

use std::collections::{BTreeMap, BTreeSet};

use flowmark_core::Timestamp;
use flowmark_core::model::RoleBinding;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most people and teams in a directory.
pub const PEOPLE_MAX: usize = 10_000;
pub const TEAMS_MAX: usize = 1_000;
/// The setting the directory is stored under (JSON).
pub const DIRECTORY_SETTING: &str = "directory";
/// Where an item names its own people for roles: `{"roles": {"writer": "sam@example.com"}}`.
pub const ITEM_ROLES_FIELD: &str = "roles";

/// The directory as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DirectorySource {
    #[serde(default)]
    pub people: Vec<Person>,
    /// Team name → its members' emails.
    #[serde(default)]
    pub teams: BTreeMap<String, Vec<String>>,
    /// Role → `{"person": email}` or `{"team": name}`.
    #[serde(default)]
    pub roles: BTreeMap<String, Binding>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IANA time zone: when their digest goes out and how dates are shown to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub notify: Preferences,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<Away>,
}

/// How a person wants to hear that their input is needed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// By email (needs the SMTP connector).
    #[serde(default = "yes")]
    pub email: bool,
    /// A Slack-compatible incoming-webhook URL (`{"text": …}` is posted to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    /// Hold notifications and send one email a day, at `digest_hour` in their time zone.
    #[serde(default)]
    pub digest: bool,
    #[serde(default = "digest_hour")]
    pub digest_hour: u8,
}

fn yes() -> bool {
    true
}

fn digest_hour() -> u8 {
    8
}

impl Default for Preferences {
    fn default() -> Preferences {
        Preferences { email: true, chat: None, digest: false, digest_hour: 8 }
    }
}

/// Out of office: from `from` (or now) until `until`, `delegate` acts instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Away {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub until: String,
    pub delegate: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Binding {
    Person(String),
    Team(String),
}

/// A checked directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub source: Option<DirectorySource>,
    /// By lower-cased email.
    people: BTreeMap<String, Person>,
    /// Lower-cased email → (from, until, delegate).
    away: BTreeMap<String, (Timestamp, Timestamp, String)>,
}

/// Who a role resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Lower-cased emails, sorted, without repeats.
    pub people: Vec<String>,
    /// `(away person, delegate)` for each substitution made.
    pub delegated: Vec<(String, String)>,
}

fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp::from_chrono(&at.with_timezone(&chrono::Utc)));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(Timestamp::from_chrono(&date.and_hms_opt(0, 0, 0)?.and_utc()))
}

impl Directory {
    /// Checks a directory: every problem, or the compiled directory.
    pub fn compile(source: DirectorySource) -> Result<Directory, Vec<String>> {
        let mut errors = Vec::new();
        if source.people.len() > PEOPLE_MAX {
            errors.push(format!("{} people: at most {PEOPLE_MAX}", source.people.len()));
        }
        if source.teams.len() > TEAMS_MAX {
            errors.push(format!("{} teams: at most {TEAMS_MAX}", source.teams.len()));
        }
        let mut people = BTreeMap::new();
        for person in &source.people {
            let email = person.email.trim().to_lowercase();
            if !looks_like_email(&email) {
                errors.push(format!("person `{}`: `email` must be an email address", person.email));
                continue;
            }
            if let Some(tz) = &person.timezone
                && tz.parse::<chrono_tz::Tz>().is_err()
            {
                errors.push(format!("person `{email}`: unknown time zone `{tz}` (use an IANA name like Europe/Paris)"));
            }
            if person.notify.digest_hour > 23 {
                errors.push(format!("person `{email}`: `digest_hour` is 0–23"));
            }
            if let Some(chat) = &person.notify.chat
                && !(chat.starts_with("https://") || chat.starts_with("http://"))
            {
                errors.push(format!("person `{email}`: `notify.chat` must be an http(s) URL"));
            }
            if people.insert(email.clone(), person.clone()).is_some() {
                errors.push(format!("person `{email}` is listed twice"));
            }
        }
        let known = |email: &str| people.contains_key(&email.trim().to_lowercase());
        for (team, members) in &source.teams {
            for member in members {
                if !known(member) {
                    errors.push(format!("team `{team}`: `{member}` is not in `people`"));
                }
            }
        }
        for (role, binding) in &source.roles {
            match binding {
                Binding::Person(email) if !known(email) => {
                    errors.push(format!("role `{role}`: `{email}` is not in `people`"));
                }
                Binding::Team(team) if !source.teams.contains_key(team) => {
                    errors.push(format!("role `{role}`: there is no team `{team}`"));
                }
                _ => {}
            }
        }
        let mut away = BTreeMap::new();
        for (email, person) in &people {
            let Some(a) = &person.away else { continue };
            let from = match a.from.as_deref().map(parse_time) {
                None => Some(Timestamp(i64::MIN)),
                Some(parsed) => parsed,
            };
            let (Some(from), Some(until)) = (from, parse_time(&a.until)) else {
                errors.push(format!("person `{email}`: `away` dates are RFC 3339 times or YYYY-MM-DD dates"));
                continue;
            };
            let delegate = a.delegate.trim().to_lowercase();
            if !people.contains_key(&delegate) {
                errors.push(format!("person `{email}`: delegate `{}` is not in `people`", a.delegate));
            } else if delegate == *email {
                errors.push(format!("person `{email}` cannot delegate to themselves"));
            }
            away.insert(email.clone(), (from, until, delegate));
        }
        // Delegations must not go round in a circle, whatever the dates.
        for start in away.keys() {
            let mut seen = BTreeSet::from([start.clone()]);
            let mut at = start;
            while let Some((_, _, next)) = away.get(at) {
                if !seen.insert(next.clone()) {
                    errors.push(format!("delegation from `{start}` goes round in a circle through `{next}`"));
                    break;
                }
                at = next;
            }
        }
        if !errors.is_empty() {
            errors.dedup();
            return Err(errors);
        }
        Ok(Directory { source: Some(source), people, away })
    }

    pub fn person(&self, email: &str) -> Option<&Person> {
        self.people.get(&email.trim().to_lowercase())
    }

    /// The time zone `email` reads times in: theirs in the directory, UTC for someone without
    /// one (the directory refuses a zone that does not parse).
    pub fn zone_of(&self, email: &str) -> chrono_tz::Tz {
        self.person(email).and_then(|p| p.timezone.as_deref()).and_then(|tz| tz.parse().ok()).unwrap_or(chrono_tz::UTC)
    }

    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// Is `email` someone a task may be handed to? Anyone, while the directory has no people.
    pub fn knows(&self, email: &str) -> bool {
        self.people.is_empty() || self.person(email).is_some()
    }

    /// The people holding `role` for a subject with data `subject`, under a workflow's
    /// bindings, at `now`.
    pub fn resolve(
        &self,
        role: &str,
        workflow_roles: &BTreeMap<String, RoleBinding>,
        subject: &Value,
        now: Timestamp,
    ) -> Resolved {
        let mut named: Vec<String> = Vec::new();
        let source = self.source.as_ref();
        let members =
            |team: &str| -> Vec<String> { source.and_then(|s| s.teams.get(team)).cloned().unwrap_or_default() };
        if let Some(bound) = subject.get(ITEM_ROLES_FIELD).and_then(|roles| roles.get(role)) {
            match bound {
                Value::String(email) => named.push(email.clone()),
                Value::Array(emails) => named.extend(emails.iter().filter_map(Value::as_str).map(str::to_owned)),
                Value::Object(o) => {
                    if let Some(email) = o.get("person").and_then(Value::as_str) {
                        named.push(email.to_owned());
                    }
                    if let Some(team) = o.get("team").and_then(Value::as_str) {
                        named.extend(members(team));
                    }
                }
                _ => {}
            }
        }
        if named.is_empty()
            && let Some(binding) = source.and_then(|s| s.roles.get(role))
        {
            match binding {
                Binding::Person(email) => named.push(email.clone()),
                Binding::Team(team) => named.extend(members(team)),
            }
        }
        if named.is_empty()
            && let Some(binding) = workflow_roles.get(role)
        {
            match binding {
                RoleBinding::Person(email) => named.push(email.clone()),
                RoleBinding::Team(team) => named.extend(members(team)),
            }
        }
        if named.is_empty() && looks_like_email(role) {
            named.push(role.to_owned());
        }
        let mut resolved = Resolved::default();
        let mut people = BTreeSet::new();
        for email in named {
            let email = email.trim().to_lowercase();
            people.insert(self.stand_in(&email, now, &mut resolved.delegated));
        }
        resolved.people = people.into_iter().collect();
        resolved
    }

    /// The people holding any of `roles`, sorted, without repeats (see [`Directory::resolve`]).
    pub fn resolve_all(
        &self,
        roles: &[String],
        workflow_roles: &BTreeMap<String, RoleBinding>,
        subject: &Value,
        now: Timestamp,
    ) -> Vec<String> {
        let people: BTreeSet<String> =
            roles.iter().flat_map(|role| self.resolve(role, workflow_roles, subject, now).people).collect();
        people.into_iter().collect()
    }

    /// The person who acts for `email` at `now`: their delegate's stand-in while they are away.
    fn stand_in(&self, email: &str, now: Timestamp, delegated: &mut Vec<(String, String)>) -> String {
        let mut at = email.to_owned();
        // The chain has no cycle (checked at compile), so it ends; the bound is belt and braces.
        for _ in 0..=self.away.len() {
            match self.away.get(&at) {
                Some((from, until, delegate)) if *from <= now && now < *until => {
                    delegated.push((at.clone(), delegate.clone()));
                    at.clone_from(delegate);
                }
                _ => break,
            }
        }
        at
    }
}

/// An address with one `@` and something on both sides: what a directory accepts.
pub fn looks_like_email(text: &str) -> bool {
    let mut parts = text.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(local), Some(domain), None)
        if !local.is_empty() && domain.contains('.') && !text.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn directory(value: Value) -> Result<Directory, Vec<String>> {
        Directory::compile(serde_json::from_value(value).expect("the test's directory has the right shape"))
    }

    fn sample() -> Directory {
        directory(json!({
            "people": [
                { "email": "sam@example.com", "name": "Sam" },
                { "email": "kim@example.com", "away": { "until": "2026-12-01", "delegate": "sam@example.com" } },
                { "email": "dana@example.com", "timezone": "Europe/Paris" },
                { "email": "lee@example.com" }
            ],
            "teams": { "content": ["sam@example.com", "kim@example.com"] },
            "roles": { "writer": { "team": "content" }, "editor": { "person": "dana@example.com" } }
        }))
        .expect("the sample directory is valid")
    }

    fn at(text: &str) -> Timestamp {
        parse_time(text).expect("a test time")
    }

    #[test]
    fn roles_resolve_item_first_then_workspace_then_workflow_then_a_named_person() {
        let directory = sample();
        let workflow = BTreeMap::from([
            ("editor".to_owned(), RoleBinding::Person("lee@example.com".to_owned())),
            ("brand".to_owned(), RoleBinding::Person("lee@example.com".to_owned())),
        ]);
        let now = at("2027-01-01");
        let people = |role: &str, subject: &Value| directory.resolve(role, &workflow, subject, now).people;
        assert_eq!(people("editor", &json!({})), ["dana@example.com"], "the workspace binding beats the workflow's");
        assert_eq!(people("editor", &json!({ "roles": { "editor": "Lee@Example.com" } })), ["lee@example.com"]);
        assert_eq!(people("brand", &json!({})), ["lee@example.com"]);
        assert_eq!(people("writer", &json!({})), ["kim@example.com", "sam@example.com"]);
        assert_eq!(people("x@example.com", &json!({})), ["x@example.com"]);
        assert!(people("nobody", &json!({})).is_empty());
    }

    #[test]
    fn an_away_person_is_replaced_by_their_delegate_while_away() {
        let directory = sample();
        let none = BTreeMap::new();
        let during = directory.resolve("writer", &none, &json!({}), at("2026-11-24"));
        assert_eq!(during.people, ["sam@example.com"]);
        assert_eq!(during.delegated, [("kim@example.com".to_owned(), "sam@example.com".to_owned())]);
        let after = directory.resolve("writer", &none, &json!({}), at("2026-12-01"));
        assert_eq!(after.people, ["kim@example.com", "sam@example.com"]);
    }

    #[test]
    fn a_bad_directory_says_every_problem() {
        let errors = directory(json!({
            "people": [
                { "email": "a@example.com", "timezone": "Mars/Base", "away": { "until": "soon", "delegate": "a@example.com" } },
                { "email": "b@example.com", "away": { "until": "2027-01-01", "delegate": "c@example.com" } },
                { "email": "c@example.com", "away": { "until": "2027-01-01", "delegate": "b@example.com" } },
                { "email": "not-an-email" }
            ],
            "teams": { "t": ["z@example.com"] },
            "roles": { "r": { "team": "missing" }, "s": { "person": "y@example.com" } }
        }))
        .expect_err("the directory is invalid");
        let text = errors.join("\n");
        for expected in [
            "unknown time zone `Mars/Base`",
            "`away` dates",
            "`not-an-email`: `email` must be an email address",
            "team `t`: `z@example.com` is not in `people`",
            "role `r`: there is no team `missing`",
            "role `s`: `y@example.com` is not in `people`",
            "goes round in a circle",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }
}
