//! JSON Web Tokens (`--jwt-key`): where a token is found (`Authorization: Bearer`, the query
//! parameter `access_token`, the cookie `ssegate_token`), how it is verified (signature, `exp`,
//! `nbf`), and the rights its `ssegate` claim grants.

use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::JwtKey;
use crate::core::event::now_ms;
use crate::core::topic::Pattern;
use crate::http::error::ApiError;

/// The cookie a browser may carry its token in.
pub(crate) const COOKIE: &str = "ssegate_token";

/// Where a token was found. A cookie is sent by the browser whatever page makes the request, so
/// a request that carries its credentials only there gets the cross-site checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `Authorization: Bearer`.
    Header,
    /// The query parameter `access_token`.
    Query,
    /// The cookie `ssegate_token`.
    Cookie,
}

/// The rights in a token's `ssegate` claim.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Rights {
    /// Patterns the holder may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns the holder may publish to.
    pub publish: Vec<String>,
    /// Whether the holder may target clients, broadcast and use `/clients…` and `/topics`.
    pub admin: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    ssegate: Rights,
}

/// A verified token: its claims and the rights they grant.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The whole payload, as the backend gets it with each `rpc`.
    pub claims: Value,
    /// `subscribe`, parsed; patterns that do not parse grant nothing.
    pub subscribe: Vec<Pattern>,
    /// `publish`, parsed.
    pub publish: Vec<Pattern>,
    /// `admin`.
    pub admin: bool,
    /// `exp`, in unix seconds.
    pub exp: Option<u64>,
}

impl Identity {
    /// Whether the token lets its holder subscribe to `p`.
    pub(crate) fn may_subscribe(&self, p: &Pattern) -> bool {
        self.subscribe.iter().any(|c| c.covers(p))
    }

    /// Whether the token lets its holder publish to `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.admin || self.publish.iter().any(|c| c.matches(topic))
    }

    /// Milliseconds until the token expires (0 once it has), if it expires.
    pub(crate) fn expires_in_ms(&self) -> Option<u64> {
        self.exp.map(|exp| exp.saturating_mul(1000).saturating_sub(now_ms()))
    }
}

/// `401 unauthorized` with a message.
pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The bearer credential of `Authorization`, the scheme matched in any case (RFC 7235).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim())
}

/// The value of the `ssegate_token` cookie, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The token a request carries, and where: the header first, then `access_token`, then the
/// cookie.
pub(crate) fn token<'a>(headers: &'a HeaderMap, access_token: Option<&'a str>) -> Option<(&'a str, Source)> {
    let found = bearer(headers)
        .map(|t| (t, Source::Header))
        .or_else(|| access_token.map(|t| (t, Source::Query)))
        .or_else(|| cookie(headers).map(|t| (t, Source::Cookie)));
    found.filter(|(t, _)| !t.is_empty())
}

/// Verifies `token` with `key`: its signature and algorithm, `exp` and `nbf` (no leeway), and
/// the shape of its `ssegate` claim. Any failure is `401 unauthorized`; why is logged at debug
/// level, never the token.
pub(crate) fn verify(key: &JwtKey, token: &str) -> Result<Identity, ApiError> {
    let mut validation = jsonwebtoken::Validation::new(key.algorithm);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
        tracing::debug!(error = %e, "a token was refused");
        match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => unauthorized("the token is not valid yet (nbf)"),
            _ => unauthorized("the token is not valid"),
        }
    })?;
    let claims: Claims = serde_json::from_value(data.claims.clone())
        .map_err(|_| unauthorized("the token's ssegate claim is not {subscribe, publish, admin}"))?;
    // RFC 7519: the token is valid *before* `exp`; the library still takes it during that second.
    if claims.exp.is_some_and(|exp| exp.saturating_mul(1000) <= now_ms()) {
        return Err(unauthorized("the token has expired"));
    }
    let parse = |list: &[String]| list.iter().filter_map(|p| Pattern::parse(p).ok()).collect::<Vec<_>>();
    Ok(Identity {
        subscribe: parse(&claims.ssegate.subscribe),
        publish: parse(&claims.ssegate.publish),
        admin: claims.ssegate.admin,
        exp: claims.exp,
        claims: data.claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    #[test]
    fn tokens_are_found_in_header_query_and_cookie() {
        assert_eq!(bearer(&headers(&[("authorization", "BEARER abc")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        let h = headers(&[("cookie", "a=1; ssegate_token=tok; b=2")]);
        assert_eq!(token(&h, None), Some(("tok", Source::Cookie)));
        assert_eq!(token(&h, Some("q")), Some(("q", Source::Query)));
        assert_eq!(token(&HeaderMap::new(), Some("")), None);
    }

    #[test]
    fn a_token_is_verified_with_its_claims() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let key = JwtKey::parse("s3cret").unwrap();
        let sign = |claims: Value| encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s3cret")).unwrap();
        let exp = now_ms() / 1000 + 60;
        let id = verify(&key, &sign(serde_json::json!({"exp": exp, "ssegate": {"subscribe": ["a/**"]}}))).unwrap();
        assert!(id.may_subscribe(&Pattern::parse("a/*").unwrap()));
        assert!(!id.may_subscribe(&Pattern::parse("b").unwrap()));
        assert!(!id.may_publish("a/x"));
        let old = sign(serde_json::json!({"exp": exp - 120, "ssegate": {"subscribe": ["**"]}}));
        assert_eq!(verify(&key, &old).unwrap_err().message, "the token has expired");
        let later = sign(serde_json::json!({"nbf": exp, "ssegate": {}}));
        assert_eq!(verify(&key, &later).unwrap_err().status, StatusCode::UNAUTHORIZED);
        let other = encode(&Header::default(), &serde_json::json!({}), &EncodingKey::from_secret(b"nope")).unwrap();
        assert!(verify(&key, &other).is_err());
    }
}
