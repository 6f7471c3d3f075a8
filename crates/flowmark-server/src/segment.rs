//! Segment's Tracking API, read: the payloads of `/v1/track`, `/v1/identify`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, turned into Flowmark events.
//!
//! Follows Segment's conventions: the subject is `userId`, else `anonymousId`; `messageId`
//! deduplicates; a batch's `context` is merged into each item's (the item's keys win); and the
//! server-corrected timestamp rule: when the client sent `sentAt`, the event happened at
//! `receivedAt − (sentAt − timestamp)`, which cancels the client's clock skew. Segment's own
//! libraries (`analytics-python`, `analytics-node`) send `sentAt` once, at the top of a
//! `/v1/batch` body, so an item without its own takes the batch's; an item with
//! `originalTimestamp` and no `timestamp` (what Segment itself forwards) is timed by it.
//!
//! Invariant: a payload either becomes events entirely or is refused with a reason; no
//! partial batch is applied.

use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_core::limits::EVENT_SIZE_BYTES_MAX;
use flowmark_runtime::Incoming;
use serde_json::{Map, Value};

pub const KINDS: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// What a `/v1/batch` body says about all of its items.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The batch's `context`, merged under each item's own.
    pub context: Option<Value>,
    /// The batch's `sentAt`, for the items that do not carry their own.
    pub sent_at: Option<Timestamp>,
}

impl Batch {
    /// Reads the batch-level fields of a `/v1/batch` body.
    pub fn of(body: &Value) -> Result<Batch, String> {
        let Value::Object(fields) = body else { return Ok(Batch::default()) };
        Ok(Batch { context: fields.get("context").cloned(), sent_at: parse_time(fields, "sentAt")? })
    }
}

/// Reads one message of kind `kind` (`track`, …) received at `received_at`, from a batch
/// (`Batch::default()` for a single call). The item becomes the event's payload as it is (no
/// copy), with `type`, the merged `context` and `receivedAt` set.
pub fn read(kind: &str, item: Value, batch: &Batch, received_at: Timestamp) -> Result<Incoming, String> {
    if !item.is_object() {
        return Err(format!("a {kind} call must be a JSON object"));
    }
    let size = serialized_size(&item);
    if size > EVENT_SIZE_BYTES_MAX {
        return Err(format!("an event is {size} bytes; the limit is {EVENT_SIZE_BYTES_MAX} bytes (32 KB) per event"));
    }
    let Value::Object(mut fields) = item else { return Err(format!("a {kind} call must be a JSON object")) };
    let id_of = |key: &str| match fields.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (user_id, anonymous_id) = (id_of("userId"), id_of("anonymousId"));
    let anonymous = user_id.is_none();
    let Some(subject_id) = user_id.clone().or_else(|| anonymous_id.clone()) else {
        return Err(format!("a {kind} call needs a `userId` or an `anonymousId`"));
    };
    // `alias` merges `previousId` into `userId`; an `identify` with both ids merges the
    // anonymous one into the known one.
    let merge_from = match kind {
        "alias" => match (id_of("previousId"), &user_id) {
            (Some(previous), Some(_)) => Some(previous),
            _ => return Err("an alias call needs a `previousId` and a `userId`".to_owned()),
        },
        "identify" if user_id.is_some() => anonymous_id,
        _ => None,
    };
    let name = match kind {
        "track" => match fields.get("event") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("a track call needs an `event` name".to_owned()),
        },
        other => other.to_owned(),
    };
    // Everything read from the item as it came, before it becomes the payload.
    let at = corrected_timestamp(&fields, batch.sent_at, received_at)?;
    let id = match fields.get("messageId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        // No messageId: derive one from the content, so a resent copy is still a duplicate.
        _ => format!("flowmark-{:016x}", fnv1a(&serde_json::to_string(&fields).unwrap_or_default())),
    };
    let identify_traits = (kind == "identify").then(|| fields.get("traits").cloned());
    fields.insert("type".to_owned(), Value::String(kind.to_owned()));
    if let Some(Value::Object(outer)) = &batch.context {
        let mut context: Map<String, Value> = outer.clone();
        if let Some(Value::Object(inner)) = fields.get_mut("context") {
            context.extend(std::mem::take(inner));
        }
        fields.insert("context".to_owned(), Value::Object(context));
    }
    fields.insert("receivedAt".to_owned(), Value::String(received_at.rfc3339()));
    // A call's `context.timezone` (analytics.js sends the browser's) gives the contact its time
    // zone; an identify's traits and time zone are merged into the contact.
    let context_timezone = fields
        .get("context")
        .and_then(|c| c.get("timezone"))
        .and_then(Value::as_str)
        .filter(|tz| tz.parse::<chrono_tz::Tz>().is_ok())
        .map(str::to_owned);
    let traits = match identify_traits {
        Some(traits) => {
            let traits = traits.unwrap_or(Value::Object(Map::new()));
            let timezone = context_timezone.or_else(|| {
                traits
                    .get("timezone")
                    .and_then(Value::as_str)
                    .filter(|tz| tz.parse::<chrono_tz::Tz>().is_ok())
                    .map(str::to_owned)
            });
            Some((traits, timezone))
        }
        None => context_timezone.map(|tz| (Value::Object(Map::new()), Some(tz))),
    };
    let event = Event { id, name, at, payload: Value::Object(fields).into() };
    Ok(Incoming { subject_id, event, traits, anonymous, merge_from })
}

fn parse_time(fields: &Map<String, Value>, key: &str) -> Result<Option<Timestamp>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(Timestamp::from_chrono(&t)))
            .map_err(|_| format!("`{key}` must be an ISO-8601 time like 2026-01-05T12:00:00Z, not `{s}`")),
        Some(_) => Err(format!("`{key}` must be an ISO-8601 time string")),
    }
}

/// When the event happened: its `timestamp` (else its `originalTimestamp`), moved by the
/// client's clock skew when the client said when it sent it (`sentAt`, its own or else the
/// batch's); the time it was received when it says neither.
fn corrected_timestamp(
    fields: &Map<String, Value>,
    batch_sent_at: Option<Timestamp>,
    received_at: Timestamp,
) -> Result<Timestamp, String> {
    let timestamp = match parse_time(fields, "timestamp")? {
        Some(timestamp) => Some(timestamp),
        None => parse_time(fields, "originalTimestamp")?,
    };
    let sent_at = parse_time(fields, "sentAt")?.or(batch_sent_at);
    Ok(match (timestamp, sent_at) {
        (Some(t), Some(sent)) => Timestamp(received_at.ms() - (sent.ms() - t.ms())),
        (Some(t), None) => t,
        (None, _) => received_at,
    })
}

/// How many bytes `value` takes as compact JSON, counted without building the text.
fn serialized_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: Timestamp = Timestamp(1_767_614_400_000); // 2026-01-05T12:00:00Z

    #[test]
    fn the_server_corrects_the_client_clock() {
        // The client's clock is 10 minutes fast: it says it sent at 12:10 an event of 12:09.
        let item = json!({ "userId": "u", "event": "E", "timestamp": "2026-01-05T12:09:00Z", "sentAt": "2026-01-05T12:10:00Z" });
        let message = read("track", item.clone(), &Batch::default(), NOW).unwrap();
        assert_eq!(message.event.at, Timestamp(NOW.ms() - 60_000));
    }

    #[test]
    fn a_batch_sent_at_corrects_the_items_that_carry_none() {
        // Segment's libraries put `sentAt` on the batch: the client's clock is 2 h fast.
        let body = json!({ "sentAt": "2026-01-05T14:00:00Z", "context": { "locale": "fr" }, "batch": [] });
        let batch = Batch::of(&body).unwrap();
        let item = json!({ "userId": "u", "event": "E", "timestamp": "2026-01-05T13:59:30Z" });
        assert_eq!(read("track", item, &batch, NOW).unwrap().event.at, Timestamp(NOW.ms() - 30_000));
        // An item's own `sentAt` wins over the batch's.
        let own = json!({ "userId": "u", "event": "E", "timestamp": "2026-01-05T13:59:30Z", "sentAt": "2026-01-05T13:59:40Z" });
        assert_eq!(read("track", own, &batch, NOW).unwrap().event.at, Timestamp(NOW.ms() - 10_000));
        // `originalTimestamp` times an item without `timestamp`, corrected the same way.
        let original = json!({ "userId": "u", "event": "E", "originalTimestamp": "2026-01-05T13:58:00Z" });
        assert_eq!(read("track", original.clone(), &batch, NOW).unwrap().event.at, Timestamp(NOW.ms() - 120_000));
        let alone = read("track", original, &Batch::default(), NOW).unwrap();
        assert_eq!(alone.event.at.rfc3339(), "2026-01-05T13:58:00.000Z", "no sentAt: taken as it is");
        let bad = json!({ "sentAt": "soon", "batch": [] });
        assert!(Batch::of(&bad).unwrap_err().contains("`sentAt` must be an ISO-8601 time"));
    }

    #[test]
    fn batch_context_is_merged_under_the_item() {
        let item = json!({ "userId": "u", "event": "E", "context": { "ip": "1.1.1.1" } });
        let message = read(
            "track",
            item.clone(),
            &Batch { context: Some(json!({ "ip": "0.0.0.0", "locale": "fr" })), sent_at: None },
            NOW,
        )
        .unwrap();
        assert_eq!(message.event.payload["context"], json!({ "ip": "1.1.1.1", "locale": "fr" }));
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            read("track", json!({ "event": "E" }), &Batch::default(), NOW)
                .unwrap_err()
                .contains("`userId` or an `anonymousId`")
        );
        assert!(read("track", json!({ "userId": "u" }), &Batch::default(), NOW).unwrap_err().contains("`event` name"));
        let big = json!({ "userId": "u", "event": "E", "properties": { "x": "y".repeat(40_000) } });
        assert!(read("track", big, &Batch::default(), NOW).unwrap_err().contains("(32 KB) per event"));
        let bad_time = json!({ "userId": "u", "event": "E", "timestamp": "yesterday" });
        assert!(read("track", bad_time, &Batch::default(), NOW).unwrap_err().contains("ISO-8601"));
    }

    #[test]
    fn a_missing_message_id_is_derived_from_the_content() {
        let item = json!({ "userId": "u", "event": "E" });
        assert_eq!(
            read("track", item.clone(), &Batch::default(), NOW).unwrap().event.id,
            read("track", item.clone(), &Batch::default(), NOW).unwrap().event.id
        );
    }
}
