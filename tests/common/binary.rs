//! The built `ws-gateway` binary, run as a child process.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

use super::guard;

pub const BINARY: &str = env!("CARGO_BIN_EXE_ws-gateway");

/// The running binary; killed on drop if the test did not stop it.
pub struct Gateway {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    log: Vec<String>,
}

impl Gateway {
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with_env(args, &[])
    }

    /// Starts it with these environment variables set too.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(BINARY)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Gateway {
            child,
            stderr,
            log: Vec::new(),
        }
    }

    /// Reads the log until a line contains `marker`; returns the rest of that line after it.
    pub async fn wait_for_log(&mut self, marker: &str) -> String {
        guard(marker, async {
            loop {
                let line =
                    self.stderr.next_line().await.unwrap().unwrap_or_else(|| {
                        panic!("the log ended before {marker:?}: {:#?}", self.log)
                    });
                self.log.push(line.clone());
                if let Some(at) = line.find(marker) {
                    return line[at + marker.len()..].trim().to_owned();
                }
            }
        })
        .await
    }

    /// The main and the stat listener's addresses, from the start-up log.
    pub async fn addresses(&mut self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let addr = self.wait_for_log("websocket and push listener on ").await;
        let stat = self.wait_for_log("stat listener on ").await;
        (addr.parse().unwrap(), stat.parse().unwrap())
    }

    /// Sends a signal (`"HUP"`, …) and returns at once.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL: the process dies at once, saying goodbye to no one.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Sends SIGTERM and returns the exit status and the rest of the log.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = guard("the exit", self.child.wait()).await.unwrap();
        while let Ok(Some(line)) = self.stderr.next_line().await {
            self.log.push(line);
        }
        (status, self.log)
    }
}
