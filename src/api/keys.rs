//! `/api/keys`: organization API keys (admin only). The key text is returned once and
//! stored only as its SHA-256.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::extract::{token_hash, ApiPath, JsonBody};
use super::types::{KeyIn, KeyOut};
use super::{ApiError, AppState, Caller};
use crate::clock;
use crate::event::check_external_id;
use crate::ids::{random_hex, KeyId};
use crate::model::ApiKey;
use crate::store::blocking;

/// Create an organization API key.
///
/// `POST /api/keys` → 201 with the key, shown this once.
#[utoipa::path(
    post,
    path = "/api/keys",
    tag = "keys",
    request_body = KeyIn,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = KeyOut, links(("DeleteKey" = (operation_id = "delete_key", parameters(("id" = "$response.body#/id")))))),
        (status = 403, description = "not the admin token", body = crate::api::ErrorOut),
        (status = 422, description = "a field is invalid", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(input): JsonBody<KeyIn>,
) -> Result<(StatusCode, Json<KeyOut>), ApiError> {
    caller.require_admin()?;
    check_external_id("organization_id", &input.organization_id)?;
    let description = input.description.unwrap_or_default();
    if description.chars().count() > 1024 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 1024 characters",
        ));
    }
    let key_text = format!("pwk_{}", random_hex(32));
    let key = ApiKey {
        id: KeyId::generate(),
        organization_id: input.organization_id,
        description,
        created_at_ms: clock::now_ms(),
        key_hash: token_hash(&key_text),
    };
    let stored = key.clone();
    blocking(&state.store, move |s| s.create_api_key(&stored)).await?;
    let mut out = KeyOut::from(&key);
    out.key = Some(key_text);
    Ok((StatusCode::CREATED, Json(out)))
}

/// List API keys.
///
/// `GET /api/keys` → every key, without the key text.
#[utoipa::path(
    get,
    path = "/api/keys",
    tag = "keys",
    responses(
        (status = 200, description = "Every key, without the key text", body = Vec<KeyOut>),
        (status = 403, description = "not the admin token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<KeyOut>>, ApiError> {
    caller.require_admin()?;
    let keys = blocking(&state.store, |s| s.list_api_keys()).await?;
    Ok(Json(keys.iter().map(KeyOut::from).collect()))
}

/// Delete an API key.
///
/// `DELETE /api/keys/{id}` → 204.
#[utoipa::path(
    delete,
    path = "/api/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id (`key_...`).")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "not the admin token", body = crate::api::ErrorOut),
        (status = 404, description = "no such key visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let id: KeyId = id.parse().map_err(|_| ApiError::not_found("key"))?;
    if blocking(&state.store, move |s| s.delete_api_key(id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("key"))
    }
}
