//! What every HTTP endpoint shares: the JSON errors, the caller's rights (API keys, JWTs, the
//! loopback rule), the request guards, CORS, where a request comes from, and strict query parsing.

pub(crate) mod auth;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod jwt;
pub(crate) mod peer;
pub(crate) mod query;

/// Headers from name and value pairs, for the unit tests of this folder.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    h
}
