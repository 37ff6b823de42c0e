//! The `ssegate` binary as a child process, for tests of what only a process shows: its command
//! line, signals, crashes and resident memory.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::api::{http, Api};
use super::wait::within;

/// The release or debug binary, started as a child process; killed (by its PID) when dropped.
pub struct ChildServer {
    pub api: Api,
    pub child: tokio::process::Child,
}

impl std::ops::Deref for ChildServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ChildServer {
    /// Starts the binary on `127.0.0.1:0` with extra `args`.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", args).await
    }

    /// Starts the binary listening on `listen`.
    pub async fn start_at(listen: &str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
            .arg("serve")
            .args(["--listen", listen, "--demo", "false"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the ssegate binary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = within("the binary to print its address", async {
            loop {
                let line = lines.next_line().await.unwrap().expect("the binary exited before listening");
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.trim().to_owned();
                }
            }
        })
        .await;
        ChildServer { api: Api { base, http: http() }, child }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM (to this child, by its PID) and waits for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        within("the gateway to exit", self.child.wait()).await.expect("exit status")
    }

    /// Sends SIGKILL (to this child, by its PID) and waits for it to die: a crash, with no drain.
    pub async fn kill(mut self) {
        within("the gateway to die", self.child.kill()).await.expect("SIGKILL the gateway");
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
