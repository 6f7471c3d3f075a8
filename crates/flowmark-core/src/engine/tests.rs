//! Scenario tests of the run state machine, driven through `handle` only.

use serde_json::json;

use super::*;
use crate::diagnostic::Source;
use crate::parse::compile;

fn workflow(text: &str) -> Workflow {
    let compiled = compile(&Source::new("test.yaml", text));
    assert!(compiled.diagnostics.is_empty(), "{:#?}", compiled.diagnostics);
    compiled.workflow.unwrap()
}

fn nurture() -> Workflow {
    workflow(include_str!("../../../../blueprints/whitepaper-nurture.yaml"))
}

fn event(name: &str, at: i64, properties: Value) -> Event {
    Event {
        id: format!("m-{name}-{at}"),
        name: name.into(),
        at: Timestamp(at),
        payload: json!({ "event": name, "properties": properties }).into(),
    }
}

/// 2026-11-24T12:00:00Z: midday, outside quiet hours in UTC.
const NOON: i64 = 1_795_953_600_000;

/// A new run of `wf` for subject `c`, started at `NOON` with `facts`.
fn start_at_noon(wf: &Workflow, facts: &Facts<'_>) -> Transition {
    handle(wf, Run::new(RunId(1), wf, 1, "c", Timestamp(NOON)), &Input::Start { event: None }, facts, Timestamp(NOON))
}

#[test]
fn nurture_sends_waits_and_routes_by_score() {
    let wf = nurture();
    let contact = json!({ "first_name": "Ada", "email": "ada@example.com", "scores": { "engagement": 40 } });
    let facts = Facts { subject: &contact, ..Facts::empty() };
    let run = Run::new(RunId(7), &wf, 1, "c-1", Timestamp(NOON));
    let t = handle(
        &wf,
        run,
        &Input::Start { event: Some(event("Whitepaper Downloaded", NOON, json!({"topic": "automation"}))) },
        &facts,
        Timestamp(NOON),
    );
    assert_eq!(t.effects.len(), 1);
    let message = crate::render::render_message(&wf, &t.effects[0], &contact, &Value::Null).unwrap();
    let crate::render::Message::Email { subject, .. } = message else { panic!("expected an email, got {message:?}") };
    assert_eq!(subject.as_deref(), Some("Your guide, Ada"));
    assert_eq!(t.effects[0].key, "7-thanks-2");
    assert_eq!(t.timers.len(), 1, "the click wait arms its timeout");
    let click = event("Email Link Clicked", NOON + 1000, json!({ "email_id": t.effects[0].key }));
    let t = handle(&wf, t.run, &Input::Event { event: click }, &facts, Timestamp(NOON + 1000));
    assert_eq!(t.timers_cancelled.len(), 1, "the timeout is cancelled");
    // Score goes +30 as an effect (which persists it), and the branch right after already
    // reads the new score (40 + 30 = 70): hot enough for sales.
    assert!(matches!(t.effects[0].kind, EffectKind::AdjustScore { .. }));
    let evaluated = t.decisions.iter().find(|d| d.kind == "branch").unwrap();
    assert_eq!(evaluated.expression.as_deref(), Some("contact.scores.engagement >= 50"));
    assert_eq!(evaluated.inputs["contact.scores.engagement"], json!(70));
    assert_eq!(evaluated.result, json!(true));
    assert_eq!(evaluated.path.as_deref(), Some("handoff"));
    assert_eq!(t.run.status, RunStatus::Completed, "hand-off, CRM, end");

    // A colder contact (10 + 30 = 40) gets the case study instead.
    let cold = json!({ "first_name": "Bo", "scores": { "engagement": 10 } });
    let facts = Facts { subject: &cold, ..Facts::empty() };
    let run = Run::new(RunId(8), &wf, 1, "c-2", Timestamp(NOON));
    let start = Input::Start { event: Some(event("Whitepaper Downloaded", NOON, json!({"topic": "automation"}))) };
    let t = handle(&wf, run, &start, &facts, Timestamp(NOON));
    let click = event("Email Link Clicked", NOON + 1000, json!({ "email_id": t.effects[0].key }));
    let t = handle(&wf, t.run, &Input::Event { event: click }, &facts, Timestamp(NOON + 1000));
    let taken = t.decisions.iter().rev().find(|d| d.kind == "branch").unwrap();
    assert_eq!(taken.path.as_deref(), Some("case-study"));
    assert_eq!(t.run.status, RunStatus::Active);
}

#[test]
fn a_wait_times_out_onto_its_timeout_path() {
    let wf = nurture();
    let contact = json!({ "first_name": "Bo" });
    let facts = Facts { subject: &contact, ..Facts::empty() };
    let t = handle(
        &wf,
        Run::new(RunId(1), &wf, 1, "c-2", Timestamp(NOON)),
        &Input::Start { event: None },
        &facts,
        Timestamp(NOON),
    );
    let timer = t.timers[0].clone();
    let t = handle(&wf, t.run, &Input::TimerFired { timer: timer.timer }, &facts, timer.due_at);
    let wait = t.decisions.iter().find(|d| d.kind == "wait").unwrap();
    assert_eq!(wait.path.as_deref(), Some("reminder"));
    let message = crate::render::render_message(&wf, &t.effects[0], &contact, &Value::Null).unwrap();
    assert!(
        matches!(message, crate::render::Message::Email { subject: Some(s), .. } if s == "Did you get a chance to read it?")
    );
    // Firing the same timer again is ignored, not applied twice.
    let again = handle(&wf, t.run.clone(), &Input::TimerFired { timer: timer.timer }, &facts, timer.due_at);
    assert!(again.effects.is_empty());
    assert_eq!(again.run, t.run);
}

#[test]
fn a_goal_event_ends_the_run_from_any_step() {
    let wf = nurture();
    let facts = Facts::empty();
    let t = start_at_noon(&wf, &facts);
    let t = handle(
        &wf,
        t.run,
        &Input::Event { event: event("Demo Booked", NOON + 5, json!({})) },
        &facts,
        Timestamp(NOON + 5),
    );
    assert_eq!(t.run.status, RunStatus::Converted);
    assert!(t.run.timers.is_empty() && t.run.tokens.is_empty());
    assert_eq!(t.timers_cancelled.len(), 1);
    assert!(
        t.effects.iter().any(|e| matches!(&e.kind, EffectKind::RecordConversion { value: Some(v), .. } if *v == 500.0))
    );
}

#[test]
fn quiet_hours_hold_a_message_until_the_window_opens() {
    let wf = nurture();
    let facts = Facts { timezone: Some(chrono_tz::America::New_York), ..Facts::empty() };
    // 03:00Z is 22:00 in New York: inside 21:00–08:00.
    let night = NOON - 9 * 3_600_000;
    let t = handle(
        &wf,
        Run::new(RunId(1), &wf, 1, "c", Timestamp(night)),
        &Input::Start { event: None },
        &facts,
        Timestamp(night),
    );
    assert!(t.effects.is_empty());
    assert!(t.history.iter().any(|h| matches!(h.kind, HistoryKind::QuietHoursHeld { .. })));
    // 08:00 in New York is 13:00Z.
    assert_eq!(t.timers[0].due_at, Timestamp(NOON + 3_600_000));
    let t = handle(
        &wf,
        t.run.clone(),
        &Input::TimerFired { timer: t.timers[0].timer },
        &facts,
        Timestamp(NOON + 3_600_000),
    );
    assert!(matches!(t.effects[0].kind, EffectKind::SendMessage { channel: crate::model::Channel::Email, .. }));
}

#[test]
fn no_consent_or_a_suppression_skips_the_message_and_says_why() {
    let wf = nurture();
    for (subject, reason) in [
        (json!({ "consent": { "email": false } }), "no consent: `contact.consent.email` is false"),
        (json!({ "unsubscribed": true, "suppressed_reason": "bounced" }), "suppressed: the contact is bounced"),
    ] {
        let facts = Facts { subject: &subject, ..Facts::empty() };
        let t = start_at_noon(&wf, &facts);
        assert!(t.effects.is_empty(), "{subject}");
        let refused = t.history.iter().find_map(|h| match &h.kind {
            HistoryKind::NotPermitted { reason, .. } => Some(reason.as_str()),
            _ => None,
        });
        assert_eq!(refused, Some(reason));
    }
    let consenting = json!({ "consent": { "email": true, "sms": false } });
    let facts = Facts { subject: &consenting, ..Facts::empty() };
    let t = start_at_noon(&wf, &facts);
    assert_eq!(t.effects.len(), 1, "consent for email; sms does not matter here");
}

#[test]
fn a_cap_set_to_hold_keeps_the_message_until_the_window_has_room() {
    let wf = workflow(
        r#"
id: held
subject: contact
caps:
  email: { max: 2, per: 7d, action: hold }
steps:
  - id: news
    action: { email: { subject: "News", text: "Hello" } }
"#,
    );
    const DAY: i64 = 24 * 3_600_000;
    let email = crate::model::Channel::Email;
    let sent =
        [Sent { channel: email, at: Timestamp(NOON - 3 * DAY) }, Sent { channel: email, at: Timestamp(NOON - DAY) }];
    let facts = Facts { sent: &sent, ..Facts::empty() };
    let t = start_at_noon(&wf, &facts);
    assert!(t.effects.is_empty(), "held, not sent");
    let until = Timestamp(NOON + 4 * DAY);
    assert!(t.history.iter().any(|h| h.kind == HistoryKind::CapHeld { channel: email, sent_count: 2, max: 2, until }));
    assert_eq!(t.timers.len(), 1);
    assert_eq!(t.timers[0].due_at, until, "when the older send leaves the 7-day window");
    let timer = t.timers[0].timer;
    // When it fires, the older send has left the window: the email goes.
    let t = handle(&wf, t.run, &Input::TimerFired { timer }, &facts, until);
    assert_eq!(t.effects.len(), 1, "{:#?}", t.history);
    assert_eq!(t.run.status, RunStatus::Completed);
}

#[test]
fn a_frequency_cap_skips_the_message_and_says_so() {
    let wf = nurture();
    let sent = [Sent { channel: crate::model::Channel::Email, at: Timestamp(NOON - 1000) }; 3];
    let facts = Facts { sent: &sent, ..Facts::empty() };
    let t = start_at_noon(&wf, &facts);
    assert!(t.effects.is_empty());
    assert!(t.history.iter().any(|h| matches!(h.kind, HistoryKind::Capped { sent_count: 3, max: 3, .. })));
}

#[test]
fn an_event_just_before_the_wait_still_satisfies_it() {
    let wf = workflow(
        "id: w\nsubject: contact\nsteps:\n  - id: hold\n    wait: { event: Opened, timeout: 1d }\n    on_timeout: lost\n  - id: won\n    exit: won\n  - id: lost\n    exit: lost\n",
    );
    let recent = [event("Opened", NOON - 1000, json!({}))];
    let facts = Facts { recent_events: &recent, ..Facts::empty() };
    let t = start_at_noon(&wf, &facts);
    assert_eq!(t.run.status, RunStatus::Exited);
    assert!(t.history.iter().any(|h| matches!(&h.kind, HistoryKind::RunEnded { reason: Some(r), .. } if r == "won")));
}

#[test]
fn blog_post_review_loops_back_on_changes_and_joins_after_distribution() {
    let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
    let item = json!({ "title": "Flows", "word_count": 900 });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let mut now = Timestamp(NOON);
    let step = |run: Run, input: Input, now: Timestamp| handle(&wf, run, &input, &facts, now);
    let t = step(Run::new(RunId(3), &wf, 1, "post-1", now), Input::Start { event: None }, now);
    assert!(
        matches!(&t.effects[0].kind, EffectKind::CreateTask { title, .. } if title == "Keyword research for Flows")
    );
    now = now.plus(Duration::HOUR);
    let fields: serde_json::Map<String, Value> =
        [("keywords".to_owned(), json!("workflow automation"))].into_iter().collect();
    let t = step(t.run, Input::TaskCompleted { via: None, step: "research".into(), by: "sam".into(), fields }, now);
    assert!(
        matches!(&t.effects.last().unwrap().kind, EffectKind::CreateTask { description: Some(d), .. } if d == "Target keywords: workflow automation")
    );
    let draft_fields: serde_json::Map<String, Value> =
        [("draft_url".to_owned(), json!("https://docs/1"))].into_iter().collect();
    let t = step(
        t.run,
        Input::TaskCompleted { via: None, step: "draft".into(), by: "wes".into(), fields: draft_fields.clone() },
        now,
    );
    assert!(matches!(&t.effects[0].kind, EffectKind::RequestApproval { round: 1, .. }));
    let decide = |run: Run, role: &str, decision: Decision| {
        step(
            run,
            Input::ApprovalDecided {
                via: None,
                step: "review".into(),
                role: role.into(),
                by: role.into(),
                decision,
                comment: None,
            },
            now,
        )
    };
    let t = decide(t.run, "editor", Decision::Approve);
    let t = decide(t.run, "seo", Decision::RequestChanges);
    assert!(
        t.history
            .iter()
            .any(|h| matches!(h.kind, HistoryKind::ApprovalResolved { outcome: "changes_requested", round: 1 }))
    );
    assert_eq!(&*wf.step(t.run.tokens[0].at).id, "draft", "changes requested goes back to the draft");
    let t = step(
        t.run,
        Input::TaskCompleted { via: None, step: "draft".into(), by: "wes".into(), fields: draft_fields },
        now,
    );
    assert!(matches!(&t.effects[0].kind, EffectKind::RequestApproval { round: 2, .. }), "a fresh round starts");
    let t = decide(t.run, "editor", Decision::Approve);
    let t = decide(t.run, "seo", Decision::ApproveWithChanges);
    let t = step(
        t.run,
        Input::ApprovalDecided {
            via: None,
            step: "brand-check".into(),
            role: "brand".into(),
            by: "bea".into(),
            decision: Decision::Approve,
            comment: None,
        },
        now,
    );
    // Approved → brand sign-off → publish → parallel newsletter + social task.
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e.kind, EffectKind::SendMessage { channel: crate::model::Channel::Webhook, .. }))
    );
    assert_eq!(t.run.tokens.len(), 2, "newsletter joined, social task open");
    let t = step(
        t.run,
        Input::TaskCompleted { via: None, step: "social".into(), by: "wes".into(), fields: Default::default() },
        now,
    );
    assert_eq!(t.run.status, RunStatus::Completed);
}

#[test]
fn approvals_escalate_to_the_accountable_role() {
    let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
    let item = json!({ "title": "Flows", "word_count": 900 });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let now = Timestamp(NOON);
    let mut t = handle(&wf, Run::new(RunId(3), &wf, 1, "p", now), &Input::Start { event: None }, &facts, now);
    for (step, field, value) in [("research", "keywords", "k"), ("draft", "draft_url", "u")] {
        let fields = [(field.to_owned(), json!(value))].into_iter().collect();
        t = handle(
            &wf,
            t.run,
            &Input::TaskCompleted { via: None, step: step.into(), by: "x".into(), fields },
            &facts,
            now,
        );
    }
    let escalation = t.timers.iter().find(|r| r.purpose == TimerPurpose::ApprovalEscalation).unwrap().clone();
    let t = handle(&wf, t.run, &Input::TimerFired { timer: escalation.timer }, &facts, escalation.due_at);
    assert!(
        t.effects.iter().any(
            |e| matches!(&e.kind, EffectKind::Notify { to, reason: NotifyReason::Escalation, .. } if to == "lead")
        )
    );
}

/// The blog post up to its review, with the editor's approval given: `(workflow, run, now)`.
fn blog_post_in_review() -> (Workflow, Run, Timestamp) {
    let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
    let item = json!({ "title": "Flows" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let now = Timestamp(NOON);
    let t = handle(&wf, Run::new(RunId(4), &wf, 1, "post-1", now), &Input::Start { event: None }, &facts, now);
    let complete = |run: Run, step: &str, field: &str| {
        let fields = [(field.to_owned(), json!("x"))].into_iter().collect();
        handle(&wf, run, &Input::TaskCompleted { via: None, step: step.into(), by: "sam".into(), fields }, &facts, now)
    };
    let t = complete(t.run, "research", "keywords");
    let t = complete(t.run, "draft", "draft_url");
    let approve = Input::ApprovalDecided {
        via: None,
        step: "review".into(),
        role: "editor".into(),
        by: "dana".into(),
        decision: Decision::Approve,
        comment: None,
    };
    let t = handle(&wf, t.run, &approve, &facts, now);
    assert!(matches!(&t.run.tokens[0].state, TokenState::AwaitingApproval(s) if s.decisions.len() == 1));
    (wf, t.run, now)
}

#[test]
fn a_reopened_task_takes_the_run_back_and_withdraws_what_it_waited_on() {
    let (wf, run, now) = blog_post_in_review();
    let item = json!({ "title": "Flows" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let later = now.plus(Duration::HOUR);
    let reopen = Input::Reopen { step: "draft".into(), by: "dana".into(), reason: Some("wrong brief".into()) };
    let t = handle(&wf, run.clone(), &reopen, &facts, later);
    let draft = wf.step_index("draft").unwrap();
    assert_eq!(t.run.tokens.len(), 1);
    assert_eq!(t.run.tokens[0].at, draft);
    assert!(matches!(t.run.tokens[0].state, TokenState::AwaitingTask { due: Some(_) }));
    assert_eq!(t.run.timers.len(), 1, "the review's reminder and escalation are gone, the draft's due timer armed");
    assert!(t.history.iter().any(|h| matches!(&h.kind,
        HistoryKind::TaskReopened { by, reason: Some(r), from } if by == "dana" && r == "wrong brief" && from == "review")));
    assert!(
        matches!(&t.effects[..], [e] if matches!(&e.kind, EffectKind::CreateTask { title, .. } if title == "Draft Flows"))
    );
    // Completing the draft again starts a fresh review round.
    let fields = [("draft_url".to_owned(), json!("y"))].into_iter().collect();
    let t = handle(
        &wf,
        t.run,
        &Input::TaskCompleted { via: None, step: "draft".into(), by: "sam".into(), fields },
        &facts,
        later,
    );
    assert!(
        matches!(&t.effects[0].kind, EffectKind::RequestApproval { round: 2, approvers, .. } if approvers.len() == 2)
    );

    // Refusals change nothing but the history.
    for (input, why) in [
        (Input::Reopen { step: "review".into(), by: "dana".into(), reason: None }, "not a task"),
        (Input::Reopen { step: "nowhere".into(), by: "dana".into(), reason: None }, "no step"),
    ] {
        let t = handle(&wf, run.clone(), &input, &facts, later);
        assert_eq!(t.run.tokens, run.tokens, "{why}");
        assert!(
            matches!(&t.history[..], [h] if matches!(h.kind, HistoryKind::InputIgnored { input: "reopen", .. })),
            "{why}"
        );
    }
}

#[test]
fn a_new_deliverable_version_voids_the_decisions_given_and_starts_a_new_round() {
    let (wf, run, now) = blog_post_in_review();
    let item = json!({ "title": "Flows" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let later = now.plus(Duration::HOUR);
    let update = Input::DeliverableUpdated { by: "sam".into(), version: Some("v2".into()) };
    let t = handle(&wf, run.clone(), &update, &facts, later);
    let TokenState::AwaitingApproval(state) = &t.run.tokens[0].state else { panic!("still in review") };
    assert_eq!((state.round, state.decisions.len()), (2, 0), "the editor's approval no longer counts");
    assert!(
        t.history
            .iter()
            .any(|h| matches!(&h.kind, HistoryKind::ApprovalReset { decisions: 1, version: Some(v), .. } if v == "v2"))
    );
    assert!(
        matches!(&t.effects[..], [e] if matches!(&e.kind, EffectKind::RequestApproval { round: 2, approvers, .. } if approvers.len() == 2))
    );
    let armed: Vec<Timestamp> = t.run.timers.iter().map(|t| t.due_at).collect();
    assert!(armed.iter().all(|at| *at > later), "the clocks restart from the new version: {armed:?}");
    assert_eq!(armed.len(), run.timers.len());
    // Outside an approval, a new version changes nothing.
    let (wf2, at_research) = {
        let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
        let t = handle(&wf, Run::new(RunId(5), &wf, 1, "p", now), &Input::Start { event: None }, &facts, now);
        (wf, t.run)
    };
    let t = handle(&wf2, at_research.clone(), &update, &facts, later);
    assert_eq!(t.run.tokens, at_research.tokens);
    assert!(
        matches!(&t.history[..], [h] if matches!(h.kind, HistoryKind::InputIgnored { input: "deliverable_updated", .. }))
    );
}

#[test]
fn business_day_deadlines_skip_weekends_and_holidays() {
    let wf = workflow(
        r#"
id: press-release
subject: item
timezone: Europe/Paris
working_days:
  days: [mon, tue, wed, thu, fri]
  holidays: ["2026-12-25"]
roles:
  writer: { person: sam@example.com }
  legal: { person: lee@example.com }
steps:
  - id: draft
    task:
      title: Draft the release
      responsible: writer
      accountable: writer
      due: 1d
      business_days: true
  - id: sign-off
    approval:
      approvers: [legal]
      accountable: writer
      due: 2d
      remind: 4h
      escalate: { after: 3d }
      business_days: true
  - id: done
    exit: {}
"#,
    );
    let item = json!({ "title": "Launch" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let at = |text: &str| Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(text).unwrap());
    // Friday 2026-11-27, 15:00 in Paris: one working day later is Monday 15:00.
    let now = at("2026-11-27T14:00:00Z");
    let t = handle(&wf, Run::new(RunId(9), &wf, 1, "pr-1", now), &Input::Start { event: None }, &facts, now);
    let EffectKind::CreateTask { due_at, .. } = &t.effects[0].kind else { panic!("{:?}", t.effects) };
    assert_eq!(*due_at, Some(at("2026-11-30T14:00:00Z")));
    assert_eq!(t.timers[0].due_at, at("2026-11-30T14:00:00Z"), "the due timer fires then too");

    // Completed on Wednesday 2026-12-23 at 17:00: Thursday, the 25th off, Friday, then Monday.
    let now = at("2026-12-23T16:00:00Z");
    let done = Input::TaskCompleted { via: None, step: "draft".into(), by: "sam".into(), fields: Default::default() };
    let t = handle(&wf, t.run, &done, &facts, now);
    let EffectKind::RequestApproval { due_at, .. } = &t.effects[0].kind else { panic!("{:?}", t.effects) };
    assert_eq!(*due_at, Some(at("2026-12-28T16:00:00Z")), "2d: Thu 24th + Fri 26th");
    let armed = |purpose: TimerPurpose| t.timers.iter().find(|r| r.purpose == purpose).unwrap().due_at;
    assert_eq!(armed(TimerPurpose::ApprovalReminder), at("2026-12-23T20:00:00Z"), "4h fits in Wednesday");
    assert_eq!(armed(TimerPurpose::ApprovalEscalation), at("2026-12-29T16:00:00Z"), "3d: Thu, Fri, Mon");
}

#[test]
fn without_business_days_a_deadline_counts_every_hour() {
    let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
    let item = json!({ "title": "Flows" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    // Friday 2026-11-27 at noon: two working days later would be Tuesday; without
    // `business_days`, the research task (`due: 2d`) is due on Sunday.
    let friday = Timestamp(NOON + 3 * 24 * 60 * 60 * 1000);
    let t = handle(&wf, Run::new(RunId(1), &wf, 1, "c", friday), &Input::Start { event: None }, &facts, friday);
    let EffectKind::CreateTask { due_at: Some(due_at), .. } = &t.effects[0].kind else { panic!("{:?}", t.effects) };
    assert_eq!(*due_at, Timestamp(friday.ms() + 2 * 24 * 60 * 60 * 1000));
}

/// The reason an input was ignored, if it was.
fn ignored_reason(t: &Transition) -> Option<&str> {
    t.history.iter().find_map(|h| match &h.kind {
        HistoryKind::InputIgnored { reason, .. } => Some(reason.as_str()),
        _ => None,
    })
}

#[test]
fn an_author_never_approves_their_own_work_and_one_person_decides_one_stage() {
    let wf = workflow(include_str!("../../../../blueprints/blog-post.yaml"));
    let item = json!({ "title": "Flows" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    let now = Timestamp(NOON);
    let mut t = handle(&wf, Run::new(RunId(5), &wf, 1, "post-1", now), &Input::Start { event: None }, &facts, now);
    for (step, field, by) in [("research", "keywords", "sam@x.com"), ("draft", "draft_url", "wes@x.com")] {
        let fields = [(field.to_owned(), json!("x"))].into_iter().collect();
        t = handle(
            &wf,
            t.run,
            &Input::TaskCompleted { via: None, step: step.into(), by: by.into(), fields },
            &facts,
            now,
        );
    }
    let decide = |run: Run, role: &str, by: &str| {
        let input = Input::ApprovalDecided {
            via: None,
            step: "review".into(),
            role: role.into(),
            by: by.into(),
            decision: Decision::Approve,
            comment: None,
        };
        handle(&wf, run, &input, &facts, now)
    };
    // The writer of the draft under review, in any case of their address.
    let refused = decide(t.run.clone(), "editor", "WES@x.com");
    let reason = ignored_reason(&refused).expect("refused");
    assert!(reason.contains("completed `draft`") && reason.contains("may not approve their own work"), "{reason}");
    assert_eq!(refused.run.tokens, t.run.tokens, "nothing moved");
    // The researcher's task was done in the same millisecond; the draft, nearer the review, is
    // the work under review, so the researcher is not its author.
    assert_eq!(ignored_reason(&decide(t.run.clone(), "editor", "sam@x.com")), None);
    let t = decide(t.run, "editor", "dana@x.com");
    assert_eq!(ignored_reason(&t), None);
    let twice = decide(t.run.clone(), "seo", "Dana@x.com");
    assert!(ignored_reason(&twice).expect("refused").contains("has already decided a stage of round 1"));
    let t = decide(t.run, "seo", "omar@x.com");
    assert_eq!(ignored_reason(&t), None, "another person decides the second role");
}

#[test]
fn separation_of_duties_can_be_turned_off_per_approval() {
    let source = "id: relaxed\nsubject: item\nroles:\n  writer: { team: content }\n  editor: { person: e@x.com }\nsteps:\n  - id: draft\n    task: { title: Draft, responsible: writer, accountable: editor }\n  - id: review\n    approval:\n      mode: sequential\n      approvers: [editor, writer]\n      allow_self_approval: true\n      distinct_approvers: false\n";
    let wf = workflow(source);
    let facts = Facts::empty();
    let now = Timestamp(NOON);
    let t = handle(&wf, Run::new(RunId(6), &wf, 1, "i", now), &Input::Start { event: None }, &facts, now);
    let t = handle(
        &wf,
        t.run,
        &Input::TaskCompleted { via: None, step: "draft".into(), by: "wes".into(), fields: Default::default() },
        &facts,
        now,
    );
    let mut run = t.run;
    for role in ["editor", "writer"] {
        let input = Input::ApprovalDecided {
            via: None,
            step: "review".into(),
            role: role.into(),
            by: "wes".into(),
            decision: Decision::Approve,
            comment: None,
        };
        let t = handle(&wf, run, &input, &facts, now);
        assert_eq!(ignored_reason(&t), None, "{role}");
        run = t.run;
    }
    assert_eq!(run.status, RunStatus::Completed);
}

#[test]
fn each_stage_of_a_sequential_approval_has_its_own_clock() {
    let wf = workflow(
        r#"
id: launch
subject: item
roles:
  legal: { person: lea@x.com }
  brand: { person: bo@x.com }
  vp: { person: vi@x.com }
  lead: { person: li@x.com }
steps:
  - id: signoff
    approval:
      mode: sequential
      approvers: [legal, brand, vp]
      accountable: lead
      due: 1d
      remind: 4h
      escalate: { after: 1d, to: accountable, action: reassign }
"#,
    );
    let item = json!({ "title": "Launch" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    const HOUR: i64 = 60 * 60 * 1000;
    let now = Timestamp(NOON);
    let t = handle(&wf, Run::new(RunId(3), &wf, 1, "launch-1", now), &Input::Start { event: None }, &facts, now);
    let armed = |t: &Transition, purpose: TimerPurpose| t.timers.iter().find(|r| r.purpose == purpose).unwrap().clone();
    let first_escalation = armed(&t, TimerPurpose::ApprovalEscalation);
    assert_eq!(first_escalation.due_at, Timestamp(NOON + 24 * HOUR));
    let decide = |run: Run, role: &str, by: &str, at: i64| {
        let input = Input::ApprovalDecided {
            via: None,
            step: "signoff".into(),
            role: role.into(),
            by: by.into(),
            decision: Decision::Approve,
            comment: None,
        };
        handle(&wf, run, &input, &facts, Timestamp(at))
    };

    // Legal takes 20 hours. Brand is asked then, with a whole day of its own.
    let t = decide(t.run, "legal", "lea@x.com", NOON + 20 * HOUR);
    let EffectKind::RequestApproval { approvers, due_at, .. } = &t.effects[0].kind else { panic!("{:?}", t.effects) };
    assert_eq!(
        (approvers.as_slice(), *due_at),
        ([String::from("brand")].as_slice(), Some(Timestamp(NOON + 44 * HOUR)))
    );
    assert_eq!(
        armed(&t, TimerPurpose::ApprovalReminder).due_at,
        Timestamp(NOON + 24 * HOUR),
        "4 h after brand was asked"
    );
    let brand_escalation = armed(&t, TimerPurpose::ApprovalEscalation);
    assert_eq!(brand_escalation.due_at, Timestamp(NOON + 44 * HOUR));
    assert!(t.timers_cancelled.contains(&first_escalation.timer), "legal's clock is stopped");
    let stale = handle(
        &wf,
        t.run.clone(),
        &Input::TimerFired { timer: first_escalation.timer },
        &facts,
        Timestamp(NOON + 24 * HOUR),
    );
    assert_eq!(
        ignored_reason(&stale),
        Some("the timer is no longer armed"),
        "legal's escalation does not fire on brand"
    );

    // Brand is silent: its escalation reassigns to the lead, who decides in its place.
    let t =
        handle(&wf, t.run, &Input::TimerFired { timer: brand_escalation.timer }, &facts, Timestamp(NOON + 44 * HOUR));
    assert!(
        t.history
            .iter()
            .any(|h| matches!(&h.kind, HistoryKind::ApprovalEscalated { to, action: "reassign" } if to == "lead"))
    );
    let t = decide(t.run, "lead", "li@x.com", NOON + 45 * HOUR);
    assert_eq!(ignored_reason(&t), None, "the escalated person decides brand's stage");

    // The VP gets a fresh day and a fresh escalation; the lead's delegation was brand's only.
    let vp_escalation = armed(&t, TimerPurpose::ApprovalEscalation);
    assert_eq!(vp_escalation.due_at, Timestamp(NOON + 69 * HOUR));
    let early = decide(t.run.clone(), "lead", "li@x.com", NOON + 46 * HOUR);
    assert!(ignored_reason(&early).is_some(), "the lead may not decide for the VP before the VP is escalated");
    let t = handle(&wf, t.run, &Input::TimerFired { timer: vp_escalation.timer }, &facts, Timestamp(NOON + 69 * HOUR));
    let escalations = t.history.iter().filter(|h| matches!(h.kind, HistoryKind::ApprovalEscalated { .. })).count();
    assert_eq!(escalations, 1, "the VP's stage is escalated in its turn");
    let t = decide(t.run, "lead", "li@x.com", NOON + 70 * HOUR);
    assert_eq!(t.run.status, RunStatus::Completed);
}

#[test]
fn the_trigger_stays_in_scope_and_a_sole_variable_keeps_its_type() {
    let wf = workflow(
        r#"
id: webinar
subject: contact
trigger: { event: Webinar Registered }
steps:
  - id: remember
    action: { update: { set: { last_webinar: "{{ trigger.properties.webinar_id }}", label: "w{{ trigger.properties.webinar_id }}" } } }
  - id: attended
    wait: { event: Webinar Attended, where: "event.properties.webinar_id == trigger.properties.webinar_id", timeout: 2d }
    on_timeout: sorry
  - id: recording
    action: { emit: { event: Recording Sent, properties: { webinar: "{{ trigger.properties.webinar_id }}", from: "{{ event.event | default: 'x' }}" } } }
    next: end
  - id: sorry
    exit: {}
"#,
    );
    let contact = json!({ "id": "c" });
    let facts = Facts { subject: &contact, ..Facts::empty() };
    let registered = event("Webinar Registered", NOON, json!({ "webinar_id": 123 }));
    let t = handle(
        &wf,
        Run::new(RunId(4), &wf, 1, "c", Timestamp(NOON)),
        &Input::Start { event: Some(registered) },
        &facts,
        Timestamp(NOON),
    );
    let EffectKind::UpdateSubject { set, .. } = &t.effects[0].kind else { panic!("{:?}", t.effects) };
    assert_eq!(set["last_webinar"], json!(123), "a sole variable keeps its JSON type");
    assert_eq!(set["label"], json!("w123"), "text around it makes a string");
    let t = handle(
        &wf,
        t.run,
        &Input::EffectCompleted { key: t.effects[0].key.clone(), ok: true, detail: None },
        &facts,
        Timestamp(NOON + 1),
    );

    // Another webinar's attendance does not match; this one's does, with the trigger still
    // the registration although `event` moved on.
    let other = event("Webinar Attended", NOON + 10, json!({ "webinar_id": 124 }));
    let t = handle(&wf, t.run, &Input::Event { event: other }, &facts, Timestamp(NOON + 10));
    assert!(t.run.tokens.iter().any(|tk| matches!(tk.state, TokenState::AwaitingEvent { .. })), "still waiting");
    let same = event("Webinar Attended", NOON + 20, json!({ "webinar_id": 123 }));
    let t = handle(&wf, t.run, &Input::Event { event: same }, &facts, Timestamp(NOON + 20));
    let emitted = t.effects.iter().find_map(|e| match &e.kind {
        EffectKind::EmitEvent { properties, .. } => Some(properties.clone()),
        _ => None,
    });
    assert_eq!(emitted, Some(json!({ "webinar": 123, "from": "Webinar Attended" })), "{:?}", t.effects);
    assert_eq!(t.run.trigger().map(|e| e.name.as_str()), Some("Webinar Registered"));
    assert_eq!(t.run.event.as_ref().map(|e| e.name.as_str()), Some("Webinar Attended"));
    // The trigger survives the run's state being stored and read back.
    let stored: Run = serde_json::from_value(serde_json::to_value(&t.run).unwrap()).unwrap();
    assert_eq!(stored.trigger().map(|e| e.name.as_str()), Some("Webinar Registered"));
    let fresh = Run::new(RunId(5), &wf, 1, "c", Timestamp(NOON));
    let fresh: Run = serde_json::from_value(serde_json::to_value(&fresh).unwrap()).unwrap();
    assert_eq!(fresh.trigger, None, "a run whose event is still its trigger stores it once");

    // Registered with the id as text, attended with it as a number: no match, and the
    // decision record says why.
    let text_id = event("Webinar Registered", NOON, json!({ "webinar_id": "123" }));
    let t = handle(
        &wf,
        Run::new(RunId(6), &wf, 1, "c", Timestamp(NOON)),
        &Input::Start { event: Some(text_id) },
        &facts,
        Timestamp(NOON),
    );
    let t = handle(
        &wf,
        t.run,
        &Input::EffectCompleted { key: t.effects[0].key.clone(), ok: true, detail: None },
        &facts,
        Timestamp(NOON + 1),
    );
    let number_id = event("Webinar Attended", NOON + 10, json!({ "webinar_id": 123 }));
    let t = handle(&wf, t.run, &Input::Event { event: number_id }, &facts, Timestamp(NOON + 10));
    let notes: Vec<&String> = t.decisions.iter().flat_map(|d| &d.notes).collect();
    assert_eq!(notes.len(), 1, "{:?}", t.decisions);
    assert!(notes[0].contains("is the number 123") && notes[0].contains("is the string \"123\""), "{}", notes[0]);
}

#[test]
fn a_repeating_reminder_comes_back_until_the_stage_is_decided() {
    let wf = workflow(
        r#"
id: nag
subject: item
roles:
  legal: { person: lea@x.com }
  vp: { person: vi@x.com }
steps:
  - id: signoff
    approval:
      mode: sequential
      approvers: [legal, vp]
      remind: { every: 1d }
"#,
    );
    let item = json!({ "title": "Launch" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    const DAY: i64 = 24 * 60 * 60 * 1000;
    let t = handle(
        &wf,
        Run::new(RunId(7), &wf, 1, "i", Timestamp(NOON)),
        &Input::Start { event: None },
        &facts,
        Timestamp(NOON),
    );
    let reminder =
        |t: &Transition| t.timers.iter().find(|r| r.purpose == TimerPurpose::ApprovalReminder).unwrap().clone();
    let first = reminder(&t);
    assert_eq!(first.due_at, Timestamp(NOON + DAY));
    let mut run = t.run;
    let mut last = first;
    for n in 1..=3 {
        let fired = handle(&wf, run, &Input::TimerFired { timer: last.timer }, &facts, Timestamp(NOON + n * DAY));
        assert!(
            fired
                .effects
                .iter()
                .any(|e| matches!(&e.kind, EffectKind::Notify { reason: NotifyReason::ApprovalReminder, .. }))
        );
        last = reminder(&fired);
        assert_eq!(last.due_at, Timestamp(NOON + (n + 1) * DAY), "the next one a day later");
        run = fired.run;
    }
    // Legal decides: the VP's stage gets a reminder of its own, a day after the VP is asked.
    let input = Input::ApprovalDecided {
        via: None,
        step: "signoff".into(),
        role: "legal".into(),
        by: "lea@x.com".into(),
        decision: Decision::Approve,
        comment: None,
    };
    let t = handle(&wf, run, &input, &facts, Timestamp(NOON + 3 * DAY + 5));
    assert!(t.timers_cancelled.contains(&last.timer));
    assert_eq!(reminder(&t).due_at, Timestamp(NOON + 4 * DAY + 5));

    let too_often = "id: spam\nsubject: item\nroles:\n  legal: { person: l@x.com }\nsteps:\n  - id: s\n    approval:\n      approvers: [legal]\n      remind: { every: 10m }\n";
    let compiled = crate::compile(&crate::Source::new("spam.yaml", too_often.to_owned()));
    assert!(
        compiled.diagnostics.iter().any(|d| d.code == "flowmark::reminder-too-often"),
        "{:?}",
        compiled.diagnostics
    );
}

#[test]
fn a_repeating_escalation_escalates_once_per_period_while_undecided() {
    let wf = workflow(
        r#"
id: chase
subject: item
roles:
  vp: { person: vi@x.com }
  lead: { person: li@x.com }
steps:
  - id: signoff
    approval:
      approvers: [vp]
      accountable: lead
      escalate: { after: 1d, every: 1d, to: accountable, action: notify }
"#,
    );
    let item = json!({ "title": "Launch" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    const DAY: i64 = 24 * 60 * 60 * 1000;
    let t = handle(
        &wf,
        Run::new(RunId(8), &wf, 1, "i", Timestamp(NOON)),
        &Input::Start { event: None },
        &facts,
        Timestamp(NOON),
    );
    let escalation =
        |t: &Transition| t.timers.iter().find(|r| r.purpose == TimerPurpose::ApprovalEscalation).unwrap().clone();
    let mut next = escalation(&t);
    let mut run = t.run;
    for n in 1..=3 {
        assert_eq!(next.due_at, Timestamp(NOON + n * DAY));
        let t = handle(&wf, run, &Input::TimerFired { timer: next.timer }, &facts, Timestamp(NOON + n * DAY));
        let escalated = t.history.iter().filter(|h| matches!(h.kind, HistoryKind::ApprovalEscalated { .. })).count();
        assert_eq!(escalated, 1, "once per period");
        next = escalation(&t);
        run = t.run;
    }
    let input = Input::ApprovalDecided {
        via: None,
        step: "signoff".into(),
        role: "vp".into(),
        by: "vi@x.com".into(),
        decision: Decision::Approve,
        comment: None,
    };
    let t = handle(&wf, run, &input, &facts, Timestamp(NOON + 3 * DAY + 1));
    assert!(t.timers_cancelled.contains(&next.timer), "decided: no more escalations");
    assert_eq!(t.run.status, RunStatus::Completed);
}

#[test]
fn repeated_escalations_climb_the_chain_and_a_new_stage_starts_at_its_foot() {
    let wf = workflow(
        r#"
id: climb
subject: item
roles:
  legal: { person: le@x.com }
  vp: { person: vi@x.com }
  lead: { person: li@x.com }
  head: { person: he@x.com }
steps:
  - id: signoff
    approval:
      mode: sequential
      approvers: [legal, vp]
      accountable: lead
      escalate: { after: 1d, every: 1d, to: [accountable, head], action: notify }
"#,
    );
    let item = json!({ "title": "Launch" });
    let facts = Facts { subject: &item, ..Facts::empty() };
    const DAY: i64 = 24 * 60 * 60 * 1000;
    let escalated_to = |t: &Transition| -> Vec<String> {
        t.history
            .iter()
            .filter_map(|h| match &h.kind {
                HistoryKind::ApprovalEscalated { to, .. } => Some(to.clone()),
                _ => None,
            })
            .collect()
    };
    let escalation =
        |t: &Transition| t.timers.iter().find(|r| r.purpose == TimerPurpose::ApprovalEscalation).unwrap().clone();
    let t = handle(
        &wf,
        Run::new(RunId(9), &wf, 1, "i", Timestamp(NOON)),
        &Input::Start { event: None },
        &facts,
        Timestamp(NOON),
    );
    let (mut next, mut run) = (escalation(&t), t.run);
    let mut chain = Vec::new();
    for n in 1..=3 {
        let t = handle(&wf, run, &Input::TimerFired { timer: next.timer }, &facts, Timestamp(NOON + n * DAY));
        chain.extend(escalated_to(&t));
        next = escalation(&t);
        run = t.run;
    }
    assert_eq!(chain, ["lead", "head", "head"], "up the chain, then staying with its last");
    // Legal decides: the VP's stage escalates from the foot of the chain again.
    let decided = Input::ApprovalDecided {
        via: None,
        step: "signoff".into(),
        role: "legal".into(),
        by: "le@x.com".into(),
        decision: Decision::Approve,
        comment: None,
    };
    let t = handle(&wf, run, &decided, &facts, Timestamp(NOON + 3 * DAY + 10));
    let next = escalation(&t);
    let t = handle(&wf, t.run, &Input::TimerFired { timer: next.timer }, &facts, next.due_at);
    assert_eq!(escalated_to(&t), ["lead"]);
}
