//! What several endpoints read from a query string the same way, strictly: a percent-encoded
//! value that is not UTF-8 is refused instead of being decoded lossily (two different byte
//! strings must never become the same topic); subscription patterns, flags, `throttle_ms`.

use indexmap::IndexSet;

use crate::core::topic::Pattern;
use crate::http::error::ApiError;

/// The `key=value` pairs of a query string (`application/x-www-form-urlencoded`: `+` is a space),
/// decoded; `400 invalid_request` (or `invalid_topic` for a `topic`) when one is not UTF-8.
pub(crate) fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key =
            decode(k).ok_or_else(|| ApiError::bad_request("invalid_request", "a query parameter name is not UTF-8"))?;
        let value = decode(v).ok_or_else(|| {
            let code = if key == "topic" { "invalid_topic" } else { "invalid_request" };
            ApiError::bad_request(code, format!("the value of {key:?} is not valid UTF-8"))
        })?;
        out.push((key, value));
    }
    Ok(out)
}

fn decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&plus).collect();
    String::from_utf8(bytes).ok()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_and_bad_utf8_is_refused() {
        let p = pairs(Some("topic=a%2Fb&x=1+2&flag&topic=%C3%A9")).unwrap();
        let want = [("topic", "a/b"), ("x", "1 2"), ("flag", ""), ("topic", "é")];
        assert_eq!(p, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(pairs(Some("topic=a%FF")).unwrap_err().code, "invalid_topic");
        assert_eq!(pairs(Some("cursor=%C3")).unwrap_err().code, "invalid_request");
    }
}
