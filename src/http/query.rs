//! Query strings read strictly: a percent-encoded value that is not UTF-8 is refused instead of
//! being decoded lossily (two different byte strings must never become the same topic).

use crate::http::error::ApiError;

/// The `key=value` pairs of a query string (`application/x-www-form-urlencoded`: `+` is a space),
/// decoded; `400 invalid_request` (or `invalid_topic` for a `topic`) when one is not UTF-8.
pub fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
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
