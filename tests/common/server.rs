//! A gateway running inside the test process on `127.0.0.1:0`, through the library's `run`, so a
//! test can tweak its `Config` and stop it cleanly.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api::{http, Api};
use super::wait::within;

/// A gateway running in this test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// Starts a gateway with the default config (without the demo publisher).
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a gateway with the default config changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut ssegate::Config)) -> Self {
        // The built-in demo publisher would add events of its own.
        let mut config = ssegate::Config { demo: false, ..Default::default() };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ssegate::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("the gateway runs");
        });
        TestServer {
            addr,
            api: Api { base: format!("http://{addr}"), http: http() },
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the gateway down and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            within("the gateway to shut down", t).await.unwrap();
        }
    }
}
