//! The web UI (spec: "Paramètres → Développeurs → Webhooks"): static assets compiled into
//! the binary and served under `/ui/`, no CDN, no build step, no Node.js at run time.
//!
//! The page is a small script (`src/ui/app.js`) that calls the JSON API with the person's
//! token as a bearer token, kept in `sessionStorage`: no cookie, so no request is made with
//! the person's rights unless the script makes it (no CSRF surface). Every answer here carries
//! a strict Content-Security-Policy (scripts and styles from this origin only, no inline
//! script, no framing), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
//! The script builds the page with DOM calls and `textContent` only, so receiver and producer
//! text is never parsed as HTML.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::AppState;

/// Where the UI is served; the start-up log line prints it.
pub const UI_PATH: &str = "/ui/";

/// The Content-Security-Policy of every UI answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const FAVICON_SVG: &str = include_str!("../ui/favicon.svg");

/// One compiled-in asset and its strong validator.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        Asset {
            body,
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
        }
    }
}

static JS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static CSS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));
static ICON: LazyLock<Asset> = LazyLock::new(|| Asset::new(FAVICON_SVG, "image/svg+xml"));

/// The UI's routes: `/` and `/ui` redirect to `/ui/`, which serves the page; the assets are
/// `/ui/app.js`, `/ui/app.css`, `/ui/favicon.svg`. No token is needed to load them: they hold
/// no data.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(UI_PATH) }))
        .route("/ui", get(|| async { Redirect::to(UI_PATH) }))
        .route(UI_PATH, get(index))
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { serve(&JS, &h) }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { serve(&CSS, &h) }),
        )
        .route(
            "/ui/favicon.svg",
            get(|h: HeaderMap| async move { serve(&ICON, &h) }),
        )
}

/// Headers for every answer of the daemon (API JSON, redirects, errors): nothing it serves
/// may be sniffed into another type or framed. UI pages set their own, stricter policy.
pub async fn baseline_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    response
}

/// The headers every UI answer carries.
fn protect(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// An asset, or 304 when the client holds this version (`If-None-Match`). `no-cache`: the
/// browser checks at each load, so an upgraded daemon's UI is used at once.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    protect(&mut response);
    response
}

/// The page's language from `Accept-Language` (RFC 9110 §12.5.4): `fr` or `en`, whichever
/// the browser ranks higher (by q-value, then order); `en` when it names neither.
pub fn language(accept_language: Option<&str>) -> &'static str {
    let mut best: Option<(f32, usize, &'static str)> = None;
    for (position, part) in accept_language.unwrap_or("").split(',').enumerate() {
        let mut pieces = part.split(';');
        let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let lang = match primary {
            "fr" => "fr",
            "en" => "en",
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, bp, _)| q > bq || (q == bq && position < bp)) {
            best = Some((q, position, lang));
        }
    }
    best.map_or("en", |(_, _, lang)| lang)
}

/// `GET /ui/`: the page, its `lang` set from `Accept-Language` (the script follows it unless
/// the person picked a language with the switch).
async fn index(headers: HeaderMap) -> Response {
    let lang = language(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML.replace("{{lang}}", lang),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    protect(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::language;

    #[test]
    fn the_language_follows_accept_language() {
        assert_eq!(language(None), "en");
        assert_eq!(language(Some("fr-FR,fr;q=0.9,en;q=0.8")), "fr");
        assert_eq!(language(Some("en-US,en;q=0.9,fr;q=0.8")), "en");
        assert_eq!(language(Some("de-DE,fr;q=0.5,en;q=0.4")), "fr");
        assert_eq!(language(Some("fr;q=0.2, en;q=0.7")), "en");
        assert_eq!(language(Some("fr;q=0, de")), "en");
        assert_eq!(language(Some("*")), "en");
    }

    #[test]
    fn the_script_never_parses_text_as_html() {
        // The UI builds nodes with createElement and textContent; these sinks would let a
        // receiver's response body or a payload run as markup.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(
                !super::APP_JS.contains(sink),
                "app.js uses {sink}, which parses text as HTML or code"
            );
        }
    }
}
