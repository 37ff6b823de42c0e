//! Topic names and subscription patterns (`a/b`, `a/*`, `a/**`, `**`), as the contract defines them.

use std::fmt;
use std::sync::Arc;

/// Longest topic name, in bytes.
pub(crate) const MAX_TOPIC_BYTES: usize = 256;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is empty.
    #[error("topic must not be empty")]
    Empty,
    /// The name is longer than 256 bytes.
    #[error("topic is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    /// The name holds a control character.
    #[error("topic must not contain control characters")]
    ControlCharacter,
    /// A wildcard was used where only a concrete topic is allowed (publishing).
    #[error("topic {0:?} is a pattern; publish to a concrete topic")]
    Wildcard(String),
    /// A wildcard stands somewhere other than the last segment.
    #[error("pattern {0:?} may only end in /* or /**")]
    MisplacedWildcard(String),
}

fn check_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(TopicError::ControlCharacter);
    }
    Ok(())
}

/// Checks a topic that events are published to: a valid name with no wildcard segment.
pub(crate) fn validate_topic(name: &str) -> Result<(), TopicError> {
    check_name(name)?;
    if name.split('/').any(|s| s == "*" || s == "**") {
        return Err(TopicError::Wildcard(name.to_owned()));
    }
    Ok(())
}

/// A subscription: one topic, or a prefix followed by one (`/*`) or any number (`/**`) of segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this topic.
    Exact(Arc<str>),
    /// `prefix/*`: the prefix (kept with its trailing `/`) and exactly one more segment.
    OneLevel(Arc<str>),
    /// `prefix/**`: the prefix (kept with its trailing `/`) and one or more segments.
    MultiLevel(Arc<str>),
    /// `**`: every topic.
    All,
}

impl Pattern {
    /// Parses a subscription pattern.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        check_name(text)?;
        if text == "**" {
            return Ok(Pattern::All);
        }
        let (head, kind) = if let Some(prefix) = text.strip_suffix("/**") {
            (prefix, Some(true))
        } else if let Some(prefix) = text.strip_suffix("/*") {
            (prefix, Some(false))
        } else {
            (text, None)
        };
        if head.split('/').any(|s| s == "*" || s == "**") {
            return Err(TopicError::MisplacedWildcard(text.to_owned()));
        }
        Ok(match kind {
            None => Pattern::Exact(Arc::from(text)),
            // Keep the slash so that matching is a plain prefix test.
            Some(multi) => {
                let prefix: Arc<str> = Arc::from(&text[..head.len() + 1]);
                if multi {
                    Pattern::MultiLevel(prefix)
                } else {
                    Pattern::OneLevel(prefix)
                }
            }
        })
    }

    /// Whether an event on `topic` is delivered to this subscription.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => &**t == topic,
            Pattern::All => true,
            Pattern::OneLevel(prefix) => {
                topic.strip_prefix(&**prefix).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
            }
            Pattern::MultiLevel(prefix) => topic.strip_prefix(&**prefix).is_some_and(|rest| !rest.is_empty()),
        }
    }
}

impl Pattern {
    /// Whether every topic `other` matches is matched by this pattern too: `a/*` is covered by
    /// `a/*`, `a/**` and `**`; `a/b` by `a/b`, `a/*`, `a/**` and `**`. Used to check a request
    /// against the patterns a token grants.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::All, _) => true,
            (_, Pattern::Exact(t)) => self.matches(t),
            (Pattern::OneLevel(p), Pattern::OneLevel(q)) => p == q,
            (Pattern::MultiLevel(p), Pattern::OneLevel(q) | Pattern::MultiLevel(q)) => q.starts_with(&**p),
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(t) => f.write_str(t),
            Pattern::OneLevel(p) => write!(f, "{p}*"),
            Pattern::MultiLevel(p) => write!(f, "{p}**"),
            Pattern::All => f.write_str("**"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn patterns_match_as_the_contract_says() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/bc"));
        assert!(m("a/*", "a/b"));
        assert!(!m("a/*", "a/b/c"));
        assert!(!m("a/*", "a"));
        assert!(!m("a/*", "a/"));
        assert!(m("a/**", "a/b"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/**", "a"));
        assert!(!m("a/**", "ab/c"));
        assert!(m("**", "anything/at/all"));
        assert_eq!(Pattern::parse("a/**").unwrap().to_string(), "a/**");
        assert_eq!(Pattern::parse("a/*").unwrap().to_string(), "a/*");
    }

    #[test]
    fn a_pattern_covers_what_it_matches_all_of() {
        let c = |a: &str, b: &str| Pattern::parse(a).unwrap().covers(&Pattern::parse(b).unwrap());
        assert!(c("a/*", "a/*") && c("a/**", "a/*") && c("**", "a/*"));
        assert!(c("a/b", "a/b") && c("a/*", "a/b") && c("a/**", "a/b/c") && c("a/**", "a/b/**"));
        assert!(!c("a/*", "a/**") && !c("a/*", "a/b/c") && !c("a/b", "a/*") && !c("a/**", "a"));
        assert!(!c("a/**", "ab/**") && !c("a/**", "**") && !c("a/*", "a/b/*"));
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(Pattern::parse(""), Err(TopicError::Empty));
        assert_eq!(Pattern::parse(&"x".repeat(257)), Err(TopicError::TooLong));
        assert_eq!(Pattern::parse("a\nb"), Err(TopicError::ControlCharacter));
        assert!(matches!(Pattern::parse("a/*/b"), Err(TopicError::MisplacedWildcard(_))));
        assert!(matches!(validate_topic("a/*"), Err(TopicError::Wildcard(_))));
        assert!(validate_topic(&"x".repeat(256)).is_ok());
    }
}
