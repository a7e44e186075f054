//! `/api/webhooks/{id}/recover`, `/api/webhooks/{id}/replay` and `/api/jobs` (issue 15,
//! item 5): recovery and replay as jobs stored in the db, stepped by the scheduler's job
//! runner, visible and cancellable while they run.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{cursor, page_limit, ApiPath, ApiQuery, JsonBody};
use super::types::Page;
use super::webhooks::visible_webhook;
use super::{ApiError, AppState, Caller};
use crate::clock::{self, format_ms};
use crate::event::EventType;
use crate::ids::JobId;
use crate::model::{DeliveryStatus, Job, JobKind, JobState};
use crate::store::blocking;

/// `POST /api/webhooks/{id}/recover`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    /// Start of the window (RFC 3339), on the deliveries' creation time.
    #[schema(format = DateTime)]
    pub since: String,
    /// End of the window (RFC 3339, exclusive); default now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Statuses to re-send: any of `failed`, `succeeded`, `cancelled`; default `["failed"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<String>>,
}

/// `POST /api/webhooks/{id}/replay`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    /// Start of the window (RFC 3339), on the events' time of ingest.
    #[schema(format = DateTime)]
    pub since: String,
    /// End of the window (RFC 3339, exclusive); default now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Event types to replay; default: the types the webhook subscribes to now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
}

/// A job as answered.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobOut {
    /// `job_<ULID>`.
    pub id: String,
    /// `recover` or `replay`.
    pub kind: String,
    /// The webhook's organization.
    pub organization_id: String,
    /// The webhook it works for.
    pub webhook_id: String,
    /// `queued`, `running`, `finished` or `cancelled`.
    pub state: String,
    /// The window, RFC 3339 (`until` exclusive).
    pub since: String,
    /// End of the window.
    pub until: String,
    /// `recover`: the statuses re-sent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub statuses: Option<Vec<String>>,
    /// `replay`: the event types (null: the webhook's subscriptions).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_types: Option<Vec<String>>,
    /// Deliveries (recover) or events (replay) that matched so far.
    pub matched: u64,
    /// Deliveries queued for an attempt so far.
    pub queued: u64,
    /// Queued deliveries that ended `succeeded`.
    pub succeeded: u64,
    /// Queued deliveries that ended otherwise.
    pub failed: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, null until its first step.
    pub started_at: Option<String>,
    /// RFC 3339, null until final.
    pub finished_at: Option<String>,
}

impl From<&Job> for JobOut {
    fn from(j: &Job) -> JobOut {
        let (statuses, event_types) = match &j.kind {
            JobKind::Recover { statuses } => (
                Some(statuses.iter().map(|s| s.as_str().to_owned()).collect()),
                None,
            ),
            JobKind::Replay { event_types } => (
                None,
                event_types
                    .as_ref()
                    .map(|types| types.iter().map(|t| t.as_str().to_owned()).collect()),
            ),
        };
        JobOut {
            id: j.id.to_string(),
            kind: j.kind.as_str().to_owned(),
            organization_id: j.organization_id.clone(),
            webhook_id: j.webhook_id.to_string(),
            state: j.state.as_str().to_owned(),
            since: format_ms(j.since_ms),
            until: format_ms(j.until_ms),
            statuses,
            event_types,
            matched: j.matched,
            queued: j.queued,
            succeeded: j.succeeded,
            failed: j.failed,
            created_at: format_ms(j.created_at_ms),
            started_at: j.started_at_ms.map(format_ms),
            finished_at: j.finished_at_ms.map(format_ms),
        }
    }
}

fn window(since: &str, until: Option<&str>, now_ms: u64) -> Result<(u64, u64), ApiError> {
    let time = |field: &str, text: &str| {
        clock::parse_rfc3339(text)
            .map(|(_, ms)| ms)
            .map_err(|reason| ApiError::invalid(field, reason))
    };
    let since_ms = time("since", since)?;
    // A window cannot reach past now: a job looks at what exists when it starts.
    let until_ms = match until {
        Some(text) => time("until", text)?.min(now_ms),
        None => now_ms,
    };
    if since_ms >= until_ms {
        return Err(ApiError::invalid("since", "must be before until (or now)"));
    }
    Ok((since_ms, until_ms))
}

async fn start_job(
    state: &AppState,
    webhook: &crate::model::Webhook,
    kind: JobKind,
    (since_ms, until_ms): (u64, u64),
    now_ms: u64,
) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    // Its deliveries would only be held (or postponed) and the job would wait on them.
    if webhook.disabled.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhook_disabled",
            "this webhook is disabled: enable it first (POST /api/webhooks/{id}/enable)",
        ));
    }
    if !webhook.active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhook_unavailable",
            "this webhook is inactive: activate it first",
        ));
    }
    let job = Job {
        id: JobId::generate(),
        organization_id: webhook.organization_id.clone(),
        webhook_id: webhook.id,
        kind,
        since_ms,
        until_ms,
        state: JobState::Queued,
        cursor: None,
        scan_done: false,
        matched: 0,
        queued: 0,
        succeeded: 0,
        failed: 0,
        created_at_ms: now_ms,
        started_at_ms: None,
        finished_at_ms: None,
    };
    let stored = job.clone();
    blocking(&state.store, move |s| s.create_job(&stored)).await?;
    tracing::info!(job = %job.id, kind = job.kind.as_str(), webhook = %job.webhook_id, "job created");
    state.scheduler.wake_jobs();
    Ok((StatusCode::ACCEPTED, Json(JobOut::from(&job))))
}

/// Recover a webhook's deliveries of a time window (a job).
///
/// `POST /api/webhooks/{id}/recover {"since","until"?,"statuses"?}` → 202 job: re-sends the
/// webhook's deliveries created in the window whose status is listed (final statuses only;
/// default `failed`), each once per job ([`crate::model::JobKind::Recover`]). 422 for a bad
/// window or status.
#[utoipa::path(
    post,
    path = "/api/webhooks/{id}/recover",
    tag = "jobs",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    request_body = RecoverIn,
    responses(
        (status = 202, description = "The recovery job, started", body = JobOut, links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 422, description = "a bad window or status", body = crate::api::ErrorOut),
        (status = 409, description = "`webhook_unavailable`: the webhook is inactive or disabled", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn recover(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    JsonBody(input): JsonBody<RecoverIn>,
) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let now = clock::now_ms();
    let window = window(&input.since, input.until.as_deref(), now)?;
    let names = input.statuses.unwrap_or_else(|| vec!["failed".to_owned()]);
    if names.is_empty() {
        return Err(ApiError::invalid(
            "statuses",
            "must list at least one status",
        ));
    }
    let mut statuses = Vec::new();
    for name in &names {
        let status = DeliveryStatus::parse(name)
            .filter(|s| s.is_final())
            .ok_or_else(|| {
                ApiError::invalid(
                    "statuses",
                    format!("{name:?} is not one of failed, succeeded, cancelled"),
                )
            })?;
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    start_job(&state, &webhook, JobKind::Recover { statuses }, window, now).await
}

/// Replay events a webhook never had (a job).
///
/// `POST /api/webhooks/{id}/replay {"since","until"?,"event_types"?}` → 202 job: creates a
/// delivery to the webhook for each event of its organization received in the window that
/// it never had (of these types; default: what it subscribes to now). 422 for a bad window
/// or type.
#[utoipa::path(
    post,
    path = "/api/webhooks/{id}/replay",
    tag = "jobs",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    request_body = ReplayIn,
    responses(
        (status = 202, description = "The replay job, started", body = JobOut, links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 422, description = "a bad window or event type", body = crate::api::ErrorOut),
        (status = 409, description = "`webhook_unavailable`: the webhook is inactive or disabled", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    JsonBody(input): JsonBody<ReplayIn>,
) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let now = clock::now_ms();
    let window = window(&input.since, input.until.as_deref(), now)?;
    let event_types = match input.event_types {
        None => None,
        Some(names) if names.is_empty() => {
            return Err(ApiError::invalid(
                "event_types",
                "must list at least one event type (or be left out)",
            ))
        }
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    EventType::parse(name)
                        .filter(|t| *t != EventType::WebhookTest && !t.is_operational())
                        .ok_or_else(|| {
                            ApiError::invalid("event_types", format!("unknown event type {name:?}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    start_job(
        &state,
        &webhook,
        JobKind::Replay { event_types },
        window,
        now,
    )
    .await
}

/// Query of `GET /api/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListJobs {
    organization_id: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List recovery and replay jobs.
///
/// `GET /api/jobs?limit=&cursor=` (admin: `organization_id=` optional) → a page, newest first.
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "jobs",
    params(ListJobs),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = Page<JobOut>)
    )
)]
pub(super) async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListJobs>,
) -> Result<Json<Page<JobOut>>, ApiError> {
    let limit = page_limit(query.limit)?;
    let before: Option<JobId> = cursor(query.cursor.as_deref())?;
    let org = match &caller {
        Caller::Admin => query.organization_id,
        Caller::Organization(own) => Some(own.clone()),
    };
    let jobs = blocking(&state.store, move |s| {
        s.list_jobs(org.as_deref(), before, limit + 1)
    })
    .await?;
    Ok(Json(Page::new(
        &jobs,
        limit,
        |j| j.id.to_string(),
        |j| JobOut::from(j),
    )))
}

async fn visible_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::not_found("job"))?;
    blocking(&state.store, move |s| s.get_job(id))
        .await?
        .filter(|j| caller.can_see(&j.organization_id))
        .ok_or_else(|| ApiError::not_found("job"))
}

/// Get a job and its progress.
///
/// `GET /api/jobs/{id}` → the job with its progress.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id (`job_...`).")),
    responses(
        (status = 200, description = "The job and its progress", body = JobOut),
        (status = 404, description = "no such job visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<JobOut>, ApiError> {
    Ok(Json(JobOut::from(
        &visible_job(&state, &caller, &id).await?,
    )))
}

/// Cancel a job.
///
/// `POST /api/jobs/{id}/cancel` → 200 job `cancelled`: it queues nothing more; deliveries
/// already queued go on and are counted, and `recovery.finished` is emitted when the last has
/// ended (`finished_at`). 409 `job_finished` when it is final.
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id (`job_...`).")),
    responses(
        (status = 200, description = "The job, `cancelled`", body = JobOut),
        (status = 404, description = "no such job visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`job_finished`: the job is final", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<JobOut>, ApiError> {
    let job = visible_job(&state, &caller, &id).await?;
    if job.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("this job is {} already", job.state.as_str()),
        ));
    }
    let id = job.id;
    let now = clock::now_ms();
    let job = blocking(&state.store, move |s| s.cancel_job(id, now))
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    tracing::info!(job = %id, "job cancelled");
    // The runner counts what it queued and emits `recovery.finished` once that has ended.
    state.scheduler.wake_jobs();
    Ok(Json(JobOut::from(&job)))
}
