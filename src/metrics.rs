//! Counters and gauges of the gateway, served as Prometheus text at `GET /metrics`.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::client::Transport;

/// The label of per-transport series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `sse`, `ws` or `long-poll`.
    pub transport: &'static str,
}

impl From<Transport> for TransportLabel {
    fn from(t: Transport) -> Self {
        TransportLabel { transport: t.as_str() }
    }
}

/// Every metric the gateway keeps. Cheap to update: atomics, bumped once per batch on hot paths.
#[derive(Debug)]
pub struct Metrics {
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
            registry: Registry::default(),
        };
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
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus (OpenMetrics) text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
