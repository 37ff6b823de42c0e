//! Who is really asking, and could a web page have sent this: the client address behind trusted
//! proxies (`--trusted-proxies`, then `Forwarded` / `X-Forwarded-For` from them only), and the
//! checks that keep a browser from driving a keyless gateway on loopback (cross-site `Origin` or
//! `Sec-Fetch-Site`, and a `Host` that is not a loopback name nor in `--allowed-hosts`, against
//! DNS rebinding).

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, StatusCode};

use crate::config::Config;
use crate::http::error::ApiError;

/// Where a request really comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The address of the client: the TCP peer, or the one a trusted proxy names.
    Known(IpAddr),
    /// Not known: no peer address, a trusted proxy that did not say, or forwarding headers from
    /// a peer that is not a trusted proxy (a proxy nobody vouched for).
    Unknown,
}

impl Peer {
    /// Whether the client is on this machine.
    pub(crate) fn is_loopback(self) -> bool {
        matches!(self, Peer::Known(ip) if ip.to_canonical().is_loopback())
    }
}

fn forwarding_headers(headers: &HeaderMap) -> bool {
    headers.contains_key(header::FORWARDED) || headers.contains_key("x-forwarded-for")
}

/// The addresses a request went through, as its forwarding headers list them, nearest last:
/// `Forwarded: for=…` (RFC 7239) if present, else `X-Forwarded-For`. `None` for an entry that is
/// not an address (`unknown`, an obfuscated name).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    if headers.contains_key(header::FORWARDED) {
        values(header::FORWARDED)
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"')))
                })?
            })
            .collect()
    } else {
        values(header::HeaderName::from_static("x-forwarded-for")).map(|v| parse_node(v.trim())).collect()
    }
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]` or `[::1]:5678`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// The client a request comes from: the TCP `peer` unless it is a trusted proxy, in which case
/// the nearest address in the forwarding headers that is not a trusted proxy itself.
pub(crate) fn peer(config: &Config, peer: Option<SocketAddr>, headers: &HeaderMap) -> Peer {
    let Some(peer) = peer.map(|p| p.ip().to_canonical()) else { return Peer::Unknown };
    let trusted = |ip: IpAddr| config.trusts_proxy(ip);
    if !trusted(peer) {
        // Forwarding headers from a proxy nobody configured: the request is not what it seems.
        return if forwarding_headers(headers) { Peer::Unknown } else { Peer::Known(peer) };
    }
    let mut nearest = Peer::Unknown;
    for hop in forwarded_for(headers).into_iter().rev() {
        match hop.map(|ip| ip.to_canonical()) {
            // A proxy of ours (or, if every hop is one, the client in that range itself).
            Some(ip) if trusted(ip) => nearest = Peer::Known(ip),
            Some(ip) => return Peer::Known(ip),
            None => return Peer::Unknown,
        }
    }
    nearest
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`), in lower case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `Host` names this machine (`localhost`, `*.localhost`, a loopback address) or a host
/// listed in `--allowed-hosts`. A request without `Host` (HTTP/1.0) passes: browsers always send it.
pub(crate) fn host_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else { return true };
    let Ok(host) = host.to_str() else { return false };
    let name = host_name(host);
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback()) {
        return true;
    }
    config.allowed_hosts.iter().any(|h| host_name(h) == name)
}

/// Whether `origin` is allowed by `--cors-origins` as a list (a `*` there does not count), or is
/// the gateway's own origin (the page it serves itself, at the `Host` asked for).
pub(crate) fn origin_listed(config: &Config, headers: &HeaderMap, origin: &str) -> bool {
    let listed = crate::http::cors::listed(&config.cors_origins).any(|o| o.eq_ignore_ascii_case(origin));
    let own = headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|host| {
        let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
    });
    listed || own
}

/// Refuses (`403 forbidden`) a request that a web page on another site could have sent: an
/// `Origin` that `--cors-origins` does not list (nor the gateway's own), or
/// `Sec-Fetch-Site: cross-site`.
pub(crate) fn not_cross_site(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_listed(config, headers, origin) {
            return Err(forbidden(format!(
                "a request from the web page at {origin:?} may not do this: its origin is not in --cors-origins"
            )));
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Err(forbidden("a request that a web page on another site sent may not do this"));
    }
    Ok(())
}

/// The keyless loopback rule: the real client is on this machine, the request is not one a web
/// page on another site could have sent, and `Host` names this machine or an allowed host.
pub(crate) fn loopback_rule(config: &Config, peer: Peer, headers: &HeaderMap) -> Result<(), ApiError> {
    if !peer.is_loopback() {
        return Err(forbidden(
            "with no API key or JWT key configured, this endpoint answers clients on this machine only \
             (behind a proxy, see --trusted-proxies)",
        ));
    }
    not_cross_site(config, headers)?;
    if !host_allowed(config, headers) {
        return Err(forbidden("the Host of this request is not this machine; list it in --allowed-hosts"));
    }
    Ok(())
}

/// Refuses (`403 forbidden`) a WebSocket handshake from a web page whose origin `--cors-origins`
/// does not allow (with `*`, every origin is allowed). Clients that are not browsers send no
/// `Origin`.
pub(crate) fn ws_origin(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if config.cors_origins.trim() == "*" {
        return Ok(());
    }
    let origin = origin.to_str().unwrap_or("");
    if origin_listed(config, headers, origin) {
        Ok(())
    } else {
        Err(forbidden(format!("WebSocket connections from {origin:?} are not allowed (--cors-origins)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        Config::from_sources(all, &Default::default()).unwrap()
    }

    #[test]
    fn the_real_peer_is_found_behind_trusted_proxies_only() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let plain = config(&[]);
        assert_eq!(peer(&plain, Some(local), &HeaderMap::new()), Peer::Known("127.0.0.1".parse().unwrap()));
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(peer(&plain, Some(local), &xff), Peer::Unknown, "a proxy nobody configured");
        let behind = config(&["--trusted-proxies", "127.0.0.1,10.0.0.0/8"]);
        assert_eq!(peer(&behind, Some(local), &xff), Peer::Known("203.0.113.9".parse().unwrap()));
        assert_eq!(peer(&behind, Some(local), &HeaderMap::new()), Peer::Unknown);
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 127.0.0.1, 10.1.1.1")]);
        assert_eq!(peer(&behind, Some(local), &chain), Peer::Known("198.51.100.1".parse().unwrap()));
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1, 203.0.113.9")]);
        assert_eq!(peer(&behind, Some(local), &spoofed), Peer::Known("203.0.113.9".parse().unwrap()));
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(peer(&behind, Some(local), &fwd), Peer::Known("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn hosts_and_origins_are_checked() {
        let c = config(&["--cors-origins", "https://app.example", "--allowed-hosts", "gw.internal"]);
        assert!(host_allowed(&c, &headers(&[("host", "127.0.0.1:8080")])));
        assert!(host_allowed(&c, &headers(&[("host", "[::1]:8080")])));
        assert!(host_allowed(&c, &headers(&[("host", "LOCALHOST")])));
        assert!(host_allowed(&c, &headers(&[("host", "gw.internal:80")])));
        assert!(!host_allowed(&c, &headers(&[("host", "rebind.evil.example:8080")])));
        assert!(not_cross_site(&c, &headers(&[("origin", "https://app.example")])).is_ok());
        assert!(not_cross_site(&c, &headers(&[("origin", "http://evil.example")])).is_err());
        let own = headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")]);
        assert!(not_cross_site(&c, &own).is_ok(), "the gateway's own page");
        assert!(
            not_cross_site(&config(&[]), &headers(&[("origin", "http://evil.example")])).is_err(),
            "* does not count"
        );
        assert!(not_cross_site(&c, &headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(ws_origin(&config(&[]), &headers(&[("origin", "http://evil.example")])).is_ok());
        assert!(ws_origin(&c, &headers(&[("origin", "http://evil.example")])).is_err());
    }
}
