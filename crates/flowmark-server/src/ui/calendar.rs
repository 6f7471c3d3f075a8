//! The content calendar: a month or a week of open work's due dates and items' scheduled
//! publications (`publish_at`), in the signed-in person's time zone (from the directory; UTC
//! when they have none), with a link to subscribe to the same dates as an iCalendar feed.
//!
//! `?view=month|week&date=YYYY-MM-DD` picks the period (the one containing `date`; today by
//! default); `mine=1` keeps only the work waiting for the signed-in person.
//!
//! Invariant: a day's entries are exactly those whose time falls in that local day; at most
//! `ENTRIES_MAX` of each kind are read for one page, and the page says when that cut applies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use chrono::{Datelike, Duration, NaiveDate, TimeZone};
use chrono_tz::Tz;
use flowmark_core::Timestamp;
use flowmark_store::{Store, WorkItem};

use super::html::{esc, seg};
use super::{html, signed_in};
use crate::api::{App, Page, Shared, internal, query};

/// The most work items, and the most publications, one calendar page reads.
pub const ENTRIES_MAX: usize = 2_000;
/// The most entries a day shows in the month view, and in the week view; the rest are a
/// "+ N more" link to the week (from the month) or to the day (from the week).
const DAY_ENTRIES_MONTH: usize = 4;
const DAY_ENTRIES_WEEK: usize = 40;
const DAY_ENTRIES_DAY: usize = ENTRIES_MAX;

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/ui/calendar", get(calendar_page))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Month,
    Week,
    Day,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Month => "month",
            View::Week => "week",
            View::Day => "day",
        }
    }
}

/// One thing on a day: a due date or a publication.
struct Entry {
    at: Timestamp,
    html: String,
}

/// The days a view shows: whole weeks, Monday first, covering the period around `date`.
fn period(view: View, date: NaiveDate) -> (NaiveDate, NaiveDate, NaiveDate, NaiveDate) {
    let monday = |d: NaiveDate| d - Duration::days(i64::from(d.weekday().num_days_from_monday()));
    match view {
        View::Week => {
            let first = monday(date);
            (first, first + Duration::days(7), first - Duration::days(7), first + Duration::days(7))
        }
        View::Day => (date, date + Duration::days(1), date - Duration::days(1), date + Duration::days(1)),
        View::Month => {
            let first_of_month = date.with_day(1).unwrap_or(date);
            let next_month = if first_of_month.month() == 12 {
                NaiveDate::from_ymd_opt(first_of_month.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first_of_month.year(), first_of_month.month() + 1, 1)
            }
            .unwrap_or(first_of_month);
            let previous_month = (first_of_month - Duration::days(1)).with_day(1).unwrap_or(first_of_month);
            let start = monday(first_of_month);
            let last = next_month - Duration::days(1);
            let end = monday(last) + Duration::days(7);
            (start, end, previous_month, next_month)
        }
    }
}

/// The instant a local day starts (the earliest, should the zone skip or repeat midnight).
fn day_start(zone: Tz, day: NaiveDate) -> Timestamp {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    match zone.from_local_datetime(&midnight).earliest() {
        Some(at) => Timestamp::from_chrono(&at),
        // Midnight does not exist that day (a gap at 00:00): the day starts an hour later.
        None => Timestamp::from_chrono(&chrono::Utc.from_utc_datetime(&midnight)),
    }
}

fn work_entry(item: &WorkItem, zone: Tz, now: Timestamp) -> Entry {
    let at = item.due_at.unwrap_or_default();
    let due = if at <= now { "overdue" } else { "due" };
    let kind = item.kind.as_str();
    Entry {
        at,
        html: format!(
            "<li class=\"entry due {kind}\"><time datetime=\"{}\">{}</time> <span class=\"pill {kind} {due}\">{due}</span> \
             <a href=\"/ui/work/{}\">{}</a> <span class=\"muted\">{}</span></li>",
            at.to_chrono().to_rfc3339(),
            at.to_chrono().with_timezone(&zone).format("%H:%M"),
            seg(&item.id),
            esc(&item.title),
            esc(&item.people.join(", ")),
        ),
    }
}

fn publication_entry(publication: &flowmark_runtime::ical::Publication, zone: Tz) -> Entry {
    let at = publication.at;
    Entry {
        at,
        html: format!(
            "<li class=\"entry publication\"><time datetime=\"{}\">{}</time> <span class=\"pill publish\">publish</span> \
             <a href=\"/ui/items/{}\">{}</a></li>",
            at.to_chrono().to_rfc3339(),
            at.to_chrono().with_timezone(&zone).format("%H:%M"),
            seg(&publication.item_id),
            esc(&publication.title),
        ),
    }
}

/// The page's end: links to subscribe to the same dates in a calendar app.
fn with_feeds(mut body: String, prefix: &str, secret: Option<&[u8]>, who: &str) -> String {
    if let Some(secret) = secret {
        let (person, workspace) = crate::people::feed_paths(prefix, secret, who);
        let _ = write!(
            body,
            "<p class=\"muted\">Subscribe in your calendar app: <a href=\"{}\">my work</a> · \
             <a href=\"{}\">the whole workspace</a> (keep these links private).</p>",
            esc(&person),
            esc(&workspace)
        );
    }
    body
}

async fn calendar_page(app: App, headers: HeaderMap, Query(params): Query<BTreeMap<String, String>>) -> Page {
    let (email, session) = signed_in(&app, &headers, "/ui/calendar").await?;
    let view = match params.get("view").map(String::as_str) {
        Some("week") => View::Week,
        Some("day") => View::Day,
        _ => View::Month,
    };
    let date = params.get("date").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let mine = params.get("mine").is_some_and(|v| v == "1");
    let feed_secret = app.secret.clone();
    let prefix = app.link("");
    let who = email.clone();
    let answer = query(&app.owner, move |engine, now| -> Result<String, flowmark_store::Error> {
        let zone: Tz = engine.directory().zone_of(&who);
        let today = now.to_chrono().with_timezone(&zone).date_naive();
        let date = date.unwrap_or(today);
        let (first, end, previous, next) = period(view, date);
        let (from, until) = (day_start(zone, first), day_start(zone, end));
        let mut work = engine.store().open_work_due(from, until, ENTRIES_MAX)?;
        let cut_work = work.len() == ENTRIES_MAX;
        if mine {
            work.retain(|w| w.people.contains(&who));
        }
        let publications = crate::people::publications_between(engine, from, Some(until), ENTRIES_MAX)?;
        let cut_publications = publications.len() == ENTRIES_MAX;

        // Each entry into its local day.
        let mut days: BTreeMap<NaiveDate, Vec<Entry>> = BTreeMap::new();
        let entries = work.iter().map(|w| work_entry(w, zone, now)).chain(publications.iter().map(|p| publication_entry(p, zone)));
        for entry in entries {
            let day = entry.at.to_chrono().with_timezone(&zone).date_naive();
            days.entry(day).or_default().push(entry);
        }
        for list in days.values_mut() {
            list.sort_by_key(|e| e.at);
        }

        let view_name = view.name();
        let link = |view: &str, day: NaiveDate| {
            format!("/ui/calendar?view={view}&amp;date={}{}", day.format("%Y-%m-%d"), if mine { "&amp;mine=1" } else { "" })
        };
        let heading = match view {
            View::Month => date.format("%B %Y").to_string(),
            View::Week => format!("Week of {}", first.format("%-d %B %Y")),
            View::Day => date.format("%A %-d %B %Y").to_string(),
        };
        let mut body = format!("<h1>Content calendar</h1><nav class=\"calendar-nav actions\" aria-label=\"Calendar\">\
             <a class=\"button secondary\" href=\"{}\" rel=\"prev\">← Previous</a>\
             <a class=\"button secondary\" href=\"{}\">Today</a>\
             <a class=\"button secondary\" href=\"{}\" rel=\"next\">Next →</a>\
             <h2 id=\"period\" class=\"period\">{}</h2>",
            link(view_name, previous),
            link(view_name, today),
            link(view_name, next),
            esc(&heading)
        );
        for (other, label) in [(View::Month, "Month view"), (View::Week, "Week view"), (View::Day, "Day view")] {
            if other != view {
                let _ = write!(body, "<a href=\"{}\">{label}</a> · ", link(other.name(), date));
            }
        }
        let _ = write!(
            body,
            "<a href=\"/ui/calendar?view={view_name}&amp;date={}{}\">{}</a></nav>",
            date.format("%Y-%m-%d"),
            if mine { "" } else { "&amp;mine=1" },
            if mine { "Show everyone's work" } else { "Show only my work" },
        );
        let _ = write!(
            body,
            "<p class=\"muted\">Times in {}. Due dates of open tasks and approvals, and items' scheduled publications.</p>",
            esc(zone.name())
        );
        if cut_work || cut_publications {
            let _ = write!(
                body,
                "<p class=\"notice\">This period has more than {ENTRIES_MAX} entries of a kind; only the first are shown.</p>"
            );
        }
        if view == View::Day {
            body.push_str("<section class=\"card\" aria-labelledby=\"period\">");
            match days.get(&date) {
                Some(entries) => {
                    body.push_str("<ul class=\"entries day\">");
                    for entry in entries.iter().take(DAY_ENTRIES_DAY) {
                        body.push_str(&entry.html);
                    }
                    body.push_str("</ul>");
                }
                None => body.push_str("<p class=\"muted\">Nothing is due or published this day.</p>"),
            }
            body.push_str("</section>");
            return Ok(with_feeds(body, &prefix, feed_secret.as_deref(), &who));
        }
        body.push_str("<table class=\"calendar ");
        body.push_str(view_name);
        body.push_str("\" aria-labelledby=\"period\"><thead><tr>");
        for name in ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] {
            let _ = write!(body, "<th scope=\"col\">{name}</th>");
        }
        body.push_str("</tr></thead><tbody>");
        let mut day = first;
        while day < end {
            if day.weekday().num_days_from_monday() == 0 {
                body.push_str("<tr>");
            }
            let outside = view == View::Month && day.month() != date.month();
            let current = if day == today { " aria-current=\"date\"" } else { "" };
            let _ = write!(
                body,
                "<td class=\"day{}{}\"{current}><div class=\"date\"><time datetime=\"{}\">{}</time></div>",
                if outside { " outside" } else { "" },
                if day == today { " today" } else { "" },
                day.format("%Y-%m-%d"),
                if view == View::Week || day.day() == 1 { day.format("%-d %b").to_string() } else { day.day().to_string() }
            );
            if let Some(entries) = days.get(&day) {
                let shown = if view == View::Month { DAY_ENTRIES_MONTH } else { DAY_ENTRIES_WEEK };
                body.push_str("<ul class=\"entries\">");
                for entry in entries.iter().take(shown) {
                    body.push_str(&entry.html);
                }
                body.push_str("</ul>");
                if entries.len() > shown {
                    let _ = write!(
                        body,
                        "<a class=\"more\" href=\"{}\">+ {} more</a>",
                        link(if view == View::Month { "week" } else { "day" }, day),
                        entries.len() - shown
                    );
                }
            }
            body.push_str("</td>");
            if day.weekday().num_days_from_monday() == 6 {
                body.push_str("</tr>");
            }
            day += Duration::days(1);
        }
        body.push_str("</tbody></table>");
        Ok(with_feeds(body, &prefix, feed_secret.as_deref(), &who))
    })
    .await;
    match answer? {
        Ok(body) => Ok(html(StatusCode::OK, super::html::page("Calendar", Some((&email, &session.csrf)), &body))),
        Err(error) => Err(internal(error).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_month_is_whole_weeks_around_it() {
        // November 2026 starts on a Sunday and ends on a Monday.
        let (first, end, previous, next) = period(View::Month, day(2026, 11, 24));
        assert_eq!((first, end), (day(2026, 10, 26), day(2026, 12, 7)));
        assert_eq!((previous, next), (day(2026, 10, 1), day(2026, 12, 1)));
        let (_, _, previous, next) = period(View::Month, day(2026, 12, 31));
        assert_eq!((previous, next), (day(2026, 11, 1), day(2027, 1, 1)));
    }

    #[test]
    fn a_week_starts_on_monday() {
        let (first, end, previous, next) = period(View::Week, day(2026, 11, 29));
        assert_eq!(
            (first, end, previous, next),
            (day(2026, 11, 23), day(2026, 11, 30), day(2026, 11, 16), day(2026, 11, 30))
        );
    }

    #[test]
    fn days_start_at_local_midnight() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        assert_eq!(day_start(paris, day(2026, 11, 24)).to_chrono().to_rfc3339(), "2026-11-23T23:00:00+00:00");
        assert_eq!(day_start(Tz::UTC, day(2026, 11, 24)).to_chrono().to_rfc3339(), "2026-11-24T00:00:00+00:00");
    }
}
