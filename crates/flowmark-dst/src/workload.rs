//! What the simulated marketing team and its contacts do: the workflows, score models and
//! segments deployed, and a generator of Segment-shaped events — downloads, clicks, orders,
//! identifies (traits, consent), aliases, unsubscribes — some late, some out of order.
//!
//! Invariant: every choice comes from the random source handed in; event ids are unique per
//! call (`serial`).

use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_runtime::Incoming;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde_json::{Value, json};

pub const WORKFLOWS: [(&str, &str); 6] = [
    ("whitepaper-nurture.yaml", include_str!("../../../blueprints/whitepaper-nurture.yaml")),
    ("dst-orders.yaml", ORDERS),
    ("dst-upsell.yaml", UPSELL),
    ("dst-handoff.yaml", HANDOFF),
    ("dst-vip.yaml", VIP),
    ("dst-review.yaml", REVIEW),
];

/// The team's work: a writer drafts, legal then brand approve in turn (a change request sends
/// it back), the accountable lead is escalated to each day a stage waits.
const REVIEW: &str = r#"
id: dst-review
subject: item
roles:
  writer: { team: writers }
  legal: { team: legal }
  brand: { team: brand }
  lead: { team: leads }
steps:
  - id: draft
    task:
      title: "Draft {{ item.title }}"
      responsible: writer
      accountable: lead
      due: 1d
  - id: signoff
    approval:
      mode: sequential
      approvers: [legal, brand]
      accountable: lead
      due: 1d
      remind: [12h]
      escalate: { after: 1d, every: 1d, to: [accountable], action: notify }
      on_reject: end
      on_changes: draft
"#;

/// The people of the team: some hold two roles, so separation of duties has work to do.
pub fn directory() -> Value {
    json!({
        "people": PEOPLE.iter().map(|p| json!({ "email": p })).collect::<Vec<_>>(),
        "teams": {
            "writers": [PEOPLE[0], PEOPLE[1]],
            "legal": [PEOPLE[1], PEOPLE[2]],
            "brand": [PEOPLE[2], PEOPLE[3]],
            "leads": [PEOPLE[4]],
        },
    })
}

/// Everyone who might act; the last is in no team.
pub const PEOPLE: [&str; 6] =
    ["wes@dst.test", "lia@dst.test", "bo@dst.test", "ana@dst.test", "lee@dst.test", "rex@dst.test"];

/// The items the team works on.
pub const ITEMS: [&str; 3] = ["post-1", "post-2", "post-3"];

/// Parallel branches and a join, a split, a subflow that waits, a score step, a goal, a cap
/// that holds.
const ORDERS: &str = r#"
id: dst-orders
subject: contact
trigger: { event: Order Completed }
entry: { reentry: always }
goal: { name: upgraded, event: Plan Upgraded }
caps:
  email: { max: 2, per: 1d, action: hold }
steps:
  - id: thanks
    action:
      email:
        subject: "Thanks, {{ contact.first_name | default: 'friend' }}"
        text: "Order {{ event.properties.order | default: '?' }}"
  - id: fork
    parallel: [receipt, survey]
  - id: receipt
    action:
      webhook:
        url: "https://erp.example.com/orders"
        body: { order: "{{ event.properties.order | default: '' }}" }
    next: meet
  - id: survey
    wait: { duration: 1d }
    next: meet
  - id: meet
    join: all
  - id: pick
    split:
      - { name: a, weight: 50, goto: upsell }
      - { name: b, weight: 50, goto: loyal }
  - id: upsell
    subflow: { workflow: dst-upsell }
    next: end
  - id: loyal
    action: { score: { model: engagement, add: 10 } }
"#;

/// A child run: an email, a wait for a click with a timeout, an update.
const UPSELL: &str = r#"
id: dst-upsell
subject: contact
trigger: { manual: true }
steps:
  - id: offer
    action: { email: { subject: "An offer", text: "Just for you." } }
  - id: wait-click
    wait: { event: Email Link Clicked, timeout: 2d }
    on_timeout: end
  - id: mark
    action: { update: { set: { upsold: true } } }
"#;

/// Started by a score threshold's event.
const HANDOFF: &str = r#"
id: dst-handoff
subject: contact
trigger: { event: Lead Qualified }
roles:
  sales: { team: sales }
steps:
  - id: tell-sales
    action: { notify: { to: sales, message: "{{ contact.email | default: 'A lead' }} is ready" } }
  - id: crm
    action: { webhook: { url: "https://crm.example.com/leads", body: { id: "{{ contact.email | default: '' }}" } } }
"#;

/// Started by entering a segment.
const VIP: &str = r#"
id: dst-vip
subject: contact
trigger: { segment: vip }
steps:
  - id: welcome
    action: { email: { subject: "Welcome to VIP", text: "Thank you." } }
  - id: mark
    action: { update: { set: { vip_since_welcome: true } } }
"#;

pub fn score_models() -> Value {
    json!({ "models": [{
        "name": "engagement", "half_life": "14d",
        "rules": [
            { "event": "Email Link Clicked", "add": 20 },
            { "event": "Order Completed", "add": 15 },
        ],
        "thresholds": [{ "at": 50, "event": "Lead Qualified" }],
    }]})
}

pub fn segments() -> Value {
    json!({ "segments": [
        { "name": "vip", "where": "events.count('Order Completed', '7d') >= 2" },
        { "name": "pro", "where": "contact.plan == 'pro'" },
        { "name": "warm", "where": "contact.scores.engagement >= 30 && !('vip' in contact.segments)" },
    ]})
}

fn track(id: String, name: &str, at: Timestamp, properties: Value) -> Event {
    Event {
        id: id.clone(),
        name: name.to_owned(),
        at,
        payload: json!({ "type": "track", "event": name, "messageId": id, "properties": properties }).into(),
    }
}

/// One event about contact `contact`, happening around `now` (sometimes hours late).
pub fn event(rng: &mut ChaCha8Rng, contact: u64, now: Timestamp, serial: u64) -> Incoming {
    let subject = format!("c{contact:02}");
    let id = format!("e{serial}");
    let late = match rng.next_u64() % 10 {
        0 => (rng.next_u64() % (6 * 3_600_000)) as i64,
        _ => (rng.next_u64() % 60_000) as i64,
    };
    let at = Timestamp(now.ms() - late);
    match rng.next_u64() % 100 {
        0..20 => {
            let topic = if rng.next_u64().is_multiple_of(5) { "seo" } else { "automation" };
            Incoming::event(&subject, track(id, "Whitepaper Downloaded", at, json!({ "topic": topic })))
        }
        20..45 => Incoming::event(&subject, track(id, "Email Link Clicked", at, json!({}))),
        45..60 => Incoming::event(&subject, track(id, "Order Completed", at, json!({ "order": serial }))),
        60..63 => Incoming::event(&subject, track(id, "Plan Upgraded", at, json!({}))),
        63..65 => Incoming::event(&subject, track(id, "Demo Booked", at, json!({}))),
        65..67 => Incoming::event(&subject, track(id, "Unsubscribed", at, json!({}))),
        67..70 => {
            // An anonymous visitor who turns out to be this contact.
            let anonymous = format!("anon-{serial}");
            let event = Event {
                id,
                name: "alias".to_owned(),
                at,
                payload: json!({ "type": "alias", "previousId": anonymous }).into(),
            };
            Incoming { merge_from: Some(anonymous), ..Incoming::event(&subject, event) }
        }
        _ => {
            let plan = ["free", "pro", "team"][(rng.next_u64() % 3) as usize];
            let mut traits = json!({ "plan": plan, "email": format!("{subject}@example.com"), "first_name": subject });
            if rng.next_u64().is_multiple_of(10) {
                traits["consent"] = json!({ "email": rng.next_u64().is_multiple_of(2) });
            }
            let event = Event { id, name: "identify".to_owned(), at, payload: json!({ "type": "identify" }).into() };
            let timezone = (rng.next_u64().is_multiple_of(4)).then(|| "Europe/Paris".to_owned());
            Incoming::with_traits(&subject, event, traits, timezone)
        }
    }
}
