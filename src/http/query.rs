//! What several endpoints read from a query string the same way: subscription patterns, flags,
//! `throttle_ms`.

use indexmap::IndexSet;

use crate::core::topic::Pattern;
use crate::http::error::ApiError;

/// Parses the subscription patterns one request names (each once, in order), refusing the request
/// on the first bad one, and at once, before parsing any, when it names more than `limit`
/// (`--max-topics-per-client`): `400 too_many_topics`. So a huge list costs little to refuse.
pub(crate) fn parse_patterns<'a, I>(topics: I, limit: u64) -> Result<Vec<Pattern>, ApiError>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: ExactSizeIterator,
{
    let topics = topics.into_iter();
    let n = topics.len();
    if n as u64 > limit {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!("the request names {n} topics and patterns; at most {limit} are allowed"),
        ));
    }
    let mut out: IndexSet<Pattern> = IndexSet::with_capacity(n);
    for t in topics {
        let p = Pattern::parse(t).map_err(|e| ApiError::bad_request("invalid_topic", format!("{t:?}: {e}")))?;
        out.insert(p);
    }
    Ok(out.into_iter().collect())
}

/// Reads a flag value the way the contract allows (`1`, `true`, or bare).
pub(crate) fn truthy(v: &str) -> bool {
    matches!(v, "" | "1" | "true" | "yes" | "on")
}

/// Parses a `throttle_ms` query value.
pub(crate) fn throttle_param(value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| ApiError::bad_request("invalid_request", "throttle_ms is a whole number of milliseconds"))
}
