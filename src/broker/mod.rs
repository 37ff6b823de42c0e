//! The brokers: [`MemoryBroker`], the embedded default, keeps history in memory;
//! [`RedisBroker`] keeps it in Redis Streams so that several gateway nodes agree on one order.
//! Both implement the core's [`Broker`](crate::core::broker::Broker); the hub is built over the
//! one the configuration names here, because the core knows none of them.

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
    pub fn new(config: Config) -> Result<Hub, HubError> {
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
