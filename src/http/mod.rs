//! What every HTTP endpoint shares: the JSON errors, the caller's rights (API keys, JWTs, the
//! loopback rule), the request guards, CORS, where a request comes from, and strict query parsing.

pub(crate) mod auth;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod jwt;
pub(crate) mod peer;
pub(crate) mod query;
