//! The people's side of the store's rows: work items (tasks and approval requests) with the
//! people who may act on them, the changes a batch makes to them, comments, notifications, and
//! the web UI's sessions.
//!
//! Work items are a projection of run states, written by the runtime in the same batch as the
//! transition that opens or closes them: an open item exists exactly while its run waits at
//! the step for that role.

use flowmark_core::Timestamp;
use flowmark_core::engine::RunId;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkKind {
    /// A `task` step's work, for its responsible role.
    Task,
    /// One approver role's decision on an `approval` step.
    Approval,
}

impl WorkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Task => "task",
            WorkKind::Approval => "approval",
        }
    }

    pub fn parse(text: &str) -> Option<WorkKind> {
        match text {
            "task" => Some(WorkKind::Task),
            "approval" => Some(WorkKind::Approval),
            _ => None,
        }
    }
}

/// Work for people: a task, or one approver role's decision on an approval, of one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkItem {
    /// The effect key that asked for it (a task), with `:role` for an approval.
    pub id: String,
    pub run: RunId,
    pub workflow_id: String,
    pub subject_id: String,
    pub step: String,
    pub kind: WorkKind,
    /// The responsible role (a task) or the approver role (an approval).
    pub role: String,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// `open` or `closed`.
    pub status: String,
    /// The person who claimed it or it was reassigned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// How it closed: `completed`, a decision (`approve`, …), `cancelled`, `withdrawn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// RACI, form fields, the approval's round: what a page shows beside the title.
    pub detail: Value,
    /// Who may act on it now (empty once closed).
    pub people: Vec<String>,
}

/// A change to the work projection, applied in a batch after its transitions.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkChange {
    /// A new open item; ignored when the id exists (a retried commit).
    Open(Box<WorkItem>),
    /// After a transition of `run`: its open items whose `(step, role)` is not in `keep`
    /// close, with the outcome `outcomes` names for them, else `otherwise`.
    Settle {
        run: RunId,
        keep: Vec<(String, String)>,
        /// `(step, role, outcome, by)`; a role of `*` matches every role at the step.
        outcomes: Vec<(String, String, String, Option<String>)>,
        otherwise: String,
    },
    /// Who may act on an open item now, and whom it is assigned to.
    People { id: String, assignee: Option<String>, people: Vec<String> },
    /// `people` may act too on every open item of `run` at `step` (an escalation reassigned it).
    Join { run: RunId, step: String, people: Vec<String> },
}

/// A comment on an item (a subject), optionally about one work item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comment {
    pub subject_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_id: Option<String>,
    pub by: String,
    /// The text; for an attachment, its title.
    pub body: String,
    pub at: Timestamp,
    /// An attachment: the link (http or https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// An attachment that is a new version of the item's deliverable: its number (1, 2, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One notification for one person; its key makes it once-only.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notification {
    /// The effect that caused it and the person: `<effect key>/<person>`.
    pub key: String,
    pub person: String,
    /// `task_assigned`, `approval_requested`, `reminder`, `escalation`, `mention`, …
    pub reason: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub at: Timestamp,
    /// Held for the person's daily digest instead of sent at once.
    pub digest: bool,
}

/// A web UI session, stored by the SHA-256 of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub email: String,
    /// The token every form of this session must carry.
    pub csrf: String,
    pub expires_at: Timestamp,
}
