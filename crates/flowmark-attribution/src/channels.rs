//! The default channel grouping: which channel a touch came through, from its source,
//! medium and campaign (Segment's `context.campaign`, i.e. the UTM parameters) or, without
//! them, from the page's referrer. Close to Google Analytics 4's default channel grouping, so
//! reports read as marketers expect: the rules are tried in order and the first that matches
//! names the channel; values are compared without regard to case.
//!
//! | channel | rule |
//! |---|---|
//! | Direct | source `(direct)`/`direct` and medium `(none)`, `(not set)` or empty; or nothing at all |
//! | Cross-network | campaign name contains `cross-network` |
//! | Paid Shopping | (a shopping site, or a campaign about shop/shopping) and a paid medium |
//! | Paid Search | a search site and a paid medium |
//! | Paid Social | a social site and a paid medium |
//! | Paid Video | a video site and a paid medium |
//! | Display | medium `display`, `banner`, `expandable`, `interstitial` or `cpm` |
//! | Paid Other | a paid medium: containing `cp`, `ppc`, `retargeting`, or starting with `paid` |
//! | Organic Shopping | a shopping site, or a campaign about shop/shopping |
//! | Organic Social | a social site, or medium `social`, `social-network`, `social-media`, `sm` |
//! | Organic Video | a video site, or a medium containing `video` |
//! | Organic Search | a search site, or medium `organic` |
//! | Referral | medium `referral`, `app` or `link` |
//! | Email | source or medium `email`, `e-mail`, `e_mail`, `e mail`, `newsletter` |
//! | Affiliates | medium `affiliate` or `affiliates` |
//! | Audio | medium `audio` |
//! | SMS | source or medium `sms` |
//! | Mobile Push Notifications | medium ending in `push`, or containing `mobile` or `notification` |
//! | Unassigned | anything else |
//!
//! A touch with no UTM but a referrer takes the referrer's host as its source, with medium
//! `organic` for a search site and `referral` otherwise (so `facebook.com` is Organic Social).
//! A site is recognised by any label of its host (`l.facebook.com`, `www.google.co.uk`).
//!
//! Invariant: a pure function of its input; every touch gets exactly one channel.

/// What a touch says about where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TouchSource<'a> {
    pub source: Option<&'a str>,
    pub medium: Option<&'a str>,
    pub campaign: Option<&'a str>,
    /// The page's referrer (a URL), used when there is no source or medium.
    pub referrer: Option<&'a str>,
}

const SEARCH: &[&str] = &[
    "google",
    "bing",
    "yahoo",
    "duckduckgo",
    "baidu",
    "yandex",
    "ecosia",
    "ask",
    "naver",
    "seznam",
    "qwant",
    "startpage",
    "brave",
    "aol",
];
const SOCIAL: &[&str] = &[
    "facebook",
    "fb",
    "instagram",
    "linkedin",
    "lnkd",
    "twitter",
    "x",
    "t",
    "tiktok",
    "pinterest",
    "reddit",
    "snapchat",
    "threads",
    "mastodon",
    "bsky",
    "tumblr",
    "quora",
    "discord",
    "whatsapp",
    "telegram",
    "wechat",
    "weibo",
    "vk",
    "xing",
    "meetup",
];
const VIDEO: &[&str] = &["youtube", "youtu", "vimeo", "twitch", "dailymotion", "wistia", "vidyard"];
const SHOPPING: &[&str] =
    &["amazon", "ebay", "etsy", "shopify", "walmart", "aliexpress", "shopping", "zalando", "rakuten"];
const EMAIL: &[&str] = &["email", "e-mail", "e_mail", "e mail", "newsletter"];

/// The labels of a source (`l.facebook.com` → `l`, `facebook`, `com`), or the source itself.
fn labels(source: &str) -> impl Iterator<Item = &str> {
    source.split(['.', '/']).filter(|l| !l.is_empty())
}

fn is_site(source: &str, sites: &[&str]) -> bool {
    !source.is_empty() && (sites.contains(&source) || labels(source).any(|label| sites.contains(&label)))
}

fn paid(medium: &str) -> bool {
    medium.contains("cp") || medium == "ppc" || medium.contains("retargeting") || medium.starts_with("paid")
}

fn about_shopping(campaign: &str) -> bool {
    campaign.contains("shopping") || campaign.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "shop")
}

/// The host of a URL (`https://www.google.com/search?q=x` → `www.google.com`).
fn host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.split(':').next()?;
    (!host.is_empty()).then_some(host)
}

/// The channel of a touch (see the module's table).
pub fn default_channel(touch: &TouchSource<'_>) -> &'static str {
    let lower = |v: Option<&str>| v.map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    let (mut source, mut medium, campaign) = (lower(touch.source), lower(touch.medium), lower(touch.campaign));
    if source.is_empty() && medium.is_empty() {
        if let Some(referrer) = touch.referrer.and_then(host) {
            source = referrer.to_ascii_lowercase();
            medium = if is_site(&source, SEARCH) { "organic".to_owned() } else { "referral".to_owned() };
        } else {
            return "Direct";
        }
    }
    let (m, s) = (medium.as_str(), source.as_str());
    let (search, social, video) = (is_site(s, SEARCH), is_site(s, SOCIAL), is_site(s, VIDEO));
    let shopping = is_site(s, SHOPPING) || about_shopping(&campaign);
    if matches!(s, "(direct)" | "direct") && matches!(m, "(none)" | "(not set)" | "") {
        "Direct"
    } else if campaign.contains("cross-network") {
        "Cross-network"
    } else if shopping && paid(m) {
        "Paid Shopping"
    } else if search && paid(m) {
        "Paid Search"
    } else if social && paid(m) {
        "Paid Social"
    } else if video && paid(m) {
        "Paid Video"
    } else if matches!(m, "display" | "banner" | "expandable" | "interstitial" | "cpm") {
        "Display"
    } else if paid(m) {
        "Paid Other"
    } else if shopping {
        "Organic Shopping"
    } else if social
        || matches!(m, "social" | "social-network" | "social-media" | "sm" | "social network" | "social media")
    {
        "Organic Social"
    } else if video || m.contains("video") {
        "Organic Video"
    } else if search || m == "organic" {
        "Organic Search"
    } else if matches!(m, "referral" | "app" | "link") {
        "Referral"
    } else if EMAIL.contains(&m) || EMAIL.contains(&s) {
        "Email"
    } else if matches!(m, "affiliate" | "affiliates") {
        "Affiliates"
    } else if m == "audio" {
        "Audio"
    } else if m == "sms" || s == "sms" {
        "SMS"
    } else if m.ends_with("push") || m.contains("mobile") || m.contains("notification") {
        "Mobile Push Notifications"
    } else {
        "Unassigned"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utm(source: &str, medium: &str, campaign: &str) -> &'static str {
        default_channel(&TouchSource {
            source: Some(source),
            medium: Some(medium),
            campaign: Some(campaign),
            referrer: None,
        })
    }

    fn referred(url: &str) -> &'static str {
        default_channel(&TouchSource { referrer: Some(url), ..TouchSource::default() })
    }

    #[test]
    fn utm_tags_map_to_the_channels_marketers_expect() {
        let cases = [
            (("google", "cpc", "brand"), "Paid Search"),
            (("bing", "ppc", ""), "Paid Search"),
            (("google", "organic", ""), "Organic Search"),
            (("facebook", "paid_social", "spring"), "Paid Social"),
            (("linkedin", "cpc", ""), "Paid Social"),
            (("LinkedIn", "social", ""), "Organic Social"),
            (("newsletter", "email", "december"), "Email"),
            (("Mailchimp", "E-Mail", ""), "Email"),
            (("partner-site", "affiliate", ""), "Affiliates"),
            (("gdn", "display", ""), "Display"),
            (("youtube", "cpv", ""), "Paid Video"),
            (("youtube", "video", ""), "Organic Video"),
            (("amazon", "cpc", ""), "Paid Shopping"),
            (("google", "cpc", "holiday shopping"), "Paid Shopping"),
            (("blog.example.com", "referral", ""), "Referral"),
            (("(direct)", "(none)", ""), "Direct"),
            (("twilio", "sms", ""), "SMS"),
            (("firebase", "push", ""), "Mobile Push Notifications"),
            (("google", "cpc", "cross-network pmax"), "Cross-network"),
            (("somewhere", "banana", ""), "Unassigned"),
            (("dsp", "retargeting", ""), "Paid Other"),
        ];
        for ((source, medium, campaign), channel) in cases {
            assert_eq!(utm(source, medium, campaign), channel, "{source} / {medium} / {campaign}");
        }
    }

    #[test]
    fn a_referrer_alone_says_where_a_visit_came_from() {
        assert_eq!(referred("https://www.google.co.uk/search?q=flowmark"), "Organic Search");
        assert_eq!(referred("https://l.facebook.com/l.php?u=x"), "Organic Social");
        assert_eq!(referred("https://t.co/abc"), "Organic Social");
        assert_eq!(referred("https://www.youtube.com/watch?v=1"), "Organic Video");
        assert_eq!(referred("https://news.ycombinator.com/item?id=1"), "Referral");
        assert_eq!(default_channel(&TouchSource::default()), "Direct", "no source, medium or referrer");
    }
}
