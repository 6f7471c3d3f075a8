//! Rendering a message effect into what is sent: at send time, by the dispatcher or the
//! simulator, never inside a transition.
//!
//! A `SendMessage` effect names its step and carries the run's context (event, step outputs,
//! run) as it was when the run decided to send; the subject's data and the workspace `env`
//! are read when the message goes out. A template that fails to render fails the send
//! visibly (an error the dispatcher records as the effect's result), never a blank message.
//!
//! Invariant: rendering is a pure function of its arguments.

use serde::Serialize;
use serde_json::Value;

use crate::engine::{Effect, EffectKind, RenderContext};
use crate::expr::Scope;
use crate::model::{Action, StepKind, TemplateValue, Workflow};
use crate::template::Template;

/// A message ready to go out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    Email {
        /// The address it goes to: the subject's `email`, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        template: Option<String>,
        subject: Option<String>,
        html: Option<String>,
        text: Option<String>,
        from: Option<String>,
        transactional: bool,
    },
    Webhook {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        body: Option<Value>,
    },
    Notify {
        to: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("effect {key} is not a message")]
    NotAMessage { key: String },
    #[error("effect {key} names step `{step}`, which is not a message action of workflow `{workflow}`")]
    UnknownStep { key: String, step: String, workflow: String },
    #[error("step `{step}`: the {part} failed to render: {message}")]
    Template { step: String, part: &'static str, message: String },
}

/// Renders the message of a `SendMessage` effect of `workflow`.
pub fn render_message(workflow: &Workflow, effect: &Effect, subject: &Value, env: &Value) -> Result<Message, Error> {
    let EffectKind::SendMessage { context, .. } = &effect.kind else {
        return Err(Error::NotAMessage { key: effect.key.clone() });
    };
    render_step_message(workflow, &effect.key, &effect.step, context, subject, env)
}

/// Renders the message of step `step_id` with a stored context: what the dispatcher does with
/// an outbox row (`key` names the effect in errors).
pub fn render_step_message(
    workflow: &Workflow,
    key: &str,
    step_id: &str,
    context: &RenderContext,
    subject: &Value,
    env: &Value,
) -> Result<Message, Error> {
    let unknown =
        || Error::UnknownStep { key: key.to_owned(), step: step_id.to_owned(), workflow: workflow.id.clone() };
    let step = workflow.step_index(step_id).map(|i| workflow.step(i)).ok_or_else(unknown)?;
    let StepKind::Action(action) = &step.kind else { return Err(unknown()) };
    let null = Value::Null;
    let scope = Scope::new()
        .with(workflow.subject.as_str(), subject)
        .with("event", context.event.as_ref().unwrap_or(&null))
        .with("trigger", context.trigger.as_ref().unwrap_or(&null))
        .with("steps", context.steps.as_ref().unwrap_or(&null))
        .with("run", context.run.as_ref().unwrap_or(&null))
        .with("env", env);
    let text = |template: &Template, part: &'static str| {
        template.render(&scope).map_err(|e| Error::Template { step: step.id.to_string(), part, message: e.to_string() })
    };
    match action {
        Action::Email(email) => Ok(Message::Email {
            to: subject.get("email").and_then(Value::as_str).filter(|a| !a.trim().is_empty()).map(str::to_owned),
            template: email.template.clone(),
            subject: email.subject.as_ref().map(|t| text(t, "subject")).transpose()?,
            html: email.html.as_ref().map(|t| text(t, "HTML body")).transpose()?,
            text: email.text.as_ref().map(|t| text(t, "text body")).transpose()?,
            from: email.from.clone(),
            transactional: email.transactional,
        }),
        Action::Webhook(webhook) => Ok(Message::Webhook {
            url: text(&webhook.url, "URL")?,
            method: webhook.method.clone(),
            headers: webhook
                .headers
                .iter()
                .map(|(name, value)| Ok((name.clone(), text(value, "header")?)))
                .collect::<Result<_, Error>>()?,
            body: webhook.body.as_ref().map(|b| render_value(b, &text)).transpose()?,
        }),
        Action::Notify(notify) => {
            Ok(Message::Notify { to: notify.to.clone(), message: text(&notify.message, "message")? })
        }
        Action::Score(_) | Action::Update(_) | Action::Emit(_) => Err(unknown()),
    }
}

/// Renders the string leaves of a JSON template value.
/// As `render_value`, except that a text which is one variable and nothing else
/// (`"{{ trigger.properties.webinar_id }}"`) takes that variable's value from `scope` with its
/// JSON type (a number stays a number, an object an object); when it is missing or `null`, the
/// text renders as any other (a missing variable is an error).
pub fn render_value_typed<E>(
    value: &TemplateValue,
    scope: &Scope<'_>,
    text: &impl Fn(&Template, &'static str) -> Result<String, E>,
) -> Result<Value, E> {
    Ok(match value {
        TemplateValue::Text(t) => match t.sole_variable().map(|path| scope.lookup(path)) {
            Some(found) if !found.is_null() => found,
            _ => Value::String(text(t, "body")?),
        },
        TemplateValue::List(items) => {
            Value::Array(items.iter().map(|i| render_value_typed(i, scope, text)).collect::<Result<_, E>>()?)
        }
        TemplateValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_value_typed(v, scope, text)?)))
                .collect::<Result<_, E>>()?,
        ),
        TemplateValue::Literal(v) => v.clone(),
    })
}

pub fn render_value<E>(
    value: &TemplateValue,
    text: &impl Fn(&Template, &'static str) -> Result<String, E>,
) -> Result<Value, E> {
    Ok(match value {
        TemplateValue::Literal(v) => v.clone(),
        TemplateValue::Text(t) => Value::String(text(t, "body")?),
        TemplateValue::List(items) => {
            Value::Array(items.iter().map(|i| render_value(i, text)).collect::<Result<_, E>>()?)
        }
        TemplateValue::Map(entries) => Value::Object(
            entries.iter().map(|(k, v)| Ok((k.clone(), render_value(v, text)?))).collect::<Result<_, E>>()?,
        ),
    })
}
