//! The team's side of the engine: the directory, acting on work items (claim, release,
//! reassign, complete, decide), comments with mentions, and notifications — who hears that
//! their input is needed, on which channel, once.
//!
//! Notifications: a `create_task`, `request_approval` or `notify` effect is resolved to the
//! people holding its roles. Each person gets one notification row (key `<effect>/<person>`,
//! stored once) and, unless they take a daily digest, one delivery per channel they chose —
//! an outbox effect of its own (`deliver_notification`, key `<effect>/<person>/<channel>`), so
//! a failing channel is retried alone and a delivered one is never sent again.
//!
//! Invariant: every change here commits in one batch with the run input that records it
//! (an assignment's history entry with the new people; a completion with the inbox closing).

use flowmark_core::Timestamp;
use flowmark_core::engine::{
    Decision, EffectKind, HistoryKind, Input, NotifyReason, RunId, TokenState, Transition, separation_of_duties,
};
use flowmark_core::model::StepKind;
use flowmark_core::render::Message;
use flowmark_store::{
    Batch, Comment, Delivery, Notification, OutboxEffect, OutboxEntry, Store, WorkChange, WorkItem, WorkKind,
};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Engine, Error, Unit};
use crate::connector::Outbound;
use crate::directory::{Directory, DirectorySource};
use crate::work::{subject_title, url_part};

/// The longest comment, in bytes.
pub const COMMENT_BYTES_MAX: usize = 10_000;
/// The longest attachment title, and the longest attachment link.
pub const ATTACHMENT_TITLE_BYTES_MAX: usize = 300;
pub const ATTACHMENT_URL_BYTES_MAX: usize = 2_048;
/// Undigested notifications one digest round reads.
pub const DIGEST_ROUND_MAX: usize = 10_000;
/// The run a delivery names when no single run caused it (a digest, a mention outside work);
/// deliveries are dispatched without their run.
const NO_RUN: RunId = RunId(0);

/// A link someone attaches to an item (`Engine::attach`).
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// The item.
    pub subject_id: &'a str,
    /// The work item of the item it is about, if one.
    pub work_id: Option<&'a str>,
    /// Who attaches it (an email).
    pub by: &'a str,
    pub title: &'a str,
    /// An http(s) link.
    pub url: &'a str,
    /// The link is the next version of the item's deliverable (reviews start a new round).
    pub new_version: bool,
}

/// Whom an effect asks for input, why, and what to tell them.
pub(super) struct Ask {
    pub people: Vec<String>,
    /// `task_assigned`, `approval_requested`, `reminder`, `escalation`, `mention`, …
    pub reason: String,
    /// The text; `{due}` in it is replaced by `due_at` as each person reads it (their time
    /// zone from the directory).
    pub text: String,
    pub due_at: Option<Timestamp>,
    /// A path under the public URL (`/ui/work/<id>`).
    pub link: String,
}

/// The placeholder in an `Ask`'s text where its due time goes.
const DUE: &str = "{due}";

/// A due time as a person reads it: ` (due Tue 08 Dec, 16:09 EST)`.
fn due_in(at: Timestamp, zone: chrono_tz::Tz) -> String {
    format!(" (due {})", at.to_chrono().with_timezone(&zone).format("%a %d %b, %H:%M %Z"))
}

/// What a person does to a work item.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkAction {
    /// Take it: only they may act on it now.
    Claim,
    /// Give it back to everyone holding its role.
    Release,
    /// Hand it to another person.
    Reassign { to: String },
    /// Complete a task, with its form's values.
    Complete { fields: serde_json::Map<String, Value> },
    /// Decide an approval.
    Decide { decision: Decision, comment: Option<String> },
    /// Send a completed task back: the run returns to its step (the person who completed it
    /// or the task's Accountable may).
    Reopen { reason: Option<String> },
}

/// Why an action on a work item was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkRefusal {
    #[error("there is no work item `{0}`")]
    NotFound(String),
    #[error("work item `{0}` is closed ({1})")]
    Closed(String, String),
    #[error("{0}")]
    NotYours(String),
    #[error("{0}")]
    Invalid(String),
    /// The run did not take the input (a required field missing, …).
    #[error("{0}")]
    Ignored(String),
}

impl<S: Store> Engine<S> {
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The public address links point to ("" when unknown: links are relative).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Sets the public address links in notifications point to (`https://flowmark.example.com`).
    pub fn set_public_url(&mut self, url: &str) {
        self.public_url = url.trim_end_matches('/').to_owned();
    }

    /// Checks and stores the directory; open work is handed to the people its roles now name
    /// (assigned work stays with its assignee). Every problem, or nothing stored.
    pub fn set_directory(&mut self, source: DirectorySource, now: Timestamp) -> Result<Result<(), Vec<String>>, Error> {
        let directory =
            match self.store_document(crate::directory::DIRECTORY_SETTING, source, Directory::compile, now)? {
                Ok(directory) => directory,
                Err(errors) => return Ok(Err(errors)),
            };
        self.directory = directory;
        self.reresolve_open_work(now)?;
        Ok(Ok(()))
    }

    /// Re-resolves the people of every open, unassigned work item, a page per commit.
    fn reresolve_open_work(&mut self, now: Timestamp) -> Result<(), Error> {
        let mut after: Option<String> = None;
        loop {
            let page = self.store.open_work_after(after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let mut changes = Vec::new();
            for item in &page {
                if item.assignee.is_some() {
                    continue;
                }
                let people = self.people_of(item, now)?;
                if people != item.people {
                    changes.push(WorkChange::People { id: item.id.clone(), assignee: None, people });
                }
            }
            self.store.write(&Batch { work: changes.iter().collect(), ..Batch::default() }, now)?;
        }
        Ok(())
    }

    /// The people an unassigned item's roles name now.
    fn people_of(&mut self, item: &WorkItem, now: Timestamp) -> Result<Vec<String>, Error> {
        let roles: Vec<String> = match item.kind {
            WorkKind::Task => item.detail["raci"]["responsible"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_else(|| vec![item.role.clone()]),
            WorkKind::Approval => vec![item.role.clone()],
        };
        self.resolve_roles(&item.run, &roles, now)
    }

    /// The people holding `roles` for a run's subject, under its workflow, at `now`.
    fn resolve_roles(&mut self, run: &RunId, roles: &[String], now: Timestamp) -> Result<Vec<String>, Error> {
        let Some(run) = self.store.run(*run)? else { return Ok(Vec::new()) };
        let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
        let subject = self.store.contact(&run.subject_id)?.map(|c| c.traits).unwrap_or(Value::Null);
        Ok(self.directory.resolve_all(roles, &workflow.roles, &subject, now))
    }

    /// Why `person` may not decide the approval work item `item` under separation of duties
    /// (`core::engine::separation_of_duties`), read from its run as it stands.
    fn duty_conflict(&mut self, item: &WorkItem, person: &str) -> Result<Option<String>, Error> {
        if item.kind != WorkKind::Approval {
            return Ok(None);
        }
        let Some(run) = self.store.run(item.run)? else { return Ok(None) };
        let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
        let Some(at) = workflow.step_index(&item.step) else { return Ok(None) };
        let state = run.tokens.iter().find_map(|token| match &token.state {
            TokenState::AwaitingApproval(state) if token.at == at => Some(state),
            _ => None,
        });
        Ok(state.and_then(|state| separation_of_duties(&workflow, &run, at, state, person, false)))
    }

    /// The people responsible for or accountable for some work of `subject_id`'s active runs:
    /// who may start a new round of its reviews with a new version of the deliverable.
    fn item_owners(&mut self, subject_id: &str, now: Timestamp) -> Result<Vec<String>, Error> {
        let mut owners = Vec::new();
        for run in self.store.active_runs_of_subject(subject_id)? {
            let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
            let mut roles: Vec<String> = Vec::new();
            for step in &workflow.steps {
                match &step.kind {
                    StepKind::Task(task) => {
                        roles.extend(task.raci.responsible.iter().cloned());
                        roles.push(task.raci.accountable.clone());
                    }
                    StepKind::Approval(approval) => roles.extend(approval.accountable.iter().cloned()),
                    _ => {}
                }
            }
            roles.sort();
            roles.dedup();
            owners.extend(self.resolve_roles(&run.id, &roles, now)?);
        }
        Ok(owners)
    }

    /// A person acts on the open work of run `run` at `step` (the approval asked of `role`, when
    /// given): the run-centred form of `act_on_work`, with the same checks. `NotFound` when the
    /// run is unknown, `Ignored` when nothing of that step (and role) is open.
    pub fn act_at_step(
        &mut self,
        run: RunId,
        step: &str,
        role: Option<&str>,
        person: &str,
        action: WorkAction,
        now: Timestamp,
    ) -> Result<Result<WorkItem, WorkRefusal>, Error> {
        self.act_at_step_via(run, step, role, person, None, action, now)
    }

    /// `act_at_step`, through a service token (`via`, its name), which the history records
    /// beside the person it acted for.
    #[allow(clippy::too_many_arguments)]
    pub fn act_at_step_via(
        &mut self,
        run: RunId,
        step: &str,
        role: Option<&str>,
        person: &str,
        via: Option<&str>,
        action: WorkAction,
        now: Timestamp,
    ) -> Result<Result<WorkItem, WorkRefusal>, Error> {
        let Some(stored) = self.store.run(run)? else {
            return Ok(Err(WorkRefusal::NotFound(format!("run {}", run.0))));
        };
        let open =
            self.store.work_of_subject(&stored.subject_id, usize::MAX)?.into_iter().find(|w| {
                w.run == run && w.step == step && w.status == "open" && role.is_none_or(|role| w.role == role)
            });
        let Some(item) = open else {
            let what = role.map(|role| format!(" for `{role}`")).unwrap_or_default();
            return Ok(Err(WorkRefusal::Ignored(format!("nothing is open at `{step}`{what} in run {}", run.0))));
        };
        self.act_on_work_via(&item.id, person, via, action, now)
    }

    /// A person acts on a work item; returns the item as it is afterwards.
    pub fn act_on_work(
        &mut self,
        id: &str,
        person: &str,
        action: WorkAction,
        now: Timestamp,
    ) -> Result<Result<WorkItem, WorkRefusal>, Error> {
        self.act_on_work_via(id, person, None, action, now)
    }

    /// `act_on_work`, through a service token (`via`, its name): the completion or decision
    /// is the person's, and its history entry names the token too.
    pub fn act_on_work_via(
        &mut self,
        id: &str,
        person: &str,
        via: Option<&str>,
        action: WorkAction,
        now: Timestamp,
    ) -> Result<Result<WorkItem, WorkRefusal>, Error> {
        let via = via.map(str::to_owned);
        let person = person.trim().to_lowercase();
        let Some(item) = self.store.work_item(id)? else { return Ok(Err(WorkRefusal::NotFound(id.to_owned()))) };
        let reopening = matches!(action, WorkAction::Reopen { .. });
        let mut in_place_of: Vec<String> = Vec::new();
        if item.status != "open" && !reopening {
            let outcome = item.outcome.clone().unwrap_or_default();
            return Ok(Err(WorkRefusal::Closed(id.to_owned(), outcome)));
        }
        let may_act = item.people.contains(&person);
        let accountable = item.detail["raci"]["accountable"].as_str().or(item.detail["accountable"].as_str());
        let manages = match accountable {
            Some(role) => self.resolve_roles(&item.run, &[role.to_owned()], now)?.contains(&person),
            None => false,
        };
        let not_yours = || {
            let who = match &item.assignee {
                Some(assignee) => format!("it is assigned to {assignee}"),
                None => format!("it is for the `{}` role: {}", item.role, item.people.join(", ")),
            };
            Ok(Err(WorkRefusal::NotYours(format!("{person} may not act on `{id}`: {who}"))))
        };
        let (input, change) = match action {
            WorkAction::Claim => {
                if !may_act {
                    return not_yours();
                }
                if let Some(reason) = self.duty_conflict(&item, &person)? {
                    return Ok(Err(WorkRefusal::NotYours(reason)));
                }
                let change = WorkChange::People {
                    id: id.to_owned(),
                    assignee: Some(person.clone()),
                    people: vec![person.clone()],
                };
                (
                    Input::WorkAssigned { step: item.step.clone(), to: Some(person.clone()), by: person.clone() },
                    Some(change),
                )
            }
            WorkAction::Release => {
                if !(may_act || manages) {
                    return not_yours();
                }
                let people = self.people_of(&item, now)?;
                let change = WorkChange::People { id: id.to_owned(), assignee: None, people };
                (Input::WorkAssigned { step: item.step.clone(), to: None, by: person.clone() }, Some(change))
            }
            WorkAction::Reassign { to } => {
                if !(may_act || manages) {
                    return not_yours();
                }
                let to = to.trim().to_lowercase();
                if !crate::directory::looks_like_email(&to) || !self.directory.knows(&to) {
                    return Ok(Err(WorkRefusal::Invalid(format!("`{to}` is not a person in the directory"))));
                }
                if let Some(reason) = self.duty_conflict(&item, &to)? {
                    return Ok(Err(WorkRefusal::NotYours(format!("`{id}` cannot be handed to {to}: {reason}"))));
                }
                let change =
                    WorkChange::People { id: id.to_owned(), assignee: Some(to.clone()), people: vec![to.clone()] };
                (Input::WorkAssigned { step: item.step.clone(), to: Some(to), by: person.clone() }, Some(change))
            }
            WorkAction::Complete { fields } => {
                if item.kind != WorkKind::Task {
                    return Ok(Err(WorkRefusal::Invalid(format!("`{id}` is an approval: decide it"))));
                }
                if !may_act {
                    return not_yours();
                }
                (Input::TaskCompleted { via: via.clone(), step: item.step.clone(), by: person.clone(), fields }, None)
            }
            WorkAction::Decide { decision, comment } => {
                if item.kind != WorkKind::Approval {
                    return Ok(Err(WorkRefusal::Invalid(format!("`{id}` is a task: complete it"))));
                }
                if !may_act {
                    return not_yours();
                }
                if let Some(reason) = self.duty_conflict(&item, &person)? {
                    return Ok(Err(WorkRefusal::NotYours(reason)));
                }
                // Someone deciding in the approvers' place (the accountable person after an
                // escalation, say): the approvers are told who decided for them.
                let own = self.people_of(&item, now)?;
                if !own.contains(&person) {
                    in_place_of = own;
                }
                let input = Input::ApprovalDecided {
                    via: via.clone(),
                    step: item.step.clone(),
                    role: item.role.clone(),
                    by: person.clone(),
                    decision,
                    comment,
                };
                (input, None)
            }
            WorkAction::Reopen { reason } => {
                if item.kind != WorkKind::Task || item.outcome.as_deref() != Some("completed") {
                    return Ok(Err(WorkRefusal::Invalid(format!(
                        "only a completed task can be reopened; `{id}` is not"
                    ))));
                }
                if !(manages || item.closed_by.as_deref() == Some(person.as_str())) {
                    return Ok(Err(WorkRefusal::NotYours(format!(
                        "{person} may not reopen `{id}`: the person who completed it or its Accountable may"
                    ))));
                }
                (Input::Reopen { step: item.step.clone(), by: person.clone(), reason }, None)
            }
        };
        let Some(t) = self.decide(item.run, &input, now)? else {
            return Ok(Err(WorkRefusal::NotFound(format!("the run of `{id}`"))));
        };
        if let Some(reason) = ignored(&t) {
            return Ok(Err(WorkRefusal::Ignored(reason)));
        }
        self.commit_with_follow_ups(t, change.into_iter().collect(), now)?;
        if !in_place_of.is_empty() {
            self.tell_decided_for(&item, &person, &in_place_of, now)?;
        }
        if reopening {
            // The answer is the task's new work item; the completed one keeps its outcome.
            let reopened = self
                .store
                .work_of_subject(&item.subject_id, usize::MAX)?
                .into_iter()
                .rev()
                .find(|w| w.run == item.run && w.step == item.step && w.status == "open");
            return Ok(reopened.ok_or_else(|| WorkRefusal::NotFound(format!("the reopened `{}`", item.step))));
        }
        Ok(self.store.work_item(id)?.ok_or_else(|| WorkRefusal::NotFound(id.to_owned())))
    }

    /// Tells the people an approval was asked of that `person` decided it in their place.
    fn tell_decided_for(
        &mut self,
        item: &WorkItem,
        person: &str,
        people: &[String],
        now: Timestamp,
    ) -> Result<(), Error> {
        let decided = self.store.work_item(&item.id)?;
        let outcome = decided.and_then(|w| w.outcome).unwrap_or_default().replace('_', " ");
        let subject = self.store.contact(&item.subject_id)?.map(|c| c.traits).unwrap_or(Value::Null);
        let title = subject_title(&subject, &item.subject_id);
        let name = self.directory.person(person).and_then(|p| p.name.clone()).unwrap_or_else(|| person.to_owned());
        let ask = Ask {
            people: people.to_vec(),
            reason: "decided_for_you".to_owned(),
            text: format!("{name} decided “{title}” ({}) in your place: {outcome}", item.role),
            due_at: None,
            link: format!("/ui/work/{}", url_part(&item.id)),
        };
        let mut unit = Unit::default();
        let key = format!("{}/decided-for", item.id);
        for to in people {
            self.notify_person(&mut unit, (&key, item.run, &item.step), to, &ask, now);
        }
        self.store.write(&unit.batch(), now)?;
        Ok(())
    }

    /// Attaches a link to an item (optionally about one of its work items). With
    /// `new_version`, the link is the next version of the item's deliverable: every approval
    /// its runs wait on starts a new round in the same commit, so decisions given on the old
    /// version no longer count.
    pub fn attach(
        &mut self,
        attachment: Attachment<'_>,
        now: Timestamp,
    ) -> Result<Result<Comment, WorkRefusal>, Error> {
        let Attachment { subject_id, work_id, by, title, url, new_version } = attachment;
        let (title, url) = (title.trim(), url.trim());
        if title.is_empty() || title.len() > ATTACHMENT_TITLE_BYTES_MAX {
            return Ok(Err(WorkRefusal::Invalid(format!("a title has 1 to {ATTACHMENT_TITLE_BYTES_MAX} bytes"))));
        }
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() > ATTACHMENT_URL_BYTES_MAX || url.chars().any(char::is_whitespace) {
            return Ok(Err(WorkRefusal::Invalid(format!(
                "`{}` is not an http(s) link of at most {ATTACHMENT_URL_BYTES_MAX} bytes",
                excerpt(url, 80)
            ))));
        }
        if self.store.contact(subject_id)?.is_none() {
            return Ok(Err(WorkRefusal::NotFound(subject_id.to_owned())));
        }
        if let Some(id) = work_id
            && self.store.work_item(id)?.is_none_or(|w| w.subject_id != subject_id)
        {
            return Ok(Err(WorkRefusal::NotFound(id.to_owned())));
        }
        let by = by.trim().to_lowercase();
        if !self.directory.knows(&by) {
            return Ok(Err(WorkRefusal::NotYours(format!("`{by}` is not a person in the directory"))));
        }
        if new_version && !self.item_owners(subject_id, now)?.contains(&by) {
            return Ok(Err(WorkRefusal::NotYours(format!(
                "{by} may not attach a new version of `{subject_id}`: only the people responsible or accountable \
                 for its work may, since a new version starts its reviews over"
            ))));
        }
        let version = if new_version { Some(self.store.deliverable_version(subject_id)? + 1) } else { None };
        let comment = Comment {
            subject_id: subject_id.to_owned(),
            work_id: work_id.map(str::to_owned),
            by: by.clone(),
            body: title.to_owned(),
            at: now,
            link: Some(url.to_owned()),
            version,
        };
        let mut transitions = Vec::new();
        if let Some(version) = version {
            let input = Input::DeliverableUpdated { by, version: Some(format!("v{version}")) };
            for run in self.store.active_runs_of_subject(subject_id)? {
                let Some(t) = self.decide(run.id, &input, now)? else { continue };
                if ignored(&t).is_none() {
                    transitions.push(t);
                }
            }
            self.follow_ups(&mut transitions, now)?;
        }
        let refs: Vec<&Transition> = transitions.iter().collect();
        let work = self.work_changes(&refs, None, now)?;
        let batch =
            Batch { transitions: refs, work: work.iter().collect(), comments: vec![&comment], ..Batch::default() };
        self.store.write(&batch, now)?;
        self.stats.transitions_committed += transitions.len() as u64;
        Ok(Ok(comment))
    }

    /// Adds a comment on an item (a subject), optionally about one work item; every
    /// `@person@example.com` it mentions is notified.
    pub fn add_comment(
        &mut self,
        subject_id: &str,
        work_id: Option<&str>,
        by: &str,
        body: &str,
        now: Timestamp,
    ) -> Result<Result<Comment, WorkRefusal>, Error> {
        let body = body.trim();
        if body.is_empty() || body.len() > COMMENT_BYTES_MAX {
            return Ok(Err(WorkRefusal::Invalid(format!("a comment has 1 to {COMMENT_BYTES_MAX} bytes"))));
        }
        let by = by.trim().to_lowercase();
        if !self.directory.knows(&by) {
            return Ok(Err(WorkRefusal::NotYours(format!("`{by}` is not a person in the directory"))));
        }
        let run = match work_id {
            Some(id) => match self.store.work_item(id)? {
                Some(item) if item.subject_id == subject_id => Some(item.run),
                _ => return Ok(Err(WorkRefusal::NotFound(id.to_owned()))),
            },
            None => None,
        };
        let comment = Comment {
            subject_id: subject_id.to_owned(),
            work_id: work_id.map(str::to_owned),
            by,
            body: body.to_owned(),
            at: now,
            link: None,
            version: None,
        };
        let mut unit = Unit::default();
        let subject = self.store.contact(subject_id)?.map(|c| c.traits).unwrap_or(Value::Null);
        let title = subject_title(&subject, subject_id);
        let digest = sha2::Sha256::digest(format!("{subject_id}\n{}\n{}\n{body}", comment.by, now.ms()));
        let key = format!("comment-{}", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
        for mentioned in mentions(body) {
            if mentioned == comment.by {
                continue;
            }
            let text = format!("{} mentioned you on “{title}”: {}", comment.by, excerpt(body, 200));
            let ask = Ask {
                people: vec![mentioned.clone()],
                reason: "mention".to_owned(),
                text,
                due_at: None,
                link: format!("/ui/items/{}", url_part(subject_id)),
            };
            self.notify_person(&mut unit, (&key, run.unwrap_or(NO_RUN), "comment"), &mentioned, &ask, now);
        }
        let batch = Batch { comments: vec![&comment], ..unit.batch() };
        self.store.write(&batch, now)?;
        Ok(Ok(comment))
    }

    /// Records `person`'s notification and queues its deliveries (or holds it for their digest).
    pub(super) fn notify_person(
        &self,
        unit: &mut Unit,
        (key, run, step): (&str, RunId, &str),
        person: &str,
        ask: &Ask,
        now: Timestamp,
    ) {
        let zone = self.directory.zone_of(person);
        // Only a text built with a due time holds the placeholder (a comment's words never do).
        let text = match ask.due_at {
            Some(at) => ask.text.replace(DUE, &due_in(at, zone)),
            None => ask.text.clone(),
        };
        let (reason, text) = (ask.reason.as_str(), text.as_str());
        let prefs = self.directory.person(person).map(|p| p.notify.clone()).unwrap_or_default();
        let key = format!("{key}/{person}");
        let link = format!("{}{}", self.public_url, ask.link);
        unit.notifications.push(Notification {
            key: key.clone(),
            person: person.to_owned(),
            reason: reason.to_owned(),
            text: text.to_owned(),
            link: Some(link.clone()),
            at: now,
            digest: prefs.digest,
        });
        if prefs.digest {
            return;
        }
        let mut deliver = |channel: &str, delivery: Delivery| {
            unit.outbox.push(OutboxEntry {
                key: format!("{key}/{channel}"),
                run,
                step: step.to_owned(),
                effect: OutboxEffect::Deliver(delivery),
                attempts: 0,
                lost: 0,
                next_attempt_at: now,
                owner: None,
            });
        };
        if prefs.email {
            let subject = excerpt(text, 120);
            let (to, text, link) = (person.to_owned(), text.to_owned(), link.clone());
            deliver("email", Delivery::Email { to, subject, text, link });
        }
        if let Some(url) = &prefs.chat {
            deliver("chat", Delivery::Chat { url: url.clone(), text: text.to_owned(), link });
        }
    }

    /// Whom an effect of a run asks for input, why, and what to tell them: one `Ask` per role
    /// for an approval (each approver is sent to their own work item); empty for effects that
    /// ask no one.
    pub(super) fn recipients(
        &mut self,
        run: super::RunRef<'_>,
        key: &str,
        step: &str,
        effect: &EffectKind,
        subject: &Value,
        now: Timestamp,
    ) -> Result<Vec<Ask>, Error> {
        let workflow = self.workflow(run.workflow_id, Some(run.version))?;
        let title = subject_title(subject, run.subject_id);
        let item_link = format!("/ui/items/{}", url_part(run.subject_id));
        // The step as people call it: its name, else its id.
        let step_name = workflow
            .step_index(step)
            .and_then(|at| workflow.step(at).name.clone())
            .unwrap_or_else(|| step.replace(['-', '_'], " "));
        // (roles, reason, text, link) per ask, and the due time `{due}` stands for.
        let mut due = None;
        let asks: Vec<(Vec<String>, &str, String, String)> = match effect {
            EffectKind::CreateTask { title: task, raci, due_at, .. } => {
                due = *due_at;
                let slot = if due.is_some() { DUE } else { "" };
                let link = format!("/ui/work/{}", url_part(key));
                let mut asks =
                    vec![(raci.responsible.clone(), "task_assigned", format!("New task: {task}{slot}"), link)];
                if !raci.consulted.is_empty() {
                    // Their input is sought: they are told, and comment on the item's page; the
                    // task itself stays the responsible people's.
                    let text = format!("Your input is sought on the task “{task}”{slot}, for “{title}”");
                    asks.push((raci.consulted.clone(), "consulted", text, item_link));
                }
                asks
            }
            EffectKind::RequestApproval { approvers, due_at, round } => approvers
                .iter()
                .map(|role| {
                    due = *due_at;
                    let slot = if due.is_some() { DUE } else { "" };
                    let again = if *round > 1 {
                        format!(", round {round}, after changes were asked for")
                    } else {
                        String::new()
                    };
                    let text = format!("Your approval is needed on “{title}”: {step_name}{again}{slot}");
                    let link = format!("/ui/work/{}", url_part(&format!("{key}:{role}")));
                    (vec![role.clone()], "approval_requested", text, link)
                })
                .collect(),
            EffectKind::Notify { to, message, reason } => {
                let reason = match reason {
                    NotifyReason::ApprovalReminder => "reminder",
                    NotifyReason::Escalation => "escalation",
                    NotifyReason::TaskOverdue => "overdue",
                    NotifyReason::TaskCompleted => "completed",
                    NotifyReason::Message => "message",
                };
                // A reminder or an escalation leads to the approval waiting, when it is one.
                let link = match reason {
                    "reminder" | "escalation" => self.open_approval_link(run, step)?.unwrap_or(item_link),
                    _ => item_link,
                };
                vec![(vec![to.clone()], reason, format!("{message} — “{title}”"), link)]
            }
            _ => Vec::new(),
        };
        Ok(asks
            .into_iter()
            .map(|(roles, reason, text, link)| Ask {
                people: self.directory.resolve_all(&roles, &workflow.roles, subject, now),
                reason: reason.to_owned(),
                text,
                due_at: due,
                link,
            })
            .filter(|ask| !ask.people.is_empty())
            .collect())
    }

    /// The page of the one approval open at `step` of `run`, if exactly one is (a sequential
    /// stage, a single approver); `None` when several are open or none.
    fn open_approval_link(&self, run: super::RunRef<'_>, step: &str) -> Result<Option<String>, Error> {
        let open: Vec<WorkItem> = self
            .store
            .work_of_subject(run.subject_id, WORK_OF_SUBJECT_SCAN_MAX)?
            .into_iter()
            .filter(|w| w.run == run.id && w.step == step && w.kind == WorkKind::Approval && w.status == "open")
            .collect();
        Ok(match open.as_slice() {
            [only] => Some(format!("/ui/work/{}", url_part(&only.id))),
            _ => None,
        })
    }

    /// Sends each person whose digest hour has come (in their time zone) one email with what
    /// was held for them since their last digest. Returns how many digests were queued.
    pub fn send_digests(&mut self, now: Timestamp) -> Result<usize, Error> {
        let held = self.store.undigested(DIGEST_ROUND_MAX)?;
        let mut sent = 0;
        let mut i = 0;
        while i < held.len() {
            let person = held[i].person.clone();
            let end = held[i..].iter().position(|n| n.person != person).map_or(held.len(), |p| i + p);
            let group = &held[i..end];
            i = end;
            let prefs = self.directory.person(&person).map(|p| p.notify.clone()).unwrap_or_default();
            let tz = self.directory.zone_of(&person);
            let local = now.to_chrono().with_timezone(&tz);
            if chrono::Timelike::hour(&local) < u32::from(prefs.digest_hour) {
                continue;
            }
            let date = local.date_naive().to_string();
            let setting = format!("digest.{person}");
            if self.store.setting(&setting)?.as_deref() == Some(date.as_str()) {
                continue;
            }
            let mut text = format!("Your Flowmark digest for {date}: {} update(s)\n\n", group.len());
            for n in group {
                text.push_str(&format!("- {}\n  {}\n", n.text, n.link.as_deref().unwrap_or_default()));
            }
            let key = format!("digest/{person}/{date}");
            let entry = OutboxEntry {
                key: key.clone(),
                run: NO_RUN,
                step: "digest".to_owned(),
                effect: OutboxEffect::Deliver(Delivery::Email {
                    to: person.clone(),
                    subject: format!("Flowmark digest: {} update(s)", group.len()),
                    text,
                    link: self.public_url.clone(),
                }),
                attempts: 0,
                lost: 0,
                next_attempt_at: now,
                owner: None,
            };
            let keys: Vec<&str> = group.iter().map(|n| n.key.as_str()).collect();
            let settings = [(setting.as_str(), date.as_str())];
            self.store.write(
                &Batch { outbox: vec![&entry], digested: keys, settings: settings.to_vec(), ..Batch::default() },
                now,
            )?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// The message a notification's delivery sends, the outbound work it is routed as, and whom
/// it is for (the person's address; none for a chat post).
pub(super) fn delivery_message(delivery: &Delivery) -> (Outbound, Message, String) {
    match delivery {
        Delivery::Email { to, subject, text, link } => {
            let body = if link.is_empty() { text.to_owned() } else { format!("{text}\n\n{link}\n") };
            let message = Message::Email {
                to: Some(to.to_owned()),
                template: None,
                subject: Some(subject.to_owned()),
                html: None,
                text: Some(body),
                from: None,
                transactional: true,
            };
            (Outbound::Email, message, to.to_owned())
        }
        Delivery::Chat { url, text, link } => {
            let text = if link.is_empty() { text.to_owned() } else { format!("{text} <{link}|Open in Flowmark>") };
            let message = Message::Webhook {
                url: url.to_owned(),
                method: "POST".to_owned(),
                headers: Vec::new(),
                body: Some(json!({ "text": text })),
            };
            (Outbound::Chat, message, String::new())
        }
    }
}

/// Emails mentioned as `@name@example.com` in a text, lower-cased, without repeats.
pub fn mentions(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '<' | '>'))
        .filter_map(|word| word.strip_prefix('@'))
        .map(|email| email.trim_end_matches(['.', ':', '!', '?']).to_lowercase())
        .filter(|email| crate::directory::looks_like_email(email))
        .collect();
    found.sort();
    found.dedup();
    found
}

fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Why the machine ignored the input of `t`, if it did: nothing of it is to be committed.
fn ignored(t: &Transition) -> Option<String> {
    t.history.iter().find_map(|h| match &h.kind {
        HistoryKind::InputIgnored { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// Most work items of a subject read to find the approval a reminder or escalation is about.
const WORK_OF_SUBJECT_SCAN_MAX: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_emails_after_an_at_sign() {
        assert_eq!(
            mentions("Thanks @Dana@Example.com, and @lee@example.com: see (@dana@example.com). @notme"),
            ["dana@example.com", "lee@example.com"]
        );
    }

    #[test]
    fn a_delivery_becomes_an_email_or_a_chat_post() {
        let email = Delivery::Email {
            to: "a@example.com".into(),
            subject: "S".into(),
            text: "T".into(),
            link: "http://x/ui".into(),
        };
        let (kind, message, to) = delivery_message(&email);
        assert_eq!((kind, to.as_str()), (Outbound::Email, "a@example.com"));
        assert!(
            matches!(message, Message::Email { transactional: true, text: Some(t), .. } if t == "T\n\nhttp://x/ui\n")
        );
        let chat = Delivery::Chat { url: "https://hooks.example.com/x".into(), text: "T".into(), link: "".into() };
        let (kind, message, to) = delivery_message(&chat);
        assert_eq!((kind, to.as_str()), (Outbound::Chat, ""));
        assert!(matches!(message, Message::Webhook { body: Some(b), .. } if b == json!({ "text": "T" })));
    }
}
