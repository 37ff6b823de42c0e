//! A `redis-server` of the test's own, for the cluster tests: several gateways share it as their
//! broker, and a test can kill it and start it again empty.

use std::process::Stdio;
use std::time::Duration;

use super::wait::within;

/// A port that was free a moment ago on 127.0.0.1 (for servers that cannot take port 0).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A `redis-server` of the test's own on 127.0.0.1, keeping nothing on disk (so a restart loses
/// its data); killed (by its PID) when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub async fn start() -> Redis {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: the cluster tests need a real redis-server (apt-get install redis-server)"
        );
        // Another process may take the port between our probe and the server's bind: try another.
        for _ in 0..5 {
            let mut redis = Redis { port: free_port(), child: None };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it to die.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        within("redis-server to die", child.kill()).await.expect("SIGKILL redis-server");
    }

    /// Starts a fresh, empty server on the same port after [`Self::stop`].
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        let port = self.port;
        assert!(self.spawn().await, "redis-server did not start again on port {port}");
    }

    /// Starts the server on `self.port`; false if it exits before answering (port taken).
    async fn spawn(&mut self) -> bool {
        let port = self.port;
        let dir = std::env::temp_dir();
        let child = tokio::process::Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir", dir.to_str().expect("a UTF-8 temp dir")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let child = self.child.insert(child);
        let up = within("redis-server to answer PING", async {
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                if redis_ping(port).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if !up {
            self.child = None;
        }
        up
    }
}

/// Whether a Redis server answers `PING` on 127.0.0.1:`port`.
async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if conn.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}
