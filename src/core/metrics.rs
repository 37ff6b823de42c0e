//! Counters and gauges of the gateway, served at `GET /metrics` in Prometheus' text format 0.0.4,
//! or in OpenMetrics 1.0.0 to a scraper whose `Accept` header asks for it.

use std::collections::HashMap;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::core::client::Transport;

/// The label of per-transport series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    /// `sse`, `ws` or `long-poll`.
    pub transport: &'static str,
}

impl From<Transport> for TransportLabel {
    fn from(t: Transport) -> Self {
        TransportLabel { transport: t.name() }
    }
}

/// The label of `ssegate_open_connections`: the protocol a connection speaks.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabel {
    /// `http/1.1` (plain), `https/1.1` or `h2` (over TLS, as ALPN chose).
    pub protocol: &'static str,
}

/// What an open connection speaks, for `ssegate_open_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 without TLS (through hyper or the direct socket edge).
    Http1,
    /// HTTP/1.1 over TLS.
    Https1,
    /// HTTP/2 (over TLS).
    H2,
}

impl Protocol {
    /// Every protocol, so each series is there (at zero) from the start.
    const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Https1, Protocol::H2];

    /// The label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Https1 => "https/1.1",
            Protocol::H2 => "h2",
        }
    }
}

/// One connection counted in `ssegate_open_connections`; dropping it counts the connection closed.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The label of `ssegate_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// Every metric the gateway keeps. Cheap to update: atomics, bumped once per batch on hot paths.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Events accepted from publishers.
    pub published: Counter,
    /// Events queued to clients (one per client per event).
    pub delivered: Counter,
    /// Publish requests refused for bad input, rights or broker faults.
    pub rejected: Counter,
    /// Clients closed because their queue filled (slow or stalled readers).
    pub overflows: Counter,
    /// Full queues of state updates collapsed into one fresh snapshot per topic.
    pub conflations: Counter,
    /// Clients that resumed from history after an id.
    pub resumes: Counter,
    /// Clients told to reload (`reset`) because their id was unknown or too old.
    pub resets: Counter,
    /// Heartbeats queued.
    pub heartbeats: Counter,
    /// Connections accepted, by transport.
    pub connections: Family<TransportLabel, Counter>,
    /// Clients connected now, by transport.
    pub clients: Family<TransportLabel, Gauge>,
    /// Events held in history now.
    pub history: Gauge,
    /// TCP connections being served now, by protocol; taken through [`Metrics::connection_open`].
    open_connections: Family<ProtocolLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ssegate");
        let m = Metrics {
            published: Counter::default(),
            delivered: Counter::default(),
            rejected: Counter::default(),
            overflows: Counter::default(),
            conflations: Counter::default(),
            resumes: Counter::default(),
            resets: Counter::default(),
            heartbeats: Counter::default(),
            connections: Family::default(),
            clients: Family::default(),
            history: Gauge::default(),
            open_connections: Family::default(),
            registry: Registry::default(),
        };
        for protocol in Protocol::ALL {
            let _ = m.open_connections.get_or_create(&ProtocolLabel { protocol: protocol.name() });
        }
        registry.register("events_published", "Events accepted from publishers", m.published.clone());
        registry.register("deliveries", "Events queued to clients", m.delivered.clone());
        registry.register("publish_rejected", "Publish requests refused", m.rejected.clone());
        registry.register("queue_overflows", "Clients closed because their queue filled", m.overflows.clone());
        registry.register(
            "conflations",
            "Full queues of state updates collapsed into snapshots",
            m.conflations.clone(),
        );
        registry.register("resumes", "Clients resumed from history", m.resumes.clone());
        registry.register("resets", "Clients told to reload state", m.resets.clone());
        registry.register("heartbeats", "Heartbeats queued", m.heartbeats.clone());
        registry.register("connections", "Connections accepted", m.connections.clone());
        registry.register("clients", "Clients connected now", m.clients.clone());
        registry.register("history_events", "Events held in history", m.history.clone());
        registry.register(
            "open_connections",
            "TCP connections being served now, by protocol (http/1.1, https/1.1, h2)",
            m.open_connections.clone(),
        );
        registry.register(
            "build",
            "The gateway's version",
            Info::new(BuildLabel { version: env!("CARGO_PKG_VERSION") }),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a connection now served over `protocol`, until the guard is dropped.
    pub(crate) fn connection_open(&self, protocol: Protocol) -> OpenConnection {
        let gauge = self.open_connections.get_or_create(&ProtocolLabel { protocol: protocol.name() }).clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// The text of every metric in `format`.
    pub(crate) fn render(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => openmetrics_to_prometheus(&out),
        }
    }
}

/// The text formats `GET /metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus' text exposition format 0.0.4: the default, what every scraper reads.
    Prometheus,
    /// OpenMetrics 1.0.0 text, for a scraper that asks for `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a rendering in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with `Accept` header `accept` (all its values, joined by
    /// commas): OpenMetrics when `application/openmetrics-text` is named with a weight above zero
    /// and at least the weight the header gives Prometheus' `text/plain`; otherwise the Prometheus
    /// text, also for a header that accepts neither (as Prometheus' own client libraries do).
    ///
    /// Prometheus 2 and 3 name OpenMetrics first (`application/openmetrics-text;version=1.0.0,
    /// …,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`), so they get OpenMetrics; curl, a browser
    /// or a scraper that sends no `Accept` get the 0.0.4 text.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Prometheus };
        // The weight of each representation, with the precedence of RFC 9110 §12.5.1: the most
        // specific media range that matches gives the weight. (specificity, weight)
        let mut openmetrics: Option<(u8, f32)> = None;
        let mut text: Option<(u8, f32)> = None;
        let mut named_openmetrics = false;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0_f32;
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = v.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0);
                    }
                }
            }
            let (om, tx) = match media.as_str() {
                "application/openmetrics-text" => {
                    named_openmetrics |= q > 0.0;
                    (Some(2), None)
                }
                "application/*" => (Some(1), None),
                "text/plain" => (None, Some(2)),
                "text/*" => (None, Some(1)),
                "*/*" => (Some(0), Some(0)),
                _ => (None, None),
            };
            let better = |slot: &mut Option<(u8, f32)>, spec: Option<u8>| {
                if let Some(spec) = spec {
                    match slot {
                        Some((s, w)) if *s > spec || (*s == spec && *w >= q) => {}
                        _ => *slot = Some((spec, q)),
                    }
                }
            };
            better(&mut openmetrics, om);
            better(&mut text, tx);
        }
        let weight = |slot: Option<(u8, f32)>| slot.map_or(0.0, |(_, w)| w);
        if named_openmetrics && weight(openmetrics) > 0.0 && weight(openmetrics) >= weight(text) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text 0.0.4: no `# EOF` and no
/// `# UNIT`; a counter family is named as its samples (`foo_total`), an info family as its sample
/// (`foo_info`, a gauge); `unknown` becomes `untyped` and `stateset` a gauge; a gauge histogram
/// (which 0.0.4 cannot describe) loses its metadata, so its samples read as untyped. `_created`
/// samples, exemplars and timestamps in seconds, which 0.0.4 does not have, are dropped or
/// converted (timestamps to milliseconds). Label sets and values are the same in both formats.
fn openmetrics_to_prometheus(om: &str) -> String {
    // Each family's OpenMetrics type, from its TYPE line (the HELP line comes first).
    let kinds: HashMap<&str, &str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|rest| rest.split_once(' ')).collect();
    let mut out = String::with_capacity(om.len() + om.len() / 8);
    // The family the sample lines being read belong to, and its type.
    let mut family: (&str, &str) = ("", "");
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta =
            line.strip_prefix("# HELP ").map(|r| ("HELP", r)).or(line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((keyword, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = kinds.get(name).copied().unwrap_or("unknown");
            family = (name, kind);
            let (name, kind): (std::borrow::Cow<str>, &str) = match kind {
                "counter" => (format!("{name}_total").into(), "counter"),
                "info" => (format!("{name}_info").into(), "gauge"),
                "unknown" => (name.into(), "untyped"),
                "stateset" => (name.into(), "gauge"),
                "gaugehistogram" => continue,
                other => (name.into(), other),
            };
            let tail = if keyword == "TYPE" { kind } else { tail };
            out.push_str("# ");
            out.push_str(keyword);
            out.push(' ');
            out.push_str(&name);
            if !tail.is_empty() {
                out.push(' ');
                out.push_str(tail);
            }
            out.push('\n');
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, rest) = split_series(line);
        let name = series.split('{').next().unwrap_or(series);
        let created = name.strip_suffix("_created").is_some_and(|base| {
            base == family.0 && matches!(family.1, "counter" | "histogram" | "summary" | "gaugehistogram")
        });
        if created {
            continue;
        }
        // `value [timestamp] [# exemplar]`
        let sample = rest.split(" # ").next().unwrap_or(rest);
        let mut fields = sample.split_whitespace();
        let value = fields.next().unwrap_or("");
        out.push_str(series);
        out.push(' ');
        out.push_str(value);
        if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
            out.push(' ');
            out.push_str(&format!("{}", (ts * 1000.0).round() as i64));
        }
        out.push('\n');
    }
    out
}

/// Splits a sample line after its name and label set (`name{a="x y"}`), respecting quotes and
/// escapes in label values; returns the series and the rest (value, timestamp, exemplar).
fn split_series(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b'{' && bytes[i] != b' ' {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'{' {
        let mut quoted = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    let i = i.min(line.len());
    (&line[..i], line[i..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Unit;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Trace {
        trace: String,
    }

    /// A registry with one family of every type prometheus-client writes.
    fn every_type() -> String {
        let mut r = Registry::with_prefix("t");
        let c = Counter::<u64>::default();
        c.inc_by(3);
        r.register("plain", "A counter", c);
        r.register_with_unit("elapsed", "A counter with a unit", Unit::Seconds, Counter::<f64>::default());
        let labelled = Family::<TransportLabel, Counter>::default();
        labelled.get_or_create(&TransportLabel { transport: "sse" }).inc();
        r.register("by", "A labelled counter", labelled);
        let g = Gauge::<i64>::default();
        g.set(-2);
        r.register("level", "A gauge", g);
        let h = Histogram::new([0.5, 1.0]);
        h.observe(0.7);
        r.register("latency", "A histogram", h);
        r.register("build", "An info", Info::new(BuildLabel { version: "1.2.3" }));
        let e = CounterWithExemplar::<Trace>::default();
        e.inc_by(2, Some(Trace { trace: "a # }b\"".into() }));
        r.register("traced", "A counter with an exemplar", e);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn every_type_converts() {
        let om = every_type();
        assert!(om.ends_with("# EOF\n") && om.contains("# UNIT ") && om.contains(" # {"), "{om}");
        let expected = "\
# HELP t_plain_total A counter.
# TYPE t_plain_total counter
t_plain_total 3
# HELP t_elapsed_seconds_total A counter with a unit.
# TYPE t_elapsed_seconds_total counter
t_elapsed_seconds_total 0.0
# HELP t_by_total A labelled counter.
# TYPE t_by_total counter
t_by_total{transport=\"sse\"} 1
# HELP t_level A gauge.
# TYPE t_level gauge
t_level -2
# HELP t_latency A histogram.
# TYPE t_latency histogram
t_latency_sum 0.7
t_latency_count 1
t_latency_bucket{le=\"0.5\"} 0
t_latency_bucket{le=\"1.0\"} 1
t_latency_bucket{le=\"+Inf\"} 1
# HELP t_build_info An info.
# TYPE t_build_info gauge
t_build_info{version=\"1.2.3\"} 1
# HELP t_traced_total A counter with an exemplar.
# TYPE t_traced_total counter
t_traced_total 2
";
        assert_eq!(openmetrics_to_prometheus(&om), expected);
    }

    #[test]
    fn other_openmetrics_forms() {
        let om = "\
# HELP a A counter.
# TYPE a counter
a_total{x=\"1 # 2\",y=\"\\\"}\"} 4 1700000000.5 # {id=\"q\"} 1.0 1700000000.0
a_created{x=\"1 # 2\",y=\"\\\"}\"} 1700000000.0
# TYPE u unknown
u 1
# TYPE s stateset
s{s=\"on\"} 1
# TYPE gh gaugehistogram
gh_gcount 1
# EOF
";
        let expected = "\
# HELP a_total A counter.
# TYPE a_total counter
a_total{x=\"1 # 2\",y=\"\\\"}\"} 4 1700000000500
# TYPE u untyped
u 1
# TYPE s gauge
s{s=\"on\"} 1
gh_gcount 1
";
        assert_eq!(openmetrics_to_prometheus(om), expected);
    }

    #[test]
    fn the_gateways_metrics_in_both_formats() {
        let m = Metrics::default();
        m.published.inc();
        let text = m.render(Format::Prometheus);
        assert!(text.contains("# TYPE ssegate_events_published_total counter\nssegate_events_published_total 1\n"));
        assert!(text.contains("# TYPE ssegate_build_info gauge\nssegate_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        let om = m.render(Format::OpenMetrics);
        assert!(om.contains("# TYPE ssegate_events_published counter\nssegate_events_published_total 1\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn open_connections_by_protocol() {
        let m = Metrics::default();
        let zero = m.render(Format::Prometheus);
        for protocol in ["http/1.1", "https/1.1", "h2"] {
            assert!(zero.contains(&format!("ssegate_open_connections{{protocol=\"{protocol}\"}} 0\n")), "{zero}");
        }
        let (a, b) = (m.connection_open(Protocol::H2), m.connection_open(Protocol::H2));
        let https = m.connection_open(Protocol::Https1);
        let text = m.render(Format::Prometheus);
        assert!(text.contains("# TYPE ssegate_open_connections gauge\n"), "{text}");
        assert!(text.contains("ssegate_open_connections{protocol=\"h2\"} 2\n"), "{text}");
        assert!(text.contains("ssegate_open_connections{protocol=\"https/1.1\"} 1\n"), "{text}");
        drop((a, b, https));
        assert_eq!(m.render(Format::Prometheus), zero);
    }

    #[test]
    fn negotiation() {
        use Format::*;
        for (accept, expected) in [
            (None, Prometheus),
            (Some(""), Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/json"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"), OpenMetrics),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("application/openmetrics-text;q=0.3, text/plain"), Prometheus),
            (Some("text/plain;q=0.5, application/openmetrics-text;q=0.3"), Prometheus),
            (Some("application/openmetrics-text;q=0.1, */*"), Prometheus),
            (Some("application/openmetrics-text, text/plain"), OpenMetrics),
            (Some("text/plain, application/openmetrics-text"), OpenMetrics),
            (Some("application/openmetrics-text;q=0.2, text/plain;q=0.1, text/plain;version=0.0.4;q=0.1"), OpenMetrics),
            // Prometheus 2.x and 3.x scrapers.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"),
                OpenMetrics,
            ),
            // A Prometheus told to prefer the classic format.
            (Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1"), Prometheus),
            (Some("application/openmetrics-text;q=nonsense"), Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }
}
