//! The browser side, compiled into the binary so it works from anywhere: the demo dashboard at
//! `/`, its icon at `/favicon.ico`, and the files under `/web/` (the client module `ssegate.js`,
//! its type declarations, and the demo's script and styles).

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// Name, content type and contents of each file served under `/web/`.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../web/index.html")),
    ("demo.js", "text/javascript; charset=utf-8", include_str!("../../web/demo.js")),
    ("demo.css", "text/css; charset=utf-8", include_str!("../../web/demo.css")),
    ("ssegate.js", "text/javascript; charset=utf-8", include_str!("../../web/ssegate.js")),
    ("ssegate.d.ts", "text/plain; charset=utf-8", include_str!("../../web/ssegate.d.ts")),
];

fn serve(name: &str) -> Option<Response> {
    let (_, kind, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let mut res = (*body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Small files; always revalidate so a new gateway version is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(res)
}

/// `GET /`: the demo dashboard.
pub(crate) async fn index() -> Response {
    serve("index.html").unwrap_or_else(|| ApiError::not_found("not_found", "no demo page").into_response())
}

/// The gateway's icon: a 32×32 PNG, which every browser takes at `/favicon.ico`.
const FAVICON: &[u8] = include_bytes!("../../web/favicon.png");

/// `GET /favicon.ico`: the icon browsers ask every site for (so the demo page logs no 404).
pub(crate) async fn favicon() -> Response {
    let mut res = FAVICON.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    // It changes with a new release at most: a day is short enough.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    res
}

/// `GET /web/{file}`.
pub(crate) async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    serve(&name).ok_or_else(|| ApiError::not_found("not_found", format!("no file {name:?} under /web/")))
}
