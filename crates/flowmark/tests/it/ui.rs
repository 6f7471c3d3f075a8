//! The web UI in a real browser: headless Chromium (Debian's package) driven by Playwright
//! (`playwright-core` from npm), both installed by the test itself when missing. The writer
//! completes a draft, two reviewers decide in parallel, one requests changes, the run loops
//! back, the deadline passes and the escalation reaches the Accountable person — all through
//! the UI. Screenshots are kept in the build directory (`ui-screenshots/`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use super::serve::Server;

const PLAYWRIGHT: &str = "playwright-core@1.64.1";
const PASSWORD: &str = "correct-horse-battery";

/// Debian's Chromium, installed with apt when it is not there yet.
fn chromium() {
    if std::path::Path::new("/usr/bin/chromium").exists() {
        return;
    }
    eprintln!("ui tests: installing Debian's chromium (once per machine)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get runs (the UI tests need Debian's chromium)");
    assert!(status.success(), "apt-get could not install chromium; install it with `apt-get install chromium`");
}

/// playwright-core in the build directory; returns its `node_modules`.
fn playwright() -> PathBuf {
    crate::npm_install(PLAYWRIGHT)
}

/// The blog-post blueprint with the review's deadline, reminder and escalation in seconds.
fn quick_blog_post() -> String {
    let source = std::fs::read_to_string(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    let slow = "      due: 1d\n      remind: [20h]\n      escalate: { after: 1d, to: accountable, action: notify }";
    assert!(source.contains(slow), "the blueprint's review step changed; update this test");
    source.replace(
        slow,
        "      due: 8s\n      remind: [4s]\n      escalate: { after: 8s, to: accountable, action: notify }",
    )
}

#[test]
fn the_blog_post_runs_through_the_web_ui_with_approvals_a_loop_back_and_an_escalation() {
    chromium();
    let modules = playwright();
    let dir = super::validate::fresh_dir("ui");
    let server = Server::start(&dir.join("flowmark.db"));
    assert_eq!(server.api("POST", "/api/workflows", quick_blog_post().as_bytes()).0, 201);
    let directory = json!({
        "people": [
            { "email": "sam@example.com" }, { "email": "sia@example.com" }, { "email": "dana@example.com" },
            { "email": "bea@example.com" }, { "email": "lee@example.com" }, { "email": "omar@example.com" },
            { "email": "rex@example.com" }
        ],
        "teams": {
            "content": ["sam@example.com"], "seo": ["sia@example.com", "omar@example.com"], "brand": ["bea@example.com"]
        }
    });
    assert_eq!(server.api("PUT", "/api/directory", directory.to_string().as_bytes()).0, 200);
    for person in ["sam", "sia", "dana", "bea", "lee", "rex"] {
        let body = json!({ "password": PASSWORD }).to_string();
        assert_eq!(server.api("PUT", &format!("/api/accounts/{person}@example.com"), body.as_bytes()).0, 200);
    }
    let (status, _, short) = server.api("PUT", "/api/accounts/x@example.com", br#"{"password":"short"}"#);
    assert_eq!(status, 422, "{short}");
    // The post goes out in ten minutes: today, on the calendar.
    let publish_at =
        (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let post = json!({ "traits": { "title": "Spring launch", "publish_at": publish_at } }).to_string();
    assert_eq!(server.api("PUT", "/api/contacts/post-1", post.as_bytes()).0, 200);
    assert_eq!(server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#).0, 201);
    // The research is done over the API, by the SEO person who will not review it (separation
    // of duties); the rest happens in the browser.
    let (_, _, work) = server.api("GET", "/api/people/omar@example.com/work", b"");
    let research = work["work"][0]["id"].as_str().unwrap().to_owned();
    let done = json!({ "by": "omar@example.com", "fields": { "keywords": "spring, launch" } }).to_string();
    assert_eq!(server.api("POST", &format!("/api/work/{research}/complete"), done.as_bytes()).0, 200);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let output = Command::new("node")
        .arg(crate::repo_path("crates/flowmark/tests/ui/blog-post.cjs"))
        .env("NODE_PATH", &modules)
        .env("BASE_URL", format!("http://{}", server.address))
        .env("PASSWORD", PASSWORD)
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser scenario failed (screenshots in {}):\n{log}", shots.display());
    eprintln!("ui screenshots: {}", shots.display());

    // What the browser did is what the server recorded.
    let (_, _, work) = server.api("GET", "/api/items/post-1/work", b"");
    let outcomes: Vec<String> = work["work"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| format!("{}:{}:{}", w["step"].as_str().unwrap(), w["role"].as_str().unwrap(), w["outcome"]))
        .collect();
    assert_eq!(
        outcomes[..6],
        [
            "research:seo:\"completed\"",
            "draft:writer:\"completed\"",
            "review:editor:\"approve\"",
            "review:seo:\"request_changes\"",
            "draft:writer:\"completed\"",
            "review:editor:null",
        ],
        "{outcomes:?}"
    );
    let (_, _, lee) = server.api("GET", "/api/people/lee@example.com/notifications", b"");
    assert!(lee["notifications"].as_array().unwrap().iter().any(|n| n["reason"] == "escalation"), "{lee}");
    for shot in [
        "01-writer-my-work",
        "03-editor-approval",
        "04-item-history",
        "05-accountable-escalation",
        "07-run-explorer",
        "08-calendar-month",
        "09-calendar-week",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png was taken");
    }
    server.stop();
}
