//! HTML for the web UI: escaping, the page frame, and the pieces pages share.
//!
//! Pages are rendered on the server as plain HTML with native forms: nothing to build, fast
//! on any device, usable by keyboard and screen reader (labels on every control, landmarks,
//! visible focus, contrast above WCAG AA).
//!
//! Invariant: every value that did not come from this module is escaped with [`esc`].

use std::fmt::Write as _;

use flowmark_core::Timestamp;

/// Escapes text for HTML content and quoted attribute values.
pub use flowmark_graph::escape_markup as esc;

/// A path segment, escaped for a URL.
pub fn seg(text: &str) -> String {
    flowmark_runtime::url_part(text)
}

/// The stylesheet, served at `/ui/app.css`.
pub const CSS: &str = r#"
:root { --ink:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#f6f8fa; --card:#fff; --accent:#0a58ca;
  --ok:#116329; --warn:#9a6700; --bad:#b42318; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
* { box-sizing: border-box; }
body { margin:0; color:var(--ink); background:var(--bg); line-height:1.5; }
a { color:var(--accent); }
:focus-visible { outline:3px solid #fb8c00; outline-offset:2px; }
header.top { display:flex; gap:1.5rem; align-items:center; padding:.6rem 1.5rem; background:#24292f; color:#fff; }
header.top a { color:#fff; text-decoration:none; font-weight:600; }
header.top .brand { font-size:1.1rem; }
header.top .who { margin-left:auto; display:flex; gap:1rem; align-items:center; }
header.top button { background:none; border:1px solid #8c959f; color:#fff; border-radius:6px; padding:.2rem .7rem; cursor:pointer; }
main { max-width:1080px; margin:1.5rem auto; padding:0 1rem; }
h1 { font-size:1.5rem; margin:.2rem 0 1rem; } h2 { font-size:1.15rem; margin:1.5rem 0 .6rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:1rem 1.2rem; margin-bottom:1rem; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); border-radius:8px; }
th, td { text-align:left; padding:.55rem .8rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.85rem; color:var(--muted); font-weight:600; }
.muted { color:var(--muted); } .overdue { color:var(--bad); font-weight:600; } .ok { color:var(--ok); }
.pill { display:inline-block; padding:0 .5rem; border-radius:999px; font-size:.8rem; border:1px solid var(--line); background:var(--bg); }
.pill.approval { border-color:#b6c8f0; background:#eef4ff; } .pill.closed { background:#eaeef2; }
form.stack { display:grid; gap:.7rem; max-width:34rem; }
label { font-weight:600; display:block; margin-bottom:.2rem; }
input[type=text], input[type=email], input[type=password], input[type=url], input[type=number], input[type=date], textarea {
  width:100%; padding:.45rem .6rem; border:1px solid #8c959f; border-radius:6px; font:inherit; background:#fff; }
textarea { min-height:5rem; }
button, .button { font:inherit; font-weight:600; padding:.45rem 1rem; border-radius:6px; border:1px solid #1f6feb;
  background:#1f6feb; color:#fff; cursor:pointer; }
button.secondary { background:#fff; color:var(--ink); border-color:#8c959f; }
button.danger { background:var(--bad); border-color:var(--bad); }
.actions { display:flex; flex-wrap:wrap; gap:.5rem; align-items:center; }
.actions.spaced { margin-top:1rem; } .actions label, label.inline { display:inline; margin:0; }
.actions input[type=email] { width:16rem; }
.error { border:1px solid var(--bad); background:#fff1f0; color:var(--bad); padding:.6rem .9rem; border-radius:6px; margin-bottom:1rem; }
.notice { border:1px solid #b6c8f0; background:#eef4ff; padding:.6rem .9rem; border-radius:6px; margin-bottom:1rem; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:.3rem 1rem; margin:0; }
dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; }
ul.plain { list-style:none; padding:0; margin:0; } ul.plain li { padding:.4rem 0; border-bottom:1px solid var(--line); }
.login { max-width:24rem; margin:4rem auto; }
.skip { position:absolute; left:-999px; } .skip:focus { left:1rem; top:.5rem; background:#fff; padding:.3rem .6rem; z-index:10; }
header.top nav { display:flex; gap:1.1rem; } header.top nav a[aria-current=page] { text-decoration:underline; text-underline-offset:.3rem; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(19rem, 1fr)); gap:1rem; }
.card.workflow h2 { margin-top:0; }
img.graph { display:block; max-width:100%; height:auto; margin:0 auto; } img.thumb { max-height:22rem; }
figure.graph { margin:0 0 1rem; text-align:center; overflow:auto; }
form.filters { display:flex; flex-wrap:wrap; gap:.8rem; align-items:end; }
form.filters > div { min-width:10rem; } form.filters .actions { align-self:end; }
select { padding:.45rem .6rem; border:1px solid #8c959f; border-radius:6px; font:inherit; background:#fff; min-width:10rem; }
.pill.active { border-color:#b6c8f0; background:#eef4ff; } .pill.failed { border-color:var(--bad); color:var(--bad); }
.pill.version { border-color:#9ad2a9; background:#eefbf1; font-weight:600; }
.pill.overdue { border-color:var(--bad); color:var(--bad); font-weight:600; }
.pill.converted, .pill.completed { border-color:#9ad2a9; background:#eefbf1; } .pill.publish { border-color:#e4b6f0; background:#fbeeff; }
.calendar-nav { margin-bottom:.5rem; } .calendar-nav .period { margin:0 1rem; font-size:1.15rem; }
a.button { text-decoration:none; display:inline-block; } a.button.secondary { background:#fff; color:var(--ink); border-color:#8c959f; }
table.calendar { table-layout:fixed; } table.calendar td { height:7rem; padding:.3rem .4rem; }
table.calendar.week td { height:16rem; }
td.day .date { font-size:.85rem; color:var(--muted); font-weight:600; }
td.day.outside { background:#f6f8fa; } td.day.outside .date { color:#8c959f; }
td.day.today { box-shadow: inset 0 0 0 2px var(--accent); } td.day.today .date { color:var(--accent); }
ul.entries { list-style:none; margin:.2rem 0 0; padding:0; font-size:.82rem; } ul.entries li { margin-bottom:.3rem; overflow-wrap:anywhere; }
ul.entries time { color:var(--muted); } a.more { font-size:.8rem; font-weight:600; }
dialog.keys { border:1px solid var(--line); border-radius:8px; padding:1rem 1.5rem; } dialog.keys kbd, kbd { font-family:ui-monospace, monospace;
  border:1px solid var(--line); border-bottom-width:2px; border-radius:4px; padding:0 .3rem; background:var(--bg); }
tr.focused { outline:2px solid #fb8c00; outline-offset:-2px; }
@media (max-width: 640px) { header.top { flex-wrap:wrap; } th:nth-child(3), td:nth-child(3) { display:none; } }
"#;

/// The main navigation: where, what, and the key that goes there after `g`.
const NAV: [(&str, &str, char); 4] = [
    ("/ui", "My work", 'w'),
    ("/ui/calendar", "Calendar", 'c'),
    ("/ui/workflows", "Workflows", 'f'),
    ("/ui/runs", "Runs", 'r'),
];

/// Keyboard shortcuts, served at `/ui/app.js`: `g` then a letter goes to a section, `/`
/// focuses the page's first search or text field, `j`/`k` move through table rows and
/// `Enter` opens the focused row, `?` lists them. Keys typed into a field are left alone.
/// The pages work without it.
pub const JS: &str = r#"(() => {
  const typing = (el) => el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  let pending = null;
  let row = -1;
  const rows = () => Array.from(document.querySelectorAll("main table tbody tr")).filter((r) => r.querySelector("a"));
  const focusRow = (i) => {
    const all = rows();
    if (!all.length) return;
    row = Math.max(0, Math.min(all.length - 1, i));
    all.forEach((r) => r.classList.remove("focused"));
    all[row].classList.add("focused");
    all[row].querySelector("a").focus();
  };
  const help = () => {
    let dialog = document.getElementById("keys");
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.id = "keys";
      dialog.className = "keys";
      dialog.setAttribute("aria-labelledby", "keys-title");
      dialog.innerHTML = '<h2 id="keys-title">Keyboard shortcuts</h2><dl class="facts">' +
        Array.from(document.querySelectorAll("header nav a[data-key]")).map((a) =>
          "<dt><kbd>g</kbd> <kbd>" + a.dataset.key + "</kbd></dt><dd>" + a.textContent + "</dd>").join("") +
        '<dt><kbd>/</kbd></dt><dd>Search or filter</dd><dt><kbd>j</kbd> <kbd>k</kbd></dt><dd>Next / previous row</dd>' +
        '<dt><kbd>?</kbd></dt><dd>This list</dd></dl><form method="dialog"><button>Close</button></form>';
      document.body.appendChild(dialog);
    }
    dialog.showModal();
  };
  document.addEventListener("click", (e) => { if (e.target.closest(".keys-help")) help(); });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    if (pending === "g") {
      pending = null;
      const link = document.querySelector('header nav a[data-key="' + e.key + '"]');
      if (link) { e.preventDefault(); location.href = link.href; }
      return;
    }
    if (e.key === "g") { pending = "g"; setTimeout(() => { pending = null; }, 1500); return; }
    if (e.key === "?") { e.preventDefault(); help(); return; }
    if (e.key === "/") {
      const field = document.querySelector("main input[type=text], main input[type=search], main select, main textarea");
      if (field) { e.preventDefault(); field.focus(); }
      return;
    }
    if (e.key === "j") { e.preventDefault(); focusRow(row + 1); return; }
    if (e.key === "k") { e.preventDefault(); focusRow(row - 1); }
  });
})();
"#;

/// A whole page: the frame, the navigation for a signed-in person, and `body`.
pub fn page(title: &str, person: Option<(&str, &str)>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Flowmark</title><link rel=\"stylesheet\" href=\"/ui/app.css\">\
         <script src=\"/ui/app.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>",
        esc(title)
    );
    out.push_str("<header class=\"top\"><a class=\"brand\" href=\"/ui\">Flowmark</a>");
    if let Some((email, csrf)) = person {
        out.push_str("<nav aria-label=\"Main\">");
        for (href, name, key) in NAV {
            let _ = write!(out, "<a href=\"{href}\" data-key=\"{key}\">{name}</a>");
        }
        let _ = write!(
            out,
            "</nav><div class=\"who\"><button type=\"button\" class=\"keys-help\" aria-haspopup=\"dialog\" \
             title=\"Keyboard shortcuts (?)\">?</button><span>{}</span><form method=\"post\" action=\"/ui/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form></div>",
            esc(email),
            esc(csrf)
        );
    }
    out.push_str("</header><main id=\"main\">");
    out.push_str(body);
    out.push_str("</main></body></html>");
    out
}

/// The time zone of the person reading a page: theirs in the directory, UTC when they have
/// none (the calendar reads the same).
#[derive(Debug, Clone, Copy)]
pub struct Zone(pub chrono_tz::Tz);

/// A time as the reader reads it, in their time zone (named: `EST`, `CET`), with the
/// `datetime` machine value in UTC.
pub fn time(at: Timestamp, zone: Zone) -> String {
    let utc = at.to_chrono();
    let local = utc.with_timezone(&zone.0);
    format!("<time datetime=\"{}\">{}</time>", utc.to_rfc3339(), local.format("%a %d %b %Y, %H:%M %Z"))
}

/// A due time, marked when it has passed.
pub fn due(due_at: Option<Timestamp>, now: Timestamp, zone: Zone) -> String {
    match due_at {
        None => "<span class=\"muted\">no due date</span>".to_owned(),
        Some(at) if at <= now => format!("<span class=\"overdue\">overdue · {}</span>", time(at, zone)),
        Some(at) => time(at, zone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_readers_zone() {
        let at = Timestamp(1_796_764_140_000); // 2026-12-08T21:09:00Z
        let new_york = time(at, Zone(chrono_tz::America::New_York));
        assert!(
            new_york.contains(">Tue 08 Dec 2026, 16:09 EST<") && new_york.contains("2026-12-08T21:09:00+00:00"),
            "{new_york}"
        );
        assert!(time(at, Zone(chrono_tz::UTC)).contains("21:09 UTC"));
    }

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
        let html = page("<x>", Some(("a@example.com", "t\"")), "");
        assert!(html.contains("<title>&lt;x&gt; · Flowmark</title>") && html.contains("value=\"t&quot;\""));
    }
}
