//! Extractors: the authenticated caller, strict JSON bodies and query strings, each
//! answering our JSON error shape on rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::json_strict;

/// Who is calling: the admin token, or an organization API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: every organization.
    Admin,
    /// An organization API key: that organization only.
    Organization(String),
}

impl Caller {
    /// Whether the caller may see resources of `organization_id`.
    pub fn can_see(&self, organization_id: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Organization(own) => own == organization_id,
        }
    }

    /// The organization a write acts for: the body's `organization_id` for the admin
    /// (required), the key's own for an organization key (403 if the body names another).
    ///
    /// # Errors
    /// 422 when the admin names none; 403 when a key names another organization.
    pub fn acting_for(&self, named: Option<&str>) -> Result<String, ApiError> {
        match (self, named) {
            (Caller::Admin, Some(org)) => Ok(org.to_owned()),
            (Caller::Admin, None) => Err(ApiError::invalid(
                "organization_id",
                "is required with the admin token",
            )),
            (Caller::Organization(own), Some(org)) if org != own => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key acts for another organization",
            )),
            (Caller::Organization(own), _) => Ok(own.clone()),
        }
    }

    /// The admin only.
    ///
    /// # Errors
    /// 403 for an organization key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Organization(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this call needs the admin token",
            )),
        }
    }
}

/// SHA-256 of a token, the only form in which tokens are compared or stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// The caller that [`super::guard::authenticate`] resolved for this request.
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token",
            )
        })
    }
}

/// A JSON request body checked by [`json_strict`] (RFC 8259, no duplicate keys) before
/// serde reads it. 415 without `Content-Type: application/json`, 413 over the body limit,
/// 400 for what is not JSON, 422 for JSON of the wrong shape (naming the field).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is over the size limit",
                )
            } else {
                ApiError::bad_json("could not read the request body")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// 415 `unsupported_media_type` unless the request says `Content-Type: application/json`.
///
/// # Errors
/// [`ApiError`] 415 as above.
pub fn require_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body with Content-Type: application/json",
        ))
    }
}

/// Parses untrusted JSON bytes: a leading UTF-8 BOM is ignored; invalid UTF-8 or JSON → 400;
/// valid JSON of the wrong shape → 422 naming the field.
///
/// # Errors
/// [`ApiError`] as above.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_json("the body is not valid UTF-8"))?;
    json_strict::validate(text).map_err(|e| ApiError::bad_json(format!("malformed JSON: {e}")))?;
    // serde's derived structs also accept an array of their fields in order; every body of
    // this API is an object, and an array is a client's mistake.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            missing_field(&inner).unwrap_or_default()
        } else {
            path
        };
        ApiError::invalid(field, inner)
    })
}

/// The field named by serde's "missing field `name`" message, which has no path of its own.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// A query string, 400 `invalid_query` when it does not parse.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_query(e.body_text()))
    }
}

/// Page size from `?limit=` (default 50, 1 to 500).
///
/// # Errors
/// 400 `invalid_query` outside 1..=500.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(50),
        Some(n @ 1..=500) => Ok(n),
        Some(_) => Err(ApiError::bad_query("limit must be between 1 and 500")),
    }
}

/// Parses a cursor (an id of the list's kind).
///
/// # Errors
/// 400 `invalid_query` when it is not one.
pub fn cursor<I: std::str::FromStr>(cursor: Option<&str>) -> Result<Option<I>, ApiError> {
    // An empty `cursor=` is the first page, like no cursor (a form or a client that always
    // sends the parameter).
    cursor
        .filter(|c| !c.is_empty())
        .map(|c| c.parse().map_err(|_| ApiError::bad_query("invalid cursor")))
        .transpose()
}

/// The one `{id}` path parameter of a route. A parameter that is not valid UTF-8 after
/// percent-decoding cannot name anything we store: 404 in our JSON shape.
pub struct ApiPath(pub String);

impl FromRequestParts<AppState> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource"))
    }
}
