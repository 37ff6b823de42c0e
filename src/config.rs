//! Gateway configuration: one typed struct, read from flags and `SSEGATE_*` environment variables
//! (flags win), through a function that tests can feed without touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Settings of one gateway process.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Send `: hb` to a client after this many milliseconds without output.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_ms: u64,
    /// Events kept in history for resuming clients.
    #[arg(long, default_value_t = 10_000)]
    pub history_size: usize,
    /// Most memory the history may take, in bytes (about twice the payloads it holds).
    #[arg(long, default_value_t = 256 << 20)]
    pub history_bytes: usize,
    /// Oldest event kept in history, in seconds.
    #[arg(long, default_value_t = 300)]
    pub history_age_s: u64,
    /// Items a client's outbound queue holds; a client whose queue fills is closed and resumes.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_size: u64,
    /// Largest request body (and WebSocket frame), in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Enabled transports, a comma list of `sse`, `ws`, `long-poll`, `poll`.
    #[arg(long, default_value = "sse,ws,long-poll,poll", value_parser = parse_transports)]
    pub transports: Transports,
    /// Where history and ordering live: `memory`, or `redis://HOST:PORT`.
    #[arg(long, default_value = "memory")]
    pub broker: String,
    /// Reconnection delay suggested to SSE clients (`retry:`), in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub retry_ms: u64,
    /// API keys that grant publisher rights (comma list). With none (and no `--jwt-key`),
    /// publishing and the admin endpoints answer loopback peers only. An empty key is refused.
    #[arg(long, value_delimiter = ',', value_parser = non_empty_key)]
    pub api_key: Vec<String>,
    /// Key that verifies JWTs: an HS256 secret, or `@PATH` to a PEM public key (RS256 or ES256).
    /// With it, subscribing needs a token whose `ssegate.subscribe` patterns cover the topics.
    #[arg(long, value_parser = JwtKey::parse)]
    pub jwt_key: Option<JwtKey>,
    /// Topics and patterns anyone may subscribe to without a token when `--jwt-key` is set
    /// (comma list).
    #[arg(long, value_delimiter = ',')]
    pub anonymous_topics: Vec<String>,
    /// Host names (besides loopback names and addresses) that the keyless loopback rule accepts
    /// in `Host` (comma list); other hosts are refused, against DNS rebinding.
    #[arg(long, value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Addresses or networks (`ADDR` or `ADDR/BITS`, comma list) of reverse proxies in front of
    /// the gateway: a request from one is taken to come from the address its `Forwarded` or
    /// `X-Forwarded-For` header names, so that "loopback" means the real client.
    #[arg(long, value_delimiter = ',', value_parser = IpNet::parse)]
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed by CORS (comma list), or `*`.
    #[arg(long, default_value = "*")]
    pub cors_origins: String,
    /// Most open connections; more get `503` with `Retry-After`.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Most open connections (and long-poll sessions) from one source address; more get `503`
    /// with `Retry-After`. Keeps one address from taking every slot.
    #[arg(long, default_value_t = 4_096)]
    pub max_per_address: usize,
    /// Most topics and patterns one client may subscribe to, and most topics one request may
    /// name (a `subscribe`, a `/stream` URL, a publish's `topics`); more: `400 too_many_topics`.
    #[arg(long, default_value_t = 1_024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_topics_per_client: u64,
    /// Largest retained state, as JSON text; a change that would make it larger:
    /// `413 state_too_large`, nothing changed. A change to a state holds the hub's lock for about
    /// 30 ms per MiB of state on this class of machine, hence the modest default.
    #[arg(long, default_value_t = 256 << 10)]
    pub max_state_bytes: usize,
    /// A WebSocket peer not heard from for this long is dropped (it is pinged after a heartbeat
    /// interval of silence); 0 means three heartbeat intervals.
    #[arg(long, default_value_t = 0)]
    pub ws_timeout_ms: u64,
    /// A long-poll session not polled for this long expires, with the events kept for it.
    #[arg(long, default_value_t = 30_000)]
    pub poll_session_ttl_ms: u64,
    /// Longest long-poll wait a client may ask for, in seconds.
    #[arg(long, default_value_t = 60)]
    pub poll_max_timeout_s: u64,
    /// Polling interval suggested by `/snapshot` (`X-Poll-Interval`), in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub poll_interval_ms: u64,
    /// Backend URL that WebSocket `rpc` requests are POSTed to (`{client_id, method, data}`);
    /// its JSON answer becomes the `reply`. Used by [`crate::run`]; an app that builds its own
    /// [`crate::Hub`] sets a handler with [`crate::Hub::set_rpc_handler`] (e.g. an
    /// [`crate::HttpRpc`]).
    #[arg(long)]
    pub rpc_url: Option<String>,
    /// File that keeps the in-memory history and retained state across restarts (written at
    /// shutdown, read at start).
    #[arg(long)]
    pub state_file: Option<std::path::PathBuf>,
    /// Directory that keeps the memory broker's history and retained state durably: a publish is
    /// answered once its events are on disk, and a restart (after `kill -9` too) resumes from
    /// them. Takes the place of `--state-file`. Ignored with a Redis broker.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Run the built-in demo publisher (topics `demo/counters` and `demo/series`) and the demo's
    /// refresh endpoint.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub demo: bool,
    /// Time to drain connections on shutdown before they are cut, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,
    /// Certificate chain (PEM) to serve HTTPS with, offering HTTP/2 and HTTP/1.1 on `--listen`.
    /// Needs `--tls-key`. Read again on `SIGHUP`.
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_sources(["serve"], &HashMap::new()).expect("the defaults are valid")
    }
}

impl Config {
    /// Whether `ip` is one of `--trusted-proxies`.
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// Parses `serve`'s flags (`args` without the program name, starting at `serve`), taking a
    /// value from `env` (`SSEGATE_<FLAG>`) for each flag that is not given.
    pub fn from_sources<I, T>(args: I, env: &HashMap<String, String>) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("ssegate")).chain(args.into_iter().map(Into::into));
        let matches = cli_command(env).try_get_matches_from(argv)?;
        match Cli::from_arg_matches(&matches)?.command {
            Command::Serve(config) => Ok(config),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// How long a WebSocket peer may stay silent.
    pub fn ws_timeout(&self) -> Duration {
        match self.ws_timeout_ms {
            0 => self.heartbeat() * 3,
            ms => Duration::from_millis(ms),
        }
    }

    /// The longest age of an event in history.
    pub fn history_age(&self) -> Duration {
        Duration::from_secs(self.history_age_s)
    }
}

/// Refuses an empty API key: an empty `X-API-Key` would otherwise grant publisher rights.
fn non_empty_key(s: &str) -> Result<String, String> {
    let key = s.trim();
    if key.is_empty() {
        return Err("an empty API key is not a key (check for a stray comma or an empty SSEGATE_API_KEY)".into());
    }
    Ok(key.to_owned())
}

/// The key that verifies JWTs (`--jwt-key`), with the algorithm it verifies. Its `Debug` does
/// not show the key.
#[derive(Clone)]
pub struct JwtKey {
    /// The verification key.
    pub key: jsonwebtoken::DecodingKey,
    /// HS256 for a secret; RS256 or ES256 for a public key.
    pub algorithm: jsonwebtoken::Algorithm,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({:?}, <redacted>)", self.algorithm)
    }
}

impl JwtKey {
    /// Reads `--jwt-key`: an HS256 secret, or `@PATH` to a PEM public key (RS256 or ES256). An
    /// empty secret, or a file that holds no such key, is refused.
    pub fn parse(s: &str) -> Result<JwtKey, String> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        if s.trim().is_empty() {
            return Err("an empty JWT key is not a key".into());
        }
        let Some(path) = s.strip_prefix('@') else {
            return Ok(JwtKey { key: DecodingKey::from_secret(s.as_bytes()), algorithm: Algorithm::HS256 });
        };
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the JWT public key {path:?}: {e}"))?;
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(JwtKey { key, algorithm: Algorithm::ES256 });
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(JwtKey { key, algorithm: Algorithm::RS256 });
        }
        Err(format!("{path:?} holds no PEM public key for RS256 or ES256"))
    }
}

/// An address or network of trusted proxies: `ADDR` or `ADDR/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    bits: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/BITS` (IPv4 or IPv6).
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an address or ADDR/BITS network");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(IpNet { addr, bits })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let prefix = |a: u128, b: u128, len: u32, bits: u8| {
            let shift = len - u32::from(bits);
            shift >= len || (a >> shift) == (b >> shift)
        };
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix(u32::from(n).into(), u32::from(a).into(), 32, self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix(n.into(), a.into(), 128, self.bits),
            _ => false,
        }
    }
}

/// The command line: `ssegate serve [FLAGS]`.
#[derive(Debug, Parser)]
#[command(name = "ssegate", version, about = "A real-time push gateway: SSE, WebSocket and long-polling")]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The binary's subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway.
    Serve(Config),
}

/// The name of the environment variable for a flag: `SSEGATE_` and the flag in capitals.
pub(crate) fn env_name(flag_id: &str) -> String {
    format!("SSEGATE_{}", flag_id.to_ascii_uppercase())
}

/// The clap command with environment values as defaults and named in the help.
pub(crate) fn cli_command(env: &HashMap<String, String>) -> clap::Command {
    Cli::command().mut_subcommand("serve", |serve| {
        let ids: Vec<String> = serve.get_arguments().map(|a| a.get_id().to_string()).collect();
        ids.into_iter().filter(|id| id != "help").fold(serve, |serve, id| {
            let var = env_name(&id);
            let value = env.get(&var).cloned();
            serve.mut_arg(id.as_str(), move |arg| {
                let help = format!("{} [env: {var}]", arg.get_help().map(|h| h.to_string()).unwrap_or_default());
                let arg = arg.help(help);
                match value {
                    Some(v) => arg.default_value(v),
                    None => arg,
                }
            })
        })
    })
}

/// The set of enabled transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    /// `GET /stream`.
    pub sse: bool,
    /// `GET /ws`.
    pub ws: bool,
    /// `GET /poll`.
    pub long_poll: bool,
    /// `GET /snapshot` polling.
    pub poll: bool,
}

impl Transports {
    /// Whether a transport is enabled.
    pub fn enabled(&self, c: Transport) -> bool {
        match c {
            Transport::Sse => self.sse,
            Transport::Ws => self.ws,
            Transport::LongPoll => self.long_poll,
            Transport::Poll => self.poll,
        }
    }
}

/// A transport, by its contract name as `--transports`, `/negotiate`, `GET /clients` and the
/// metrics spell it. Clients are connected over the first three; `/snapshot` polling holds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// Server-Sent Events, `/stream`.
    #[serde(rename = "sse")]
    Sse,
    /// WebSocket, `/ws`.
    #[serde(rename = "ws")]
    Ws,
    /// Long-polling, `/poll`.
    #[serde(rename = "long-poll")]
    LongPoll,
    /// Plain polling with ETags, `/snapshot`.
    #[serde(rename = "poll")]
    Poll,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 4] = [Transport::Sse, Transport::Ws, Transport::LongPoll, Transport::Poll];

    /// The contract's name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::LongPoll => "long-poll",
            Transport::Poll => "poll",
        }
    }

    /// The transport named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Transport::ALL.into_iter().find(|c| c.name() == name)
    }
}

fn parse_transports(s: &str) -> Result<Transports, String> {
    let mut t = Transports { sse: false, ws: false, long_poll: false, poll: false };
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Transport::parse(name) {
            Some(Transport::Sse) => t.sse = true,
            Some(Transport::Ws) => t.ws = true,
            Some(Transport::LongPoll) => t.long_poll = true,
            Some(Transport::Poll) => t.poll = true,
            None => return Err(format!("unknown transport {name:?} (use sse, ws, long-poll, poll)")),
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_environment_which_beats_defaults() {
        let env = HashMap::from([
            ("SSEGATE_HEARTBEAT_MS".to_owned(), "250".to_owned()),
            ("SSEGATE_LISTEN".to_owned(), "127.0.0.1:9000".to_owned()),
        ]);
        let c = Config::from_sources(["serve", "--listen", "127.0.0.1:0"], &env).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.heartbeat_ms, 250);
        assert_eq!(c.history_size, 10_000);
        assert!(c.transports.sse && c.transports.poll);
    }

    #[test]
    fn empty_keys_are_refused() {
        let env = HashMap::new();
        assert!(Config::from_sources(["serve", "--api-key", ""], &env).is_err());
        assert!(Config::from_sources(["serve", "--api-key", "k1,"], &env).is_err());
        assert!(Config::from_sources(["serve", "--jwt-key", ""], &env).is_err());
        assert_eq!(Config::from_sources(["serve", "--api-key", "k1,k2"], &env).unwrap().api_key, ["k1", "k2"]);
        let env = HashMap::from([("SSEGATE_API_KEY".to_owned(), String::new())]);
        assert!(Config::from_sources(["serve"], &env).is_err());
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net = |s: &str| IpNet::parse(s).unwrap();
        assert!(net("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.1.2.3".parse().unwrap()));
        assert!(net("127.0.0.1").contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(net("::1").contains("::1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err() && IpNet::parse("nope").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let env = HashMap::new();
        assert!(Config::from_sources(["serve", "--transports", "sse,carrier-pigeon"], &env).is_err());
        assert!(Config::from_sources(["serve", "--listen", "nowhere"], &env).is_err());
        let env = HashMap::from([("SSEGATE_QUEUE_SIZE".to_owned(), "0".to_owned())]);
        assert!(Config::from_sources(["serve"], &env).is_err());
    }
}
