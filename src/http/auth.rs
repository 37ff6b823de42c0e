//! The caller's rights. Publisher and admin rights come from an API key (`Authorization: Bearer`
//! or `X-API-Key`) or a JWT whose `ssegate` claim grants them; with neither configured, from the
//! loopback rule ([`crate::http::guard::loopback_rule`]). Subscribing needs, once `--jwt-key` is
//! set, a token whose `subscribe` patterns cover the topics (or `--anonymous-topics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Config;
use crate::core::client::{Client, CloseReason};
use crate::core::event::{Audience, Draft};
use crate::core::hub::Hub;
use crate::core::topic::Pattern;
use crate::http::error::ApiError;
use crate::http::guard;
use crate::http::jwt::{self, Identity, Source};

/// What a request may publish and administer. Use it as a handler argument: a request without
/// publisher rights of some kind is refused before the handler runs.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    /// The token the rights come from; `None` for full rights (an API key, the loopback rule).
    token: Option<Arc<Identity>>,
}

impl Publisher {
    /// Full rights: an API key, or the loopback rule.
    pub(crate) const ALL: Publisher = Publisher { token: None };

    /// Rights from a verified token.
    pub(crate) fn with_token(identity: Arc<Identity>) -> Publisher {
        Publisher { token: Some(identity) }
    }

    /// Whether the caller may target clients, broadcast and use `/clients…` and `/topics`.
    pub(crate) fn is_admin(&self) -> bool {
        self.token.as_ref().is_none_or(|t| t.admin)
    }

    /// Whether the caller may publish to (or drop the state of) `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.token.as_ref().is_none_or(|t| t.may_publish(topic))
    }

    /// Refuses (`403 forbidden`) drafts the caller may not publish: a topic its token does not
    /// cover, or a targeted or broadcast event without admin rights.
    pub(crate) fn check(&self, drafts: &[Draft]) -> Result<(), ApiError> {
        for d in drafts {
            if !matches!(d.audience, Audience::Topic) && !self.is_admin() {
                return Err(forbidden("targeting clients or broadcasting needs admin rights (\"admin\": true)"));
            }
            if let Some(topic) = d.topic.as_deref() {
                if !self.may_publish(topic) {
                    return Err(forbidden(format!("your token does not allow publishing to {topic:?}")));
                }
            }
        }
        Ok(())
    }

    /// Refuses (`403 forbidden`) a caller without admin rights.
    pub(crate) fn admin(self) -> Result<Publisher, ApiError> {
        if self.is_admin() {
            Ok(self)
        } else {
            Err(forbidden("this endpoint needs admin rights (\"admin\": true) or an API key"))
        }
    }
}

/// Admin rights: an API key, the loopback rule, or a token with `"admin": true`.
#[derive(Debug, Clone)]
pub(crate) struct Admin;

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The configured API keys (an empty one never counts, whatever the configuration says).
fn keys(config: &Config) -> impl Iterator<Item = &str> {
    config.api_key.iter().map(|k| k.trim()).filter(|k| !k.is_empty())
}

/// Whether `given` is one of the configured API keys (compared in constant time).
pub(crate) fn is_api_key(config: &Config, given: &str) -> bool {
    let given = given.trim();
    !given.is_empty() && keys(config).fold(false, |found, k| found | bool::from(k.as_bytes().ct_eq(given.as_bytes())))
}

/// An API key in `Authorization: Bearer` or `X-API-Key`, if any.
pub(crate) fn key_in(headers: &HeaderMap) -> Option<&str> {
    jwt::bearer(headers).or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
}

/// Whether the configuration protects anything with keys: API keys or a JWT key.
pub(crate) fn keyed(config: &Config) -> bool {
    keys(config).next().is_some() || config.jwt_key.is_some()
}

/// The publisher rights a request has: from an API key, a JWT (`access_token` is the query
/// parameter, if any) or, with no key configured, the loopback rule (`peer` is the TCP peer).
pub(crate) fn publisher(
    config: &Config,
    headers: &HeaderMap,
    access_token: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<Publisher, ApiError> {
    if !keyed(config) {
        guard::loopback_rule(config, guard::peer(config, peer, headers), headers)?;
        return Ok(Publisher::ALL);
    }
    let key = key_in(headers);
    if key.is_some_and(|k| is_api_key(config, k)) {
        return Ok(Publisher::ALL);
    }
    if let Some(jwt_key) = &config.jwt_key {
        if let Some((token, source)) = jwt::token(headers, access_token) {
            if source == Source::Cookie {
                // The browser sends the cookie whatever page asks: a cross-site request may not
                // use it.
                guard::not_cross_site(config, headers)?;
            }
            let id = jwt::verify(jwt_key, token)?;
            if id.publish.is_empty() && !id.admin {
                return Err(forbidden("your token grants no publishing (its ssegate claim has no publish)"));
            }
            return Ok(Publisher { token: Some(Arc::new(id)) });
        }
    }
    Err(jwt::unauthorized(match key {
        Some(_) => "the API key is not valid",
        None => "credentials are required: Authorization: Bearer <API key or JWT>",
    }))
}

/// The query parameter `access_token`, if the query has one.
fn access_token(parts: &Parts) -> Option<String> {
    let pairs = crate::http::query::pairs(parts.uri.query()).ok()?;
    pairs.into_iter().find(|(k, _)| k == "access_token").map(|(_, v)| v)
}

/// The peer address the server recorded for the request.
fn peer_of(parts: &Parts) -> Option<SocketAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

impl FromRequestParts<Hub> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        publisher(hub.config(), &parts.headers, access_token(parts).as_deref(), peer_of(parts))
    }
}

impl FromRequestParts<Hub> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        Publisher::from_request_parts(parts, hub).await?.admin().map(|_| Admin)
    }
}

/// What a subscriber may read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriber {
    /// Everything: no `--jwt-key`, or an API key.
    all: bool,
    /// The verified token, if one was presented.
    pub identity: Option<Arc<Identity>>,
}

impl Subscriber {
    /// Unrestricted reading (no JWT key configured).
    pub(crate) fn open() -> Subscriber {
        Subscriber { all: true, identity: None }
    }

    /// Refuses patterns the subscriber may not read: `401` without a token, `403` with one that
    /// does not cover them. `--anonymous-topics` are open to all.
    pub(crate) fn check(&self, config: &Config, patterns: &[Pattern]) -> Result<(), ApiError> {
        if self.all {
            return Ok(());
        }
        let anonymous: Vec<Pattern> = config.anonymous_topics.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        for p in patterns {
            if anonymous.iter().any(|a| a.covers(p)) {
                continue;
            }
            match &self.identity {
                Some(id) if id.may_subscribe(p) => {}
                Some(_) => return Err(forbidden(format!("your token does not allow subscribing to {:?}", p.to_string()))),
                None => {
                    return Err(jwt::unauthorized(format!(
                        "subscribing to {:?} needs a token (Authorization: Bearer, access_token or the ssegate_token cookie)",
                        p.to_string()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Closes `client` when the token expires (WebSocket close code 1008); the guard stops the
    /// timer when the connection ends first.
    pub(crate) fn close_at_expiry(&self, client: &Arc<Client>) -> Option<Expiry> {
        let left = Duration::from_millis(self.identity.as_ref()?.expires_in_ms()?);
        let stop = CancellationToken::new();
        let ended = stop.clone();
        let client = Arc::downgrade(client);
        // Owned by the returned guard: it ends at expiry or when the connection drops the guard.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(left) => {
                    if let Some(c) = client.upgrade() {
                        c.close(CloseReason::Expired);
                    }
                }
                _ = ended.cancelled() => {}
            }
        });
        Some(Expiry(stop.drop_guard()))
    }
}

/// Stops a connection's expiry timer when dropped.
#[derive(Debug)]
pub(crate) struct Expiry(#[allow(dead_code)] DropGuard);

/// Who a subscriber is: with `--jwt-key`, the token the request carries (the header, then
/// `access_token`, then the cookie), verified (`401` if it is not valid); an API key reads
/// everything. Without `--jwt-key`, everyone reads everything.
pub(crate) fn subscriber(
    config: &Config,
    headers: &HeaderMap,
    access_token: Option<&str>,
) -> Result<Subscriber, ApiError> {
    let Some(jwt_key) = &config.jwt_key else { return Ok(Subscriber::open()) };
    let Some((token, _)) = jwt::token(headers, access_token) else { return Ok(Subscriber::default()) };
    if is_api_key(config, token) {
        return Ok(Subscriber::open());
    }
    Ok(Subscriber { all: false, identity: Some(Arc::new(jwt::verify(jwt_key, token)?)) })
}

/// Checks the configuration's keys and lists before the gateway starts: no empty API key, and
/// every `--anonymous-topics` entry a valid pattern.
pub(crate) fn check_config(config: &Config) -> Result<(), String> {
    if config.api_key.iter().any(|k| k.trim().is_empty()) {
        return Err("an empty API key is not a key (check --api-key / SSEGATE_API_KEY for a stray comma)".into());
    }
    for p in &config.anonymous_topics {
        Pattern::parse(p).map_err(|e| format!("--anonymous-topics {p:?}: {e}"))?;
    }
    if !config.anonymous_topics.is_empty() && config.jwt_key.is_none() {
        tracing::warn!("--anonymous-topics has no effect without --jwt-key: every topic is open");
    }
    Ok(())
}
