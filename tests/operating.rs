//! What an operator's tools see: `GET /metrics` in Prometheus text 0.0.4 by default and in
//! OpenMetrics when the scraper asks for it, and the icon a browser fetches at `/favicon.ico`.

mod common;

use std::collections::{HashMap, HashSet};

use common::{until, Sse, TestServer};
use serde_json::json;

/// What Prometheus 2.x sends when scraping (its default `scrape_protocols`).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn scrape(s: &TestServer, accept: Option<&str>) -> (String, String, String) {
    let mut req = s.http.get(s.url("/metrics"));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let header =
        |name: &str| res.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(", ");
    let (kind, vary) = (header("content-type"), header("vary"));
    (kind, vary, res.text().await.unwrap())
}

/// Reads Prometheus text 0.0.4 as its parser does, failing on anything it would refuse or read
/// differently: every sample belongs to a family whose TYPE line came before it, no family is
/// declared twice, values are numbers. Returns each family's type and its samples.
fn parse_prometheus(text: &str) -> HashMap<String, (String, Vec<(String, f64)>)> {
    assert!(!text.contains("# EOF"), "no EOF marker in 0.0.4:\n{text}");
    assert!(!text.contains("# UNIT"), "no UNIT lines in 0.0.4:\n{text}");
    let mut families: HashMap<String, (String, Vec<(String, f64)>)> = HashMap::new();
    let mut helped = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "a second HELP for {name}");
            assert!(!families.contains_key(name), "HELP for {name} after its TYPE or samples");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{kind} is not a 0.0.4 type: {line}"
            );
            if kind == "counter" {
                // The 0.0.4 convention, and what the samples are called.
                assert!(name.ends_with("_total"), "counter family {name} is named as its samples");
            }
            assert!(
                families.insert(name.to_owned(), (kind.to_owned(), Vec::new())).is_none(),
                "a second TYPE for {name}"
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number in {line:?}"));
            let name = series.split('{').next().unwrap();
            let family = if families.contains_key(name) {
                name
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| {
                        families.get(*base).is_some_and(|(kind, _)| {
                            kind == "histogram" || (kind == "summary" && !name.ends_with("_bucket"))
                        })
                    })
                    .unwrap_or_else(|| panic!("sample {name} has no TYPE line before it:\n{text}"))
            };
            families.get_mut(family).unwrap().1.push((series.to_owned(), value));
        }
    }
    for name in families.keys() {
        assert!(helped.contains(name), "{name} has a HELP line");
    }
    families
}

#[tokio::test]
async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
    let s = TestServer::start().await;
    let _sse = Sse::connect(&s, "topic=a").await;
    s.publish_ok(json!({"topic": "a", "data": 1})).await;

    for accept in [None, Some("*/*"), Some("text/plain"), Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")] {
        let (kind, vary, text) = scrape(&s, accept).await;
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(vary.to_ascii_lowercase().contains("accept"), "Vary: {vary}");
        let families = parse_prometheus(&text);
        for (name, kind) in [
            ("ssegate_events_published_total", "counter"),
            ("ssegate_deliveries_total", "counter"),
            ("ssegate_publish_rejected_total", "counter"),
            ("ssegate_queue_overflows_total", "counter"),
            ("ssegate_conflations_total", "counter"),
            ("ssegate_resumes_total", "counter"),
            ("ssegate_resets_total", "counter"),
            ("ssegate_heartbeats_total", "counter"),
            ("ssegate_connections_total", "counter"),
            ("ssegate_clients", "gauge"),
            ("ssegate_history_events", "gauge"),
            ("ssegate_build_info", "gauge"),
        ] {
            let family = families.get(name).unwrap_or_else(|| panic!("{name} in\n{text}"));
            assert_eq!(family.0, kind, "{name}");
        }
        let sample = |name: &str| {
            families.values().flat_map(|(_, samples)| samples).find(|(series, _)| series == name).map(|(_, v)| *v)
        };
        assert_eq!(sample("ssegate_events_published_total"), Some(1.0), "{text}");
        assert_eq!(sample("ssegate_clients{transport=\"sse\"}"), Some(1.0), "{text}");
        assert_eq!(sample("ssegate_connections_total{transport=\"sse\"}"), Some(1.0), "{text}");
        assert_eq!(sample("ssegate_history_events"), Some(1.0), "{text}");
        let version = format!("ssegate_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&version), Some(1.0), "{text}");
    }

    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0, text/plain; q=0.5",
    ] {
        let (kind, vary, text) = scrape(&s, Some(accept)).await;
        assert_eq!(kind, "application/openmetrics-text; version=1.0.0; charset=utf-8", "{accept}");
        assert!(vary.to_ascii_lowercase().contains("accept"), "Vary: {vary}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        // OpenMetrics names a counter family without `_total`, and its samples with it.
        assert!(text.contains("# TYPE ssegate_events_published counter\n"), "{text}");
        assert!(text.contains("\nssegate_events_published_total 1\n"), "{text}");
        assert!(text.contains("# TYPE ssegate_build info\n"), "{text}");
    }

    // A scraper that prefers the classic format gets it.
    let (kind, _, _) =
        scrape(&s, Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5")).await;
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    s.stop().await;
}

#[tokio::test]
async fn the_favicon_is_served_and_linked() {
    let s = TestServer::start().await;
    let res = s.http.get(s.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    let cache = headers["cache-control"].to_str().unwrap();
    assert!(cache.contains("max-age="), "{cache}");
    let body = res.bytes().await.unwrap();
    assert!(body.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // Width and height from the IHDR chunk.
    assert_eq!((&body[16..20], &body[20..24]), (&[0, 0, 0, 32][..], &[0, 0, 0, 32][..]));

    let page = s.http.get(s.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<link rel="icon" href="/favicon.ico""#), "the demo page links the icon");
    s.stop().await;
}

#[tokio::test]
async fn open_connections_count_each_plain_connection_while_it_is_open() {
    let s = TestServer::start().await;
    let open = || s.metric("ssegate_open_connections{protocol=\"http/1.1\"}");
    // The scraper's own connection (kept alive between scrapes) counts.
    until("the scraper's connection", || async { open().await == 1.0 }).await;
    // An event stream and a WebSocket (each on the direct socket edge), each its own connection.
    let sse = Sse::connect(&s, "topic=a").await;
    let ws = common::ws_connect(&s, "/ws?topic=b").await;
    until("three open connections", || async { open().await == 3.0 }).await;
    assert_eq!(s.metric("ssegate_open_connections{protocol=\"h2\"}").await, 0.0);
    assert_eq!(s.metric("ssegate_open_connections{protocol=\"https/1.1\"}").await, 0.0);
    drop(sse);
    until("the stream's connection closed", || async { open().await == 2.0 }).await;
    drop(ws);
    until("the WebSocket's connection closed", || async { open().await == 1.0 }).await;
    s.stop().await;
}
