//! What every HTTP endpoint shares: the JSON errors, the caller's rights (API keys, JWTs, the
//! loopback rule), the request guards, and strict query parsing.

pub mod auth;
pub mod error;
pub mod guard;
pub mod jwt;
pub mod query;

/// The origins `--cors-origins` lists; none when it is `*` (which allows any origin for CORS but
/// never counts as listing one).
pub fn cors_list(origins: &str) -> impl Iterator<Item = &str> {
    let any = origins.trim() == "*";
    origins.split(',').map(str::trim).filter(move |o| !any && !o.is_empty() && *o != "*")
}
