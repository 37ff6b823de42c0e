//! What every HTTP endpoint shares: the JSON errors, the publisher's rights, CORS, where a request
//! comes from, and the query parameters several endpoints read.

pub(crate) mod auth;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod peer;
pub(crate) mod query;
