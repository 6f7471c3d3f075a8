//! Contacts from CSV, the way marketing tools read them: header aliases map to fields
//! (`E-mail Address` → `email`, `Given name` → `first_name`, `Opt out` → do-not-contact, …),
//! ISO-8601 dates, `true/1/yes` booleans, one row per contact created or updated by its `id`
//! or else its `email`. Every row is checked before anything is written, and every problem is
//! reported with its row number, so a bad file changes nothing.
//!
//! Invariant: `read` returns either every row, checked, or every row's errors; never a part.

use std::io::Read;

use serde_json::{Map, Value};

/// Most rows one file may hold: the rows are checked, then held, before any is written.
pub const ROWS_MAX: usize = 1_000_000;
/// Most errors reported for one file (the rest are counted).
pub const ERRORS_REPORTED_MAX: usize = 1000;

/// One contact as a row gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's number in the file, the header being row 1 (as spreadsheets count).
    pub row: u64,
    pub id: Option<String>,
    pub email: Option<String>,
    /// Every other non-empty cell, under its field name.
    pub traits: Map<String, Value>,
    pub timezone: Option<String>,
    /// `Some(true)`: do not contact (suppressed); `Some(false)`: contact again.
    pub do_not_contact: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub row: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(column) => write!(f, "row {}, column `{column}`: {}", self.row, self.message),
            None => write!(f, "row {}: {}", self.row, self.message),
        }
    }
}

/// What a file's problems were: the first `ERRORS_REPORTED_MAX`, and how many in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub errors: Vec<RowError>,
    pub total: usize,
}

/// The field a header names: known aliases first, else the header in snake case.
pub fn field_of(header: &str) -> Field {
    let squashed: String = header.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    match squashed.as_str() {
        "id" | "userid" | "contactid" | "externalid" | "customerid" => Field::Id,
        "email" | "emailaddress" | "mail" | "emailaddr" => Field::Email,
        "timezone" | "tz" | "zone" => Field::Timezone,
        "donotcontact" | "dnc" | "unsubscribed" | "optout" | "emailoptout" | "donotemail" | "optedout" => {
            Field::DoNotContact
        }
        "firstname" | "givenname" | "first" | "forename" => Field::Trait("first_name".to_owned()),
        "lastname" | "surname" | "familyname" | "last" => Field::Trait("last_name".to_owned()),
        "phone" | "phonenumber" | "mobile" | "mobilephone" | "tel" => Field::Trait("phone".to_owned()),
        "company" | "companyname" | "organization" | "organisation" | "account" => Field::Trait("company".to_owned()),
        "jobtitle" | "title" | "position" => Field::Trait("title".to_owned()),
        "country" | "countrycode" => Field::Trait("country".to_owned()),
        _ => Field::Trait(snake_case(header)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    Email,
    Timezone,
    DoNotContact,
    Trait(String),
}

fn snake_case(header: &str) -> String {
    let mut out = String::new();
    for c in header.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// `true/1/yes/y/x` and `false/0/no/n` (any case); `None` for anything else.
pub fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "x" => Some(true),
        "false" | "0" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// A header that holds a date or time: `…_at`, `…date`, `…_on`, `birthday`.
fn is_date_field(name: &str) -> bool {
    name.ends_with("_at") || name.ends_with("date") || name.ends_with("_on") || name == "birthday"
}

/// ISO-8601: a date (`2026-01-05`) or a date and time with an offset (`2026-01-05T09:30:00Z`),
/// kept as written when valid.
fn is_iso8601(text: &str) -> bool {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() || chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// Reads and checks every row of a CSV file with a header row.
pub fn read(input: impl Read) -> Result<Vec<Row>, Rejected> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).trim(csv::Trim::All).from_reader(input);
    let mut errors = Vec::new();
    let mut total = 0usize;
    let mut report = |error: RowError, errors: &mut Vec<RowError>| {
        total += 1;
        if errors.len() < ERRORS_REPORTED_MAX {
            errors.push(error);
        }
    };
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => {
            return Err(Rejected {
                errors: vec![RowError { row: 1, column: None, message: csv_message(&error) }],
                total: 1,
            });
        }
    };
    let fields: Vec<Field> = headers.iter().map(field_of).collect();
    for (index, field) in fields.iter().enumerate() {
        if fields[..index].contains(field) {
            report(
                RowError {
                    row: 1,
                    column: Some(headers[index].to_owned()),
                    message: "this column repeats another one".to_owned(),
                },
                &mut errors,
            );
        }
    }
    if !fields.iter().any(|f| matches!(f, Field::Id | Field::Email)) {
        report(
            RowError {
                row: 1,
                column: None,
                message: "the header needs an `id` or an `email` column to know each contact".to_owned(),
            },
            &mut errors,
        );
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let number = index as u64 + 2;
        if index >= ROWS_MAX {
            report(
                RowError { row: number, column: None, message: format!("a file holds at most {ROWS_MAX} rows") },
                &mut errors,
            );
            break;
        }
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                report(RowError { row: number, column: None, message: csv_message(&error) }, &mut errors);
                continue;
            }
        };
        let mut row =
            Row { row: number, id: None, email: None, traits: Map::new(), timezone: None, do_not_contact: None };
        // A row whose key cell is there but wrong is reported for that cell, not twice.
        let mut key_given = false;
        for ((cell, field), header) in record.iter().zip(&fields).zip(headers.iter()) {
            if cell.is_empty() {
                continue;
            }
            key_given |= matches!(field, Field::Id | Field::Email);
            let mut bad = |message: String| {
                report(RowError { row: number, column: Some(header.to_owned()), message }, &mut errors)
            };
            match field {
                Field::Id => row.id = Some(cell.to_owned()),
                Field::Email if cell.contains('@') && !cell.contains(char::is_whitespace) => {
                    row.email = Some(cell.to_ascii_lowercase());
                }
                Field::Email => bad(format!("`{cell}` is not an email address")),
                Field::Timezone if cell.parse::<chrono_tz::Tz>().is_ok() => row.timezone = Some(cell.to_owned()),
                Field::Timezone => bad(format!("`{cell}` is not an IANA time zone such as `Europe/Paris`")),
                Field::DoNotContact => match boolean(cell) {
                    Some(value) => row.do_not_contact = Some(value),
                    None => bad(format!("`{cell}` is not a yes or no (true/1/yes, false/0/no)")),
                },
                Field::Trait(name) if is_date_field(name) && !is_iso8601(cell) => {
                    bad(format!("`{cell}` is not an ISO-8601 date such as 2026-01-05 or 2026-01-05T09:30:00Z"));
                }
                Field::Trait(name) => {
                    row.traits.insert(name.clone(), Value::String(cell.to_owned()));
                }
            }
        }
        if !key_given {
            report(
                RowError { row: number, column: None, message: "the row has neither an id nor an email".to_owned() },
                &mut errors,
            );
        }
        rows.push(row);
    }
    if total > 0 {
        return Err(Rejected { errors, total });
    }
    Ok(rows)
}

fn csv_message(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} cells; the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_owned(),
        _ => error.to_string(),
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Imported {
    pub created: usize,
    pub updated: usize,
    /// Rows an earlier, interrupted import of the same file had already written.
    pub resumed_after: usize,
}

/// Rows written per commit; the checkpoint moves with each.
pub const IMPORT_CHUNK_ROWS: usize = 1000;

/// Writes checked rows as contacts, `IMPORT_CHUNK_ROWS` per commit, each commit moving the
/// checkpoint stored under `checkpoint` (the file's hash) in the same transaction, so an
/// interrupted import resumes where it stopped and a finished one is not repeated unless the
/// checkpoint is cleared. A row's contact is found by `id`, else by `email`; a new contact's id
/// is its `id`, else its email address. `do_not_contact` sets the `unsubscribed` trait.
pub fn write_rows<S: flowmark_store::Store + ?Sized>(
    store: &mut S,
    rows: &[Row],
    checkpoint: &str,
    now: flowmark_core::Timestamp,
    mut progress: impl FnMut(usize),
) -> Result<Imported, flowmark_store::Error> {
    let done: usize = store.setting(checkpoint)?.and_then(|v| v.parse().ok()).unwrap_or(0).min(rows.len());
    let mut imported = Imported { resumed_after: done, ..Imported::default() };
    progress(done);
    let mut written = done;
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in rows[done..].chunks(IMPORT_CHUNK_ROWS) {
        let mut changes: Vec<(String, Value, Option<String>)> = Vec::with_capacity(chunk.len());
        for row in chunk {
            let existing = match (&row.id, &row.email) {
                (Some(id), _) => store.contact(id)?.map(|c| c.id),
                (None, Some(email)) => match seen.get(email) {
                    Some(id) => Some(id.clone()),
                    None => store.contact_id_by_email(email)?,
                },
                (None, None) => None,
            };
            let id = existing.clone().or_else(|| row.id.clone()).or_else(|| row.email.clone()).unwrap_or_default();
            let mut traits = row.traits.clone();
            if let Some(email) = &row.email {
                traits.insert("email".to_owned(), Value::String(email.clone()));
            }
            if let Some(dnc) = row.do_not_contact {
                traits.insert(crate::UNSUBSCRIBED_TRAIT.to_owned(), Value::Bool(dnc));
            }
            if existing.is_some() || !seen.insert(id.clone()) {
                imported.updated += 1;
            } else {
                imported.created += 1;
            }
            changes.push((id, Value::Object(traits), row.timezone.clone()));
        }
        written += chunk.len();
        let position = written.to_string();
        let batch = flowmark_store::Batch {
            contacts: changes
                .iter()
                .map(|(id, traits, timezone)| flowmark_store::ContactChange {
                    id,
                    traits,
                    timezone: timezone.as_deref(),
                })
                .collect(),
            settings: vec![(checkpoint, position.as_str())],
            ..flowmark_store::Batch::default()
        };
        store.write(&batch, now)?;
        progress(written);
    }
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_map_to_fields_the_way_people_write_them() {
        assert_eq!(field_of("E-mail Address"), Field::Email);
        assert_eq!(field_of("Given name"), Field::Trait("first_name".into()));
        assert_eq!(field_of("Opt Out"), Field::DoNotContact);
        assert_eq!(field_of("Lead Score (Q3)"), Field::Trait("lead_score_q3".into()));
    }

    #[test]
    fn a_good_file_reads_every_row() {
        let csv = "Email,First Name,Signed up at,Do not contact,Time zone\nADA@example.com,Ada,2026-01-05,no,Europe/London\nbob@example.com,Bob,,yes,\n";
        let rows = read(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].email.as_deref(), Some("ada@example.com"));
        assert_eq!(rows[0].traits["signed_up_at"], "2026-01-05");
        assert_eq!((rows[0].do_not_contact, rows[1].do_not_contact), (Some(false), Some(true)));
        assert!(!rows[1].traits.contains_key("signed_up_at"), "an empty cell changes nothing");
    }

    #[test]
    fn a_bad_file_reports_every_problem_with_its_row() {
        let csv = "email,signup_date,dnc,tz\nnot-an-email,2026-13-45,maybe,Mars/Base\n,,,\nok@example.com,2026-01-05\n";
        let rejected = read(csv.as_bytes()).unwrap_err();
        let said: Vec<String> = rejected.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "row 2, column `email`: `not-an-email` is not an email address",
                "row 2, column `signup_date`: `2026-13-45` is not an ISO-8601 date such as 2026-01-05 or 2026-01-05T09:30:00Z",
                "row 2, column `dnc`: `maybe` is not a yes or no (true/1/yes, false/0/no)",
                "row 2, column `tz`: `Mars/Base` is not an IANA time zone such as `Europe/Paris`",
                "row 3: the row has neither an id nor an email",
                "row 4: the row has 2 cells; the header has 4",
            ]
        );
        let no_key = read("name\nAda\n".as_bytes()).unwrap_err();
        assert!(no_key.errors[0].message.contains("needs an `id` or an `email` column"));
    }
}
