//! An index of wildcard patterns (`a/*`, `a/**`, `**`) by their `/`-separated segments, so that
//! finding the patterns a topic matches costs one step per segment of the topic, however many
//! patterns are indexed.

use std::collections::HashMap;

use crate::core::topic::Pattern;

/// Wildcard patterns, each with a value, found by the topics they match.
///
/// A pattern's prefix is a path of exact segments from the root; the node at its end holds the
/// value of `prefix/*` and that of `prefix/**` (`**` alone is the root's `**`). Exact patterns
/// are not indexed here: a map by topic finds them.
#[derive(Debug)]
pub(crate) struct PatternTrie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    /// The next exact segment of longer prefixes.
    children: HashMap<Box<str>, Node<V>>,
    /// `prefix/*`: exactly one more segment.
    one: Option<Slot<V>>,
    /// `prefix/**`: one or more segments.
    many: Option<Slot<V>>,
}

#[derive(Debug)]
struct Slot<V> {
    pattern: Pattern,
    value: V,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::new(), one: None, many: None }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.one.is_none() && self.many.is_none()
    }

    fn slot(&mut self, one: bool) -> &mut Option<Slot<V>> {
        if one {
            &mut self.one
        } else {
            &mut self.many
        }
    }
}

impl<V> Default for PatternTrie<V> {
    fn default() -> Self {
        PatternTrie { root: Node::default(), len: 0 }
    }
}

/// Where a wildcard pattern lives: the exact segments of its prefix and whether it is `/*`.
/// `None` for an exact pattern.
fn path(pattern: &Pattern) -> Option<(Vec<&str>, bool)> {
    let (prefix, one) = match pattern {
        Pattern::Exact(_) => return None,
        Pattern::All => return Some((Vec::new(), false)),
        Pattern::OneLevel(p) => (p, true),
        Pattern::MultiLevel(p) => (p, false),
    };
    // The prefix keeps its trailing slash; every segment before it is exact.
    let head = prefix.strip_suffix('/').unwrap_or(prefix);
    Some((head.split('/').collect(), one))
}

impl<V> PatternTrie<V> {
    /// The value of a wildcard `pattern`, inserted with `V::default()` if absent. `None` for an
    /// exact pattern, which this index does not hold.
    pub(crate) fn entry(&mut self, pattern: &Pattern) -> Option<&mut V>
    where
        V: Default,
    {
        let (segments, one) = path(pattern)?;
        let mut node = &mut self.root;
        for s in segments {
            node = node.children.entry(Box::from(s)).or_default();
        }
        let slot = node.slot(one);
        if slot.is_none() {
            self.len += 1;
        }
        Some(&mut slot.get_or_insert_with(|| Slot { pattern: pattern.clone(), value: V::default() }).value)
    }

    /// The value of `pattern`, if indexed.
    pub(crate) fn get_mut(&mut self, pattern: &Pattern) -> Option<&mut V> {
        let (segments, one) = path(pattern)?;
        let mut node = &mut self.root;
        for s in segments {
            node = node.children.get_mut(s)?;
        }
        node.slot(one).as_mut().map(|s| &mut s.value)
    }

    /// Removes `pattern` and returns its value; nodes left empty go with it.
    pub(crate) fn remove(&mut self, pattern: &Pattern) -> Option<V> {
        let (segments, one) = path(pattern)?;
        let value = remove_at(&mut self.root, &segments, one)?;
        self.len -= 1;
        Some(value)
    }

    /// Calls `f` with the value of each indexed pattern that `topic` matches (as
    /// [`Pattern::matches`] decides), in no particular order.
    pub(crate) fn matching<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        if self.len == 0 {
            return;
        }
        let mut node = &self.root;
        // What follows the path of `node` in the topic.
        let mut rest = topic;
        loop {
            let (segment, tail) = match rest.split_once('/') {
                Some((s, t)) => (s, Some(t)),
                None => (rest, None),
            };
            if !rest.is_empty() {
                if let Some(s) = &node.many {
                    f(&s.value);
                }
                if tail.is_none() {
                    if let Some(s) = &node.one {
                        f(&s.value);
                    }
                }
            }
            // A node at the topic's full length has nothing left for a wildcard to match.
            let Some(tail) = tail else { return };
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    rest = tail;
                }
                None => return,
            }
        }
    }

    /// Whether `topic` matches any indexed pattern.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let mut found = false;
        self.matching(topic, |_| found = true);
        found
    }

    /// Every indexed pattern with its value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Pattern, &V)> {
        let mut stack = vec![&self.root];
        std::iter::from_fn(move || {
            let node = stack.pop()?;
            stack.extend(node.children.values());
            Some(node.one.iter().chain(&node.many).map(|s| (&s.pattern, &s.value)))
        })
        .flatten()
    }
}

/// Removes the `one` or `many` slot at the end of `segments` below `node`, pruning the nodes it
/// leaves empty. (Recursion is bounded: a pattern has at most `MAX_TOPIC_BYTES / 2 + 1` segments.)
fn remove_at<V>(node: &mut Node<V>, segments: &[&str], one: bool) -> Option<V> {
    let Some((first, more)) = segments.split_first() else {
        return node.slot(one).take().map(|s| s.value);
    };
    let child = node.children.get_mut(*first)?;
    let value = remove_at(child, more, one)?;
    if child.is_empty() {
        node.children.remove(*first);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn found(trie: &PatternTrie<String>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.matching(topic, |v| out.push(v.clone()));
        out.sort();
        out
    }

    fn trie_of(patterns: &[&str]) -> PatternTrie<String> {
        let mut trie = PatternTrie::default();
        for text in patterns {
            *trie.entry(&p(text)).unwrap() = (*text).to_owned();
        }
        trie
    }

    #[test]
    fn wildcards_match_as_the_contract_says() {
        let trie = trie_of(&["a/*", "a/**", "**", "a/b/*", "/*", "a//**"]);
        assert_eq!(found(&trie, "a/b"), ["**", "a/*", "a/**"]);
        assert_eq!(found(&trie, "a/b/c"), ["**", "a/**", "a/b/*"]);
        assert_eq!(found(&trie, "a"), ["**"]);
        assert_eq!(found(&trie, "a/"), ["**"], "a/* and a/** need a non-empty rest");
        assert_eq!(found(&trie, "a//"), ["**", "a/**"], "the rest \"/\" is not empty, nor one segment");
        assert_eq!(found(&trie, "a//x"), ["**", "a/**", "a//**"]);
        assert_eq!(found(&trie, "/x"), ["**", "/*"]);
        assert_eq!(found(&trie, "ab/c"), ["**"]);
    }

    #[test]
    fn exact_patterns_are_not_indexed() {
        let mut trie: PatternTrie<u32> = PatternTrie::default();
        assert!(trie.entry(&p("a/b")).is_none());
        assert!(trie.get_mut(&p("a/b")).is_none());
        assert_eq!(trie.len, 0);
    }

    #[test]
    fn removing_prunes_and_keeps_the_rest() {
        let mut trie = trie_of(&["a/b/c/*", "a/*", "a/b/c/**"]);
        assert_eq!(trie.len, 3);
        assert_eq!(trie.remove(&p("a/b/c/*")).as_deref(), Some("a/b/c/*"));
        assert_eq!(trie.remove(&p("a/b/c/*")), None, "removed once");
        assert_eq!(trie.remove(&p("a/b/*")), None, "never there");
        assert_eq!(found(&trie, "a/b/c/d"), ["a/b/c/**"]);
        trie.remove(&p("a/b/c/**"));
        assert!(trie.root.children["a"].children.is_empty(), "the empty branch is gone");
        trie.remove(&p("a/*"));
        assert!(trie.root.is_empty() && trie.len == 0);
        assert_eq!(trie.iter().count(), 0);
    }

    #[test]
    fn iter_lists_every_pattern_once() {
        let list = ["**", "a/*", "a/**", "a/b/*", "x/y/z/**"];
        let mut trie = trie_of(&list);
        *trie.get_mut(&p("a/*")).unwrap() += "!";
        let mut seen: Vec<String> = trie.iter().map(|(pat, v)| format!("{pat}={v}")).collect();
        seen.sort();
        assert_eq!(seen, ["**=**", "a/**=a/**", "a/*=a/*!", "a/b/*=a/b/*", "x/y/z/**=x/y/z/**"]);
    }

    /// A tiny xorshift generator: reproducible, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Segments from a small alphabet (the empty one included), so that topics and patterns meet.
    fn segments(rng: &mut Rng, max: usize) -> Vec<&'static str> {
        const WORDS: [&str; 5] = ["a", "b", "cc", "", "a b"];
        (0..1 + rng.below(max)).map(|_| WORDS[rng.below(WORDS.len())]).collect()
    }

    #[test]
    fn agrees_with_pattern_matches_on_random_patterns_and_topics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..50 {
            let mut trie: PatternTrie<Vec<Pattern>> = PatternTrie::default();
            let mut patterns: Vec<Pattern> = Vec::new();
            for _ in 0..rng.below(40) {
                let text = match rng.below(8) {
                    0 => "**".to_owned(),
                    k => format!("{}/{}", segments(&mut rng, 3).join("/"), if k % 2 == 0 { "*" } else { "**" }),
                };
                let pattern = p(&text);
                if !patterns.contains(&pattern) {
                    trie.entry(&pattern).unwrap().push(pattern.clone());
                    patterns.push(pattern);
                }
            }
            // Take some out again: removal must leave the others findable.
            for _ in 0..rng.below(10) {
                if patterns.is_empty() {
                    break;
                }
                let gone = patterns.swap_remove(rng.below(patterns.len()));
                assert_eq!(trie.remove(&gone), Some(vec![gone.clone()]));
            }
            assert_eq!(trie.len, patterns.len());
            for _ in 0..200 {
                let topic = segments(&mut rng, 5).join("/");
                if topic.is_empty() {
                    continue;
                }
                let mut got: Vec<String> = Vec::new();
                trie.matching(&topic, |v| got.extend(v.iter().map(ToString::to_string)));
                let mut want: Vec<String> =
                    patterns.iter().filter(|p| p.matches(&topic)).map(ToString::to_string).collect();
                got.sort();
                want.sort();
                assert_eq!(trie.matches(&topic), !want.is_empty());
                assert_eq!(got, want, "round {round}, topic {topic:?}");
            }
        }
    }
}
