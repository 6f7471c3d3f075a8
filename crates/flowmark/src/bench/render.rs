//! `flowmark bench render`: the nurture blueprint's guide email rendered for many contacts,
//! as the dispatcher renders it at send time (subject, HTML with escaping, text), on one
//! thread.

use std::time::Instant;

use flowmark_core::engine::RenderContext;
use flowmark_core::render::render_step_message;
use flowmark_core::{Source, compile};
use serde_json::json;

use super::{emit, round2};

#[derive(clap::Args)]
pub struct RenderArgs {
    /// Messages to render.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
}

const EMAIL: &str = r#"
id: render-bench
subject: contact
steps:
  - id: guide
    action:
      email:
        subject: "Your guide, {{ contact.first_name | default: 'there' }}"
        html: "<p>Hi {{ contact.first_name | default: 'there' }},</p><p>Here is <a href='https://example.com/guide'>your guide to {{ contact.topic | default: 'automation' }}</a>.</p><p>{{ contact.company | default: '' }}</p>"
        text: "Hi {{ contact.first_name | default: 'there' }}, here is your guide: https://example.com/guide"
"#;

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let workflow = compile(&Source::new("render-bench.yaml", EMAIL))
        .workflow
        .ok_or_else(|| anyhow::anyhow!("the benchmark's workflow does not compile"))?;
    let contacts: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({ "first_name": format!("Contact {i} <&>"), "topic": "workflows", "company": format!("Company {}", i % 37) }))
        .collect();
    let context = RenderContext::default();
    let env = json!({});
    let started = Instant::now();
    let mut bytes = 0usize;
    for n in 0..args.messages {
        let message =
            render_step_message(&workflow, "1-guide-2", "guide", &context, &contacts[n % contacts.len()], &env)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let flowmark_core::render::Message::Email { html, .. } = &message {
            bytes += html.as_ref().map_or(0, String::len);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    emit(&json!({
        "scenario": "render",
        "messages": args.messages,
        "seconds": round2(seconds),
        "messages_per_s": (args.messages as f64 / seconds).round(),
        "html_bytes_per_message": bytes / args.messages.max(1),
    }));
    Ok(())
}
