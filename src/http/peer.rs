//! Where a request comes from: the key a source address is counted under, and counts per key
//! (for `--max-per-address`, by the accept loop and by the long-poll sessions).

use std::collections::HashMap;
use std::net::IpAddr;

/// The key a source address is counted under for `--max-per-address`: an IPv4 address, or an
/// IPv6 /64 (one host usually holds a whole /64).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
        v4 => v4,
    }
}

/// How many of something (connections, long-poll sessions) each source address holds.
#[derive(Debug, Default)]
pub(crate) struct PerAddress(HashMap<IpAddr, usize>);

impl PerAddress {
    /// Counts one more for `key`; returns how many it holds now.
    pub(crate) fn add(&mut self, key: IpAddr) -> usize {
        let n = self.0.entry(key).or_default();
        *n += 1;
        *n
    }

    /// Counts one less for `key`.
    pub(crate) fn remove(&mut self, key: IpAddr) {
        if let Some(n) = self.0.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&key);
            }
        }
    }

    /// How many `key` holds.
    pub(crate) fn get(&self, key: IpAddr) -> usize {
        self.0.get(&key).copied().unwrap_or(0)
    }
}
