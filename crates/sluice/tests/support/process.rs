//! A `sluice` process started for a test, with its address and log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The bearer token the processes accept (through `E2E_TOKENS`, for
/// configurations whose `collector.tokens_env` names it).
pub const TOKEN: &str = "e2e-secret-token";

pub struct Sluice {
    pub child: Child,
    pub url: String,
    /// The line that announced the address.
    pub banner: String,
}

impl Sluice {
    /// Starts `sluice COMMAND` with a configuration text and extra
    /// environment, on a free loopback port; data in `dir/data`, its log in
    /// `dir/sluice.log`.
    pub fn start_with(dir: &Path, command: &str, config_text: &str, env: &[(&str, &str)]) -> Self {
        Self::start_at(dir, command, config_text, env, "127.0.0.1:0")
    }

    /// As [`start_with`](Self::start_with), listening on `listen`.
    pub fn start_at(
        dir: &Path,
        command: &str,
        config_text: &str,
        env: &[(&str, &str)],
        listen: &str,
    ) -> Self {
        let config = dir.join("sluice.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sluice.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", listen])
            .env("E2E_TOKENS", format!("other-token,{TOKEN}"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (url, banner) = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "sluice exited before listening; see {}",
                        dir.join("sluice.log").display()
                    )
                })
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break (rest.trim().to_owned(), line.clone());
            }
        };
        // Keep draining stdout so the process never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url, banner }
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits until the process has drained and exited.
    pub fn stop(&mut self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sluice exited with {status}");
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series of a Sluice's `/metrics`, e.g.
/// `sluice_live_readers{stream="inbound"}`.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Posts NDJSON to a Sluice's collector with the test token; panics unless
/// every event is accepted (202).
pub async fn post_ndjson(url: &str, body: String) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
}
