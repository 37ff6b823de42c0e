//! `GET /negotiate`: every row of the decision matrix, the client's own transport list, and
//! transports disabled on the server.

mod common;

use common::TestServer;
use serde_json::{json, Value};

async fn ask(s: &TestServer, query: &str) -> (u16, Value) {
    let (status, v) = s.get_json(&format!("/negotiate?{query}")).await;
    (status.as_u16(), v)
}

#[tokio::test]
async fn the_decision_matrix() {
    let s = TestServer::start().await;
    // (client flags, transport, fallbacks)
    let rows: &[(&str, &str, &[&str])] = &[
        ("bidirectional", "ws", &["sse", "long-poll", "poll"]),
        ("bidirectional=true&realtime=1&low_latency", "ws", &["sse", "long-poll", "poll"]),
        // Server push must be said: an absent flag is false.
        ("realtime&low_latency", "ws", &["sse", "long-poll", "poll"]),
        ("realtime=1&low_latency=1&server_push=1", "sse", &["ws", "long-poll", "poll"]),
        ("realtime&low_latency&server_push", "sse", &["ws", "long-poll", "poll"]),
        ("realtime=true&low_latency=true&server_push=false", "ws", &["sse", "long-poll", "poll"]),
        ("legacy", "long-poll", &["poll"]),
        ("legacy=1&realtime=1", "long-poll", &["poll"]),
        ("realtime", "sse", &["ws", "long-poll", "poll"]),
        ("", "sse", &["ws", "long-poll", "poll"]),
        ("bidirectional=0&legacy=0", "sse", &["ws", "long-poll", "poll"]),
        // What the client supports narrows the choice.
        ("bidirectional&transports=long-poll,poll", "long-poll", &["poll"]),
        ("realtime&low_latency&transports=sse", "sse", &[]),
        ("transports=poll", "poll", &[]),
    ];
    for (query, transport, fallbacks) in rows {
        let (status, v) = ask(&s, query).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(v["transport"], *transport, "{query}: {v}");
        assert_eq!(v["fallbacks"], json!(fallbacks), "{query}: {v}");
    }
    let (_, v) = ask(&s, "topic=a/b&topic=c").await;
    assert_eq!(v["url"], "/stream?topic=a%2Fb&topic=c");
    let (_, v) = ask(&s, "bidirectional").await;
    assert_eq!(v["url"], "/ws");
    let (_, v) = ask(&s, "legacy&topic=x").await;
    assert_eq!(v["url"], "/poll?topic=x");
    s.stop().await;
}

/// The contract's decision matrix (API.md, `GET /negotiate`), written out again from its text:
/// the transports a client should try, best first, or `None` when nothing is usable.
/// `flags` are bidirectional, realtime, low_latency, server_push, legacy (absent = false).
fn contract(flags: [bool; 5], client: Option<&[&str]>, enabled: &[&str]) -> Option<Vec<&'static str>> {
    let [bidirectional, realtime, low_latency, server_push, legacy] = flags;
    // The first rule that applies picks the transport; the others follow as fallbacks in the
    // usual order, except that a legacy client gets only the polling ones.
    let pick = if bidirectional {
        "ws"
    } else if realtime && low_latency {
        if server_push {
            "sse"
        } else {
            "ws"
        }
    } else if legacy {
        "long-poll"
    } else {
        "sse"
    };
    let candidates: &[&str] = if pick == "long-poll" { &["long-poll", "poll"] } else { &ALL };
    let mut order = vec![pick];
    order.extend(candidates.iter().filter(|t| **t != pick));
    order.retain(|t| enabled.contains(t) && client.is_none_or(|c| c.contains(t)));
    (!order.is_empty()).then_some(order)
}

const ALL: [&str; 4] = ["sse", "ws", "long-poll", "poll"];
const FLAGS: [&str; 5] = ["bidirectional", "realtime", "low_latency", "server_push", "legacy"];

/// Every combination of the five flags (each absent, true or false, in the forms the contract
/// allows), with and without the client's `transports`, on servers with transports disabled.
#[tokio::test]
async fn the_whole_matrix() {
    // Every non-empty subset of the transports, in the usual order and reversed.
    let mut lists: Vec<Vec<&str>> = Vec::new();
    for mask in 1..16u32 {
        let subset: Vec<&str> = ALL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, t)| *t).collect();
        let mut reversed = subset.clone();
        reversed.reverse();
        if reversed != subset {
            lists.push(reversed);
        }
        lists.push(subset);
    }
    let mut checked = 0;
    for enabled in ["sse,ws,long-poll,poll", "long-poll,poll", "sse,poll", "ws", "ws,long-poll"] {
        let s = TestServer::with(|c| c.transports = enabled.parse_transports()).await;
        let enabled: Vec<&str> = enabled.split(',').collect();
        // The full product of flags and lists on the server with everything enabled; elsewhere
        // every flag combination with a rotating client list.
        for combo in 0..3usize.pow(5) {
            // 0: absent, 1: true, 2: false, per flag.
            let states: Vec<usize> = (0..5).map(|i| combo / 3usize.pow(i) % 3).collect();
            let flags: [bool; 5] = std::array::from_fn(|i| states[i] == 1);
            let mut query: Vec<String> = FLAGS
                .iter()
                .zip(&states)
                .enumerate()
                .filter_map(|(i, (name, state))| match state {
                    1 => Some(match (combo + i) % 3 {
                        0 => name.to_string(),
                        1 => format!("{name}=1"),
                        _ => format!("{name}=true"),
                    }),
                    2 => Some(format!("{name}={}", if (combo + i) % 2 == 0 { "0" } else { "false" })),
                    _ => None,
                })
                .collect();
            query.push("topic=a/b".into());
            let clients: Vec<Option<&Vec<&str>>> = if enabled.len() == 4 {
                std::iter::once(None).chain(lists.iter().map(Some)).collect()
            } else {
                vec![None, Some(&lists[combo % lists.len()])]
            };
            for client in clients {
                let mut query = query.clone();
                if let Some(list) = client {
                    query.push(format!("transports={}", list.join(",")));
                }
                let query = query.join("&");
                let expected = contract(flags, client.map(|l| &l[..]), &enabled);
                let (status, v) = ask(&s, &query).await;
                match expected {
                    Some(order) => {
                        assert_eq!(status, 200, "{query} on {enabled:?}: {v}");
                        let got: Vec<&str> = std::iter::once(&v["transport"])
                            .chain(v["fallbacks"].as_array().unwrap())
                            .map(|t| t.as_str().unwrap())
                            .collect();
                        assert_eq!(got, order, "{query} on {enabled:?}");
                        let path = match order[0] {
                            "sse" => "/stream",
                            "ws" => "/ws",
                            "long-poll" => "/poll",
                            _ => "/snapshot",
                        };
                        assert_eq!(v["url"], format!("{path}?topic=a%2Fb"), "{query} on {enabled:?}");
                    }
                    None => {
                        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("no_transport")), "{query}");
                    }
                }
                checked += 1;
            }
        }
        s.stop().await;
    }
    assert_eq!(checked, 243 * 27 + 4 * 243 * 2);
}

#[tokio::test]
async fn disabled_transports_are_skipped() {
    let s = TestServer::with(|c| c.transports = "long-poll,poll".parse_transports()).await;
    for (query, transport, fallbacks) in [
        ("bidirectional", "long-poll", json!(["poll"])),
        ("realtime&low_latency", "long-poll", json!(["poll"])),
        ("realtime&low_latency&server_push", "long-poll", json!(["poll"])),
        ("", "long-poll", json!(["poll"])),
    ] {
        let (status, v) = ask(&s, query).await;
        assert_eq!(status, 200);
        assert_eq!((&v["transport"], &v["fallbacks"]), (&json!(transport), &fallbacks), "{query}");
    }
    let (status, v) = ask(&s, "transports=sse,ws").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("no_transport")));
    // The disabled transports themselves answer 404.
    for path in ["/stream", "/ws"] {
        let (status, v) = s.get_json(path).await;
        assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (404, Some("transport_disabled")), "{path}");
    }
    s.stop().await;

    let s = TestServer::with(|c| c.transports = "sse,poll".parse_transports()).await;
    let (_, v) = ask(&s, "bidirectional").await;
    assert_eq!((&v["transport"], &v["fallbacks"]), (&json!("sse"), &json!(["poll"])));
    let (_, v) = ask(&s, "legacy").await;
    assert_eq!((&v["transport"], &v["fallbacks"]), (&json!("poll"), &json!([])));
    let (status, v) = s.get_json("/poll").await;
    assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (404, Some("transport_disabled")));
    s.stop().await;
}

#[tokio::test]
async fn bad_flags_are_refused() {
    let s = TestServer::start().await;
    for query in ["realtime=maybe", "transports=sse,pigeon"] {
        let (status, v) = ask(&s, query).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{query}");
    }
    s.stop().await;
}

trait ParseTransports {
    fn parse_transports(&self) -> ssegate::Transports;
}

impl ParseTransports for str {
    fn parse_transports(&self) -> ssegate::Transports {
        ssegate::Config::from_sources(["serve", "--transports", self], &Default::default()).unwrap().transports
    }
}
