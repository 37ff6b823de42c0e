//! The WebSocket opening handshake checked as RFC 6455 §4.2.1 says, once for both serving paths:
//! the socket path ([`crate::edge::direct`]) and the axum path ([`crate::transport::ws::upgrade`]), so a client
//! gets the same answer whichever way its connection went.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// The only WebSocket version the gateway speaks (RFC 6455).
pub(crate) const VERSION: &str = "13";

/// A refused handshake: the error to answer, with `Sec-WebSocket-Version: 13` when the client
/// asked for another version (`426`, RFC 6455 §4.4).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) ApiError);

impl Refused {
    /// Headers to send besides the error's own.
    pub(crate) fn headers(&self) -> &'static [(&'static str, &'static str)] {
        if self.0.status == StatusCode::UPGRADE_REQUIRED {
            &[("sec-websocket-version", VERSION)]
        } else {
            &[]
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let extra = self.headers();
        let mut res = self.0.into_response();
        for (name, value) in extra {
            res.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        res
    }
}

/// Checks an HTTP/1.1 upgrade request's headers (the caller checks the method and the HTTP
/// version) and returns the `Sec-WebSocket-Accept` to answer with. `Connection: upgrade` and
/// `Upgrade: websocket` must be there, `Sec-WebSocket-Version` must be 13 (else `426`), and
/// `Sec-WebSocket-Key` the base64 of exactly 16 bytes; a request with a body is refused, since
/// its bytes would be read as WebSocket frames.
pub(crate) fn check(headers: &HeaderMap) -> Result<String, Refused> {
    let missing = |m: &str| Refused(ApiError::bad_request("websocket_required", m));
    if !lists(headers, header::CONNECTION, "upgrade") {
        return Err(missing("a WebSocket handshake needs `Connection: upgrade`"));
    }
    if !lists(headers, header::UPGRADE, "websocket") {
        return Err(missing("a WebSocket handshake needs `Upgrade: websocket`"));
    }
    let versions: Vec<_> = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter().collect();
    if versions.len() != 1 || versions[0].as_bytes().trim_ascii() != VERSION.as_bytes() {
        return Err(Refused(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
            "this server speaks WebSocket version 13 only (`Sec-WebSocket-Version: 13`)",
        )));
    }
    let bad_key = |m: &str| Refused(ApiError::bad_request("invalid_websocket_key", m));
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.as_bytes().trim_ascii(),
        (None, _) => return Err(bad_key("`Sec-WebSocket-Key` is missing")),
        (Some(_), Some(_)) => return Err(bad_key("`Sec-WebSocket-Key` is given more than once")),
    };
    if !is_nonce(key) {
        return Err(bad_key("`Sec-WebSocket-Key` must be the base64 of 16 bytes"));
    }
    if has_body(headers) {
        return Err(Refused(ApiError::bad_request("invalid_request", "a WebSocket handshake has no body")));
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// Whether the request says a body follows: `Transfer-Encoding`, or a `Content-Length` other
/// than 0.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get_all(header::CONTENT_LENGTH).iter().any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// Whether a comma-separated header holds `token` (any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `key` is the base64 (standard alphabet, padded) of exactly 16 bytes: 22 characters
/// and `==`.
fn is_nonce(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/');
    key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn with(change: &[(&str, Option<&str>)]) -> HeaderMap {
        let mut pairs: Vec<(&str, &str)> = GOOD.to_vec();
        for (name, value) in change {
            pairs.retain(|(n, _)| n != name);
            if let Some(v) = value {
                pairs.push((name, v));
            }
        }
        headers(&pairs)
    }

    #[test]
    fn the_rfc_example_is_accepted() {
        assert_eq!(check(&headers(&GOOD)).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(check(&with(&[("content-length", Some("0"))])).is_ok());
    }

    #[test]
    fn each_missing_or_wrong_part_is_refused() {
        let status = |change: &[(&str, Option<&str>)]| check(&with(change)).unwrap_err().0.status;
        assert_eq!(status(&[("connection", None)]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("upgrade", Some("h2c"))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("sec-websocket-key", None)]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("sec-websocket-key", Some(""))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("sec-websocket-key", Some("dGhlIHNhbXBsZQ=="))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("sec-websocket-key", Some("dGhlIHNhbXBsZSBub25jZQ!!"))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("content-length", Some("5"))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("transfer-encoding", Some("chunked"))]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("sec-websocket-version", Some("8"))]), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(status(&[("sec-websocket-version", None)]), StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn a_version_mismatch_names_the_version_spoken() {
        let refused = check(&with(&[("sec-websocket-version", Some("8"))])).unwrap_err();
        let res = refused.into_response();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(res.headers()["sec-websocket-version"], "13");
    }
}
