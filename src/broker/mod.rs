//! The brokers: [`MemoryBroker`], the embedded default, keeps history in memory;
//! [`RedisBroker`] keeps it in Redis Streams so that several gateway nodes agree on one order.
//! Both implement the core's [`Broker`](crate::core::broker::Broker); the hub is built over the
//! one the configuration names here, because the core knows none of them. [`datadir`] keeps the
//! memory broker's history and the retained states on disk (`--data-dir`).

pub(crate) mod datadir;
pub(crate) mod memory;
pub(crate) mod redis;

pub(crate) use memory::MemoryBroker;
pub(crate) use redis::RedisBroker;

use crate::config::Config;
use crate::core::broker::Broker;
use crate::core::hub::{Hub, HubError};
use crate::core::persist::Saved;

impl Hub {
    /// A hub with the broker named by `config.broker`. Must be called inside a tokio runtime (it
    /// starts the heartbeat task, which stops with the hub).
    pub fn new(mut config: Config) -> Result<Hub, HubError> {
        if let Some(dir) = config.data_dir.clone() {
            if matches!(config.broker.as_str(), "memory" | "") {
                return durable(config, &dir);
            }
            tracing::warn!("--data-dir is ignored with a Redis broker, which keeps history and state itself");
            config.data_dir = None;
        }
        let saved = match &config.state_file {
            Some(path) => Saved::load(path).map_err(|e| HubError::Config(e.to_string()))?,
            None => None,
        };
        let (len, bytes, age) = (config.history_size, config.history_bytes, config.history_age());
        let broker: Box<dyn Broker> = match (config.broker.as_str(), &saved) {
            ("memory" | "", None) => Box::new(MemoryBroker::new(len, bytes, age)),
            ("memory" | "", Some(saved)) => {
                let bad = |what: &str| HubError::Config(format!("state file: bad {what} id"));
                let floor = saved.floor.parse().map_err(|_| bad("floor"))?;
                let last = saved.last.parse().map_err(|_| bad("last"))?;
                let events = saved.events().map_err(HubError::Config)?;
                tracing::info!(events = events.len(), topics = saved.retained.len(), "history and state restored");
                Box::new(MemoryBroker::restored(len, bytes, age, floor, last, events))
            }
            (url, _) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                if saved.is_some() {
                    tracing::warn!("--state-file is ignored with a Redis broker, which keeps history and state itself");
                }
                let broker = RedisBroker::new(url, &config).map_err(|e| HubError::Config(e.to_string()))?;
                return Ok(Hub::with_broker(config, Box::new(broker)));
            }
            (other, _) => return Err(HubError::UnsupportedBroker(other.to_owned())),
        };
        let hub = Hub::with_broker(config, broker);
        if let Some(saved) = saved {
            hub.load_retained(saved.retained);
        }
        Ok(hub)
    }
}

/// A hub over the memory broker with its history and states in `dir` (`--data-dir`). A
/// `--state-file` is read into an empty `dir` once, and not written any more.
fn durable(mut config: Config, dir: &std::path::Path) -> Result<Hub, HubError> {
    let bad = |e: &dyn std::fmt::Display| HubError::Config(e.to_string());
    let import = match config.state_file.take() {
        Some(path) => {
            tracing::warn!(
                state_file = %path.display(),
                "--state-file is folded into --data-dir: read into an empty data dir once, never written"
            );
            match Saved::load(&path).map_err(|e| bad(&e))? {
                Some(saved) => {
                    let floor = saved.floor.parse().map_err(|_| bad(&"state file: bad floor id"))?;
                    let last = saved.last.parse().map_err(|_| bad(&"state file: bad last id"))?;
                    let events = saved.events().map_err(HubError::Config)?;
                    Some(datadir::Recovered { floor, last, events, states: saved.retained, fresh: false })
                }
                None => None,
            }
        }
        None => None,
    };
    let (len, bytes, age) = (config.history_size, config.history_bytes, config.history_age());
    let limits = datadir::Limits::for_history(len, bytes);
    let (disk, recovered) = datadir::DataDir::open(dir, limits, import).map_err(|e| bad(&e))?;
    let datadir::Recovered { floor, last, events, states, .. } = recovered;
    let broker = MemoryBroker::restored(len, bytes, age, floor, last, events).with_data_dir(disk);
    let hub = Hub::with_broker(config, Box::new(broker));
    hub.load_retained(states);
    Ok(hub)
}
