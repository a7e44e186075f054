//! `/api/webhooks`: create, list, get, update, delete (spec "Créer un webhook").

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::extract::{cursor, page_limit, ApiPath, ApiQuery, JsonBody};
use super::types::{EnableIn, Page, RotateSecretIn, WebhookIn, WebhookOut, WebhookPatch};
use super::{ApiError, AppState, Caller};
use crate::address::{self, AddressPolicy};
use crate::clock;
use crate::event::{check_external_id, EventType};
use crate::ids::{random_hex, WebhookId};
use crate::model::{EventFilter, Secret, Webhook, WebhookChanges};
use crate::store::{blocking, Lifecycle};

/// Shortest accepted secret, in characters (spec: "32 chars min").
pub const MIN_SECRET_CHARS: usize = 32;
const MAX_SECRET_CHARS: usize = 512;
const MAX_URL_BYTES: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Checks and normalizes a webhook URL (WHATWG URL parsing, the `url` crate): absolute,
/// https (or http when allowed), a valid host (an internationalized name is stored in its
/// ASCII form, `xn--...`; an invalid IPv4 literal, an IPvFuture literal or a bad punycode
/// label is refused), no user:password, a port in 1..=65535; the fragment is dropped (it is
/// never sent). Returns the normalized URL.
///
/// # Errors
/// 422 naming `url`, saying what to change.
pub fn validate_url(url: &str, allow_http: bool) -> Result<String, ApiError> {
    let bad = |message: &str| ApiError::invalid("url", message);
    if url.len() > MAX_URL_BYTES {
        return Err(bad("must be at most 2048 bytes"));
    }
    let mut parsed = url::Url::parse(url.trim())
        .map_err(|_| bad("must be an absolute URL like https://example.com/hook"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(bad(
                "must use https (start the daemon with --allow-http to accept http)",
            ))
        }
        _ => {
            return Err(bad(
                "must be an absolute https URL like https://example.com/hook",
            ))
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "must not contain user:password; send credentials in a header instead",
        ));
    }
    match parsed.host() {
        None | Some(url::Host::Domain("")) => return Err(bad("must name a host")),
        Some(_) => {}
    }
    if parsed.port() == Some(0) {
        return Err(bad("port must be between 1 and 65535"));
    }
    parsed.set_fragment(None);
    let normalized = parsed.to_string();
    if normalized.len() > MAX_URL_BYTES {
        return Err(bad("must be at most 2048 bytes"));
    }
    Ok(normalized)
}

/// Refuses a URL whose host is an IP literal in a range the address policy forbids (names
/// are checked when each attempt resolves them).
///
/// # Errors
/// 422 naming `url`, with the range and how an operator can open it.
pub fn check_url_address(url: &str, policy: &AddressPolicy) -> Result<(), ApiError> {
    let host = url
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned));
    let Some(ip) = host.as_deref().and_then(address::literal) else {
        return Ok(());
    };
    match policy.refusal(ip) {
        None => Ok(()),
        Some(range) => Err(ApiError::invalid(
            "url",
            format!(
                "points to {ip}, in a range deliveries may not reach: {range} (an operator can \
                 allow a network with --allow-network)"
            ),
        )),
    }
}

/// Parses the `events` list: non-empty, known public or operational types, or `"*"` (which
/// may be followed by operational types, the only ones it does not include).
///
/// # Errors
/// 422 naming `events`.
pub fn parse_events(names: &[String]) -> Result<EventFilter, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "must list at least one event type, or \"*\"",
        ));
    }
    let mut types = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    for name in names.iter().filter(|n| *n != "*") {
        if let Some(prefix) = name.strip_suffix(".*") {
            let takes_some = crate::model::wildcard_prefix_is_valid(prefix)
                && EventType::PUBLIC
                    .iter()
                    .chain(&EventType::OPERATIONAL)
                    .any(|t| crate::model::wildcard_matches(prefix, *t));
            if !takes_some {
                return Err(ApiError::invalid(
                    "events",
                    format!(
                        "the wildcard {name:?} matches no event type (wildcards name a \
                         family, like \"ticket.*\")"
                    ),
                ));
            }
            if !prefixes.iter().any(|p| p == prefix) {
                prefixes.push(prefix.to_owned());
            }
            continue;
        }
        let t = EventType::parse(name)
            .filter(|t| *t != EventType::WebhookTest)
            .ok_or_else(|| {
                let known: Vec<&str> = EventType::PUBLIC
                    .iter()
                    .chain(&EventType::OPERATIONAL)
                    .map(|t| t.as_str())
                    .collect();
                ApiError::invalid(
                    "events",
                    format!(
                        "unknown event type {name:?} (known: {}, or \"*\")",
                        known.join(", ")
                    ),
                )
            })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if !prefixes.is_empty() {
        return Ok(EventFilter::Wildcards {
            all: names.iter().any(|n| n == "*"),
            prefixes,
            types,
        });
    }
    if names.iter().any(|n| n == "*") {
        // `"*"` already has every public type; only the operational ones must be named.
        types.retain(|t| t.is_operational());
        return Ok(if types.is_empty() {
            EventFilter::All
        } else {
            EventFilter::AllPlus(types)
        });
    }
    Ok(EventFilter::Only(types))
}

fn validate_secret(secret: &str) -> Result<Secret, ApiError> {
    let n = secret.chars().count();
    if n < MIN_SECRET_CHARS {
        return Err(ApiError::invalid(
            "secret",
            "must be at least 32 characters",
        ));
    }
    if n > MAX_SECRET_CHARS {
        return Err(ApiError::invalid(
            "secret",
            "must be at most 512 characters",
        ));
    }
    if crate::store::sealed::is_sealed(secret) {
        return Err(ApiError::invalid(
            "secret",
            "must not start with \"pwenc1:\" (the store's mark of an encrypted secret)",
        ));
    }
    Ok(Secret(secret.to_owned()))
}

fn validate_description(description: String) -> Result<String, ApiError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(
            "description",
            "must be at most 1024 characters",
        ));
    }
    Ok(description)
}

/// Loads a webhook the caller may see, else 404.
pub(super) async fn visible_webhook(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Webhook, ApiError> {
    let id: WebhookId = id.parse().map_err(|_| ApiError::not_found("webhook"))?;
    blocking(&state.store, move |s| s.get_webhook(id))
        .await?
        .filter(|w| caller.can_see(&w.organization_id))
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Create a webhook.
///
/// `POST /api/webhooks` → 201 with the webhook (and the secret, once, if generated).
#[utoipa::path(
    post,
    path = "/api/webhooks",
    tag = "webhooks",
    request_body = WebhookIn,
    responses(
        (status = 201, description = "Created; `secret` and `standard_webhooks_secret` only when generated", body = WebhookOut, links(
            ("GetWebhook" = (operation_id = "get_webhook", parameters(("id" = "$response.body#/id")))),
            ("UpdateWebhook" = (operation_id = "update_webhook", parameters(("id" = "$response.body#/id")))),
            ("DeleteWebhook" = (operation_id = "delete_webhook", parameters(("id" = "$response.body#/id")))),
            ("TestWebhook" = (operation_id = "test_webhook", parameters(("id" = "$response.body#/id")))),
            ("RotateSecret" = (operation_id = "rotate_secret", parameters(("id" = "$response.body#/id")))),
            ("WebhookDeliveries" = (operation_id = "list_webhook_deliveries", parameters(("id" = "$response.body#/id")))),
            ("WebhookStats" = (operation_id = "webhook_stats", parameters(("id" = "$response.body#/id")))),
            ("PublicKey" = (operation_id = "public_key", parameters(("id" = "$response.body#/id")))),
            ("Recover" = (operation_id = "recover", parameters(("id" = "$response.body#/id")))),
            ("Replay" = (operation_id = "replay", parameters(("id" = "$response.body#/id")))),
            ("Enable" = (operation_id = "enable_webhook", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 403, description = "an organization key naming another organization", body = crate::api::ErrorOut),
        (status = 422, description = "a field is invalid (`field` names it)", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(mut input): JsonBody<WebhookIn>,
) -> Result<(StatusCode, Json<WebhookOut>), ApiError> {
    let organization_id = caller.acting_for(input.organization_id.as_deref())?;
    check_external_id("organization_id", &organization_id)?;
    let url = validate_url(&input.url, state.allow_http)?;
    check_url_address(&url, &state.address_policy.load())?;
    let events = parse_events(&input.events)?;
    let policy = state.address_policy.load();
    let context = super::options::OptionsContext {
        allow_http: state.allow_http,
        policy: &policy,
    };
    let options = input.take_options().apply(&Default::default(), context)?;
    let (secret, generated) = match input.secret {
        Some(s) => (validate_secret(&s)?, false),
        None => (
            Secret(format!("{GENERATED_SECRET_PREFIX}{}", random_hex(32))),
            true,
        ),
    };
    let now = clock::now_ms();
    let webhook = Webhook {
        id: WebhookId::generate(),
        organization_id,
        url,
        events,
        secret,
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        active: input.active.unwrap_or(true),
        description: validate_description(input.description.unwrap_or_default())?,
        options,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let stored = webhook.clone();
    blocking(&state.store, move |s| s.create_webhook(&stored)).await?;
    tracing::info!(webhook = %webhook.id, organization = %webhook.organization_id, "webhook created");
    let mut out = WebhookOut::from(&webhook);
    if generated {
        out.show_secret(&webhook.secret);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// Query of `GET /api/webhooks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListWebhooks {
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    organization_id: Option<String>,
}

/// List webhooks.
///
/// `GET /api/webhooks` → a page in creation order.
#[utoipa::path(
    get,
    path = "/api/webhooks",
    tag = "webhooks",
    params(ListWebhooks),
    responses(
        (status = 200, description = "A page of webhooks, in creation order", body = Page<WebhookOut>)
    )
)]
pub(super) async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListWebhooks>,
) -> Result<Json<Page<WebhookOut>>, ApiError> {
    let limit = page_limit(query.limit)?;
    let after: Option<WebhookId> = cursor(query.cursor.as_deref())?;
    let org = match &caller {
        Caller::Admin => query.organization_id,
        Caller::Organization(own) => Some(own.clone()),
    };
    let webhooks = blocking(&state.store, move |s| {
        s.list_webhooks(org.as_deref(), after, limit + 1)
    })
    .await?;
    Ok(Json(Page::new(
        &webhooks,
        limit,
        |w| w.id.to_string(),
        |w| WebhookOut::from(w),
    )))
}

/// Refuses changes to the operator endpoint's webhook (issue 15): `operator_webhook_url` and
/// its secret in the config define it, and each start puts them back.
///
/// # Errors
/// 409 `managed_by_config`.
fn not_managed_by_config(webhook: &Webhook) -> Result<(), ApiError> {
    if webhook.id == crate::lifecycle::OPERATOR_WEBHOOK {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            "this is the operator endpoint: change operator_webhook_url and its secret in the configuration",
        ));
    }
    Ok(())
}

/// Get a webhook.
///
/// `GET /api/webhooks/{id}`, with `held_deliveries` (a count of the held index).
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    responses(
        (status = 200, description = "The webhook, with `held_deliveries`", body = WebhookOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<WebhookOut>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let wid = webhook.id;
    let held = blocking(&state.store, move |s| s.held_count(wid)).await?;
    let mut out = WebhookOut::from(&webhook);
    out.held_deliveries = Some(held);
    Ok(Json(out))
}

/// Enable a webhook the daemon disabled.
///
/// `POST /api/webhooks/{id}/enable {"deliver_held": bool}` → 200 with the webhook: clears
/// `disabled` and the failing streak; held deliveries are queued again in due order (paced
/// by the scheduler like any backlog) or cancelled, a chunk per transaction
/// ([`crate::store::HELD_CHUNK`]), so `held_deliveries` in the answer counts those still to
/// move (0 for a backlog under a chunk); emits `webhook.enabled`. 409
/// `not_disabled` when the daemon has not disabled it (`active` is the customer's switch,
/// changed by PATCH).
#[utoipa::path(
    post,
    path = "/api/webhooks/{id}/enable",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    request_body = EnableIn,
    responses(
        (status = 200, description = "Enabled; held deliveries queued or cancelled", body = WebhookOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`not_disabled`: the daemon has not disabled it", body = crate::api::ErrorOut),
        (status = 422, description = "a field is invalid", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn enable_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    JsonBody(input): JsonBody<EnableIn>,
) -> Result<Json<WebhookOut>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let wid = webhook.id;
    let now = clock::now_ms();
    let deliver_held = input.deliver_held;
    if !deliver_held {
        // What the disable left to hold is held first (a chunk per transaction, so other
        // writers go in between): the discard then takes every delivery that was unfinished
        // while the webhook was disabled, not only those the sweep had reached.
        while blocking(&state.store, move |s| s.hold_chunk(wid, clock::now_ms())).await? {
            tokio::task::yield_now().await;
        }
    }
    let outcome = blocking(&state.store, move |s| {
        s.set_webhook_lifecycle(wid, Lifecycle::Enable { deliver_held }, now)
    })
    .await?
    .ok_or_else(|| ApiError::not_found("webhook"))?;
    if !outcome.changed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_disabled",
            "this webhook is not disabled (to switch deliveries on or off, PATCH \"active\")",
        ));
    }
    // A backlog past the first chunk is released (or cancelled) by the sweep.
    state.scheduler.wake_jobs();
    tracing::info!(webhook = %wid, deliver_held, deliveries = outcome.deliveries, "webhook enabled");
    state
        .scheduler
        .emitter()
        .webhook_enabled(&outcome.webhook, deliver_held, outcome.deliveries, now)
        .await;
    let held = blocking(&state.store, move |s| s.held_count(wid)).await?;
    let mut out = WebhookOut::from(&outcome.webhook);
    out.held_deliveries = Some(held);
    Ok(Json(out))
}

/// Change a webhook.
///
/// `PATCH /api/webhooks/{id}`: any of url, events, secret, active, description.
#[utoipa::path(
    patch,
    path = "/api/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The webhook after the change", body = WebhookOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 422, description = "a field is invalid (`field` names it)", body = crate::api::ErrorOut),
        (status = 409, description = "`managed_by_config`: the operator endpoint is set from the configuration", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    JsonBody(mut patch): JsonBody<WebhookPatch>,
) -> Result<Json<WebhookOut>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    not_managed_by_config(&webhook)?;
    let policy = state.address_policy.load();
    let context = super::options::OptionsContext {
        allow_http: state.allow_http,
        policy: &policy,
    };
    let options = patch.take_options().apply(&webhook.options, context)?;
    let changes = WebhookChanges {
        url: patch
            .url
            .map(|url| {
                let url = validate_url(&url, state.allow_http)?;
                check_url_address(&url, &state.address_policy.load())?;
                Ok::<_, ApiError>(url)
            })
            .transpose()?,
        events: patch
            .events
            .map(|events| parse_events(&events))
            .transpose()?,
        secret: patch
            .secret
            .map(|secret| validate_secret(&secret))
            .transpose()?,
        rotate: None,
        active: patch.active,
        description: patch.description.map(validate_description).transpose()?,
        options: (options != webhook.options).then_some(options),
    };
    let id = webhook.id;
    let updated = blocking(&state.store, move |s| {
        s.update_webhook(id, changes, clock::now_ms())
    })
    .await?
    .ok_or_else(|| ApiError::not_found("webhook"))?;
    // The store told the scheduler (issue 13, item 5): a reactivated webhook's held
    // deliveries come back at once.
    Ok(Json(WebhookOut::from(&updated)))
}

/// The prefix of generated secrets. Not `whsec_`: Standard Webhooks libraries read a
/// `whsec_` secret as base64, while our secret is used as its UTF-8 bytes (the spec's
/// `verify_signature`); the answer gives the library form as `standard_webhooks_secret`.
const GENERATED_SECRET_PREFIX: &str = "pwsec_";

/// Default overlap of a rotation (24 h) and its maximum (7 d).
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Rotate a webhook's secret.
///
/// `POST /api/webhooks/{id}/rotate-secret` → 200 with the webhook and the new `secret` (shown
/// this once). `X-Palo-Signature` uses the new secret from now on; the old one also signs
/// `webhook-signature` until `previous_secret_expires_at` (issue 5).
///
/// # Errors
/// 422 for a short secret or a bad `grace`; 404 for an unknown webhook.
#[utoipa::path(
    post,
    path = "/api/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    request_body = Option<RotateSecretIn>,
    responses(
        (status = 200, description = "The webhook with the new `secret`, shown this once", body = WebhookOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 422, description = "a short secret or a bad `grace`", body = crate::api::ErrorOut),
        (status = 409, description = "`managed_by_config`: the operator endpoint is set from the configuration", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<WebhookOut>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    not_managed_by_config(&webhook)?;
    // Both fields are optional, so an empty body (or `null`) is an empty object; a body must
    // be JSON.
    let trimmed = body.trim_ascii();
    let input: RotateSecretIn = if trimmed.is_empty() || trimmed == b"null" {
        RotateSecretIn::default()
    } else {
        super::extract::require_json_content_type(&headers)?;
        super::extract::parse_json(&body)?
    };
    let secret = match input.secret {
        Some(s) => validate_secret(&s)?,
        None => Secret(format!("{GENERATED_SECRET_PREFIX}{}", random_hex(32))),
    };
    let grace = match input.grace {
        None => DEFAULT_GRACE,
        Some(text) => humantime::parse_duration(text.trim())
            .map_err(|_| ApiError::invalid("grace", "must be a duration like 24h, 90m or 0s"))?,
    };
    if grace > MAX_GRACE {
        return Err(ApiError::invalid("grace", "must be at most 7d"));
    }
    if secret == webhook.secret {
        // A retried rotation: nothing changes, not even `updated_at`.
        let mut out = WebhookOut::from(&webhook);
        out.show_secret(&secret);
        return Ok(Json(out));
    }
    let now = clock::now_ms();
    let until = now + u64::try_from(grace.as_millis()).unwrap_or(u64::MAX / 2);
    let changes = WebhookChanges {
        rotate: Some((secret.clone(), until)),
        ..WebhookChanges::default()
    };
    let id = webhook.id;
    let updated = blocking(&state.store, move |s| s.update_webhook(id, changes, now))
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    tracing::info!(webhook = %id, grace_s = grace.as_secs(), "webhook secret rotated");
    let mut out = WebhookOut::from(&updated);
    out.show_secret(&secret);
    Ok(Json(out))
}

/// Delete a webhook.
///
/// `DELETE /api/webhooks/{id}` → 204; its unfinished deliveries become `cancelled`.
#[utoipa::path(
    delete,
    path = "/api/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    responses(
        (status = 204, description = "Deleted; its unfinished deliveries are cancelled"),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`managed_by_config`: the operator endpoint is set from the configuration", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    not_managed_by_config(&webhook)?;
    let id = webhook.id;
    let cancelled = blocking(&state.store, move |s| s.delete_webhook(id, clock::now_ms()))
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    metrics::counter!(crate::metrics::DELIVERIES_FINISHED, "outcome" => "cancelled")
        .increment(cancelled);
    // A backlog past the first chunk is cancelled by the sweep.
    state.scheduler.wake_jobs();
    tracing::info!(webhook = %id, cancelled, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_https_without_credentials() {
        assert!(validate_url("https://example.com/hook", false).is_ok());
        assert!(validate_url("https://[::1]:8443/hook", false).is_ok());
        assert!(validate_url("http://example.com/hook", false).is_err());
        assert!(validate_url("http://example.com/hook", true).is_ok());
        assert!(validate_url("ftp://example.com/", true).is_err());
        assert!(validate_url("/relative", true).is_err());
        assert!(validate_url("https://user:pw@example.com/", false).is_err());
        assert!(validate_url("example.com", false).is_err());
        assert!(validate_url("https://example.com:99999/", false).is_err());
        assert!(validate_url("https://example.com:0/", false).is_err());
        assert_eq!(
            validate_url("https://example.com/h#frag", false).unwrap(),
            "https://example.com/h"
        );
    }

    #[test]
    fn urls_are_normalized_idn_to_ascii_and_malformed_hosts_refused() {
        assert_eq!(
            validate_url("https://Bücher.Example/hook", false).unwrap(),
            "https://xn--bcher-kva.example/hook"
        );
        assert_eq!(
            validate_url("https://[::1]:8443/h", false).unwrap(),
            "https://[::1]:8443/h"
        );
        // Found by the url_policy fuzz target: hosts the old parser let through.
        for bad in ["https://1.2.3.999/", "https://[v1.x]/", "https://xn--/"] {
            assert!(validate_url(bad, false).is_err(), "{bad} must be refused");
        }
        // What is stored is what re-validates to itself.
        let once = validate_url("https://EXAMPLE.com:443/a/../b?q=1#f", false).unwrap();
        assert_eq!(validate_url(&once, false).unwrap(), once);
    }

    #[test]
    fn events_must_be_known_or_star() {
        assert_eq!(parse_events(&["*".into()]).unwrap(), EventFilter::All);
        assert!(parse_events(&[]).is_err());
        assert!(parse_events(&["ticket.deleted".into()]).is_err());
        assert!(parse_events(&["webhook.test".into()]).is_err());
        assert!(parse_events(&["*".into(), "bogus".into()]).is_err());
        let only = parse_events(&["ticket.created".into(), "ticket.created".into()]).unwrap();
        assert_eq!(only, EventFilter::Only(vec![EventType::TicketCreated]));
    }
}
