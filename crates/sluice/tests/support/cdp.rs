//! Headless Chromium, driven over the DevTools protocol: a small client of
//! our own (a WebSocket, commands answered by id, events collected) with
//! just what the browser tests use.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A running headless Chromium with one DevTools connection.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: Mutex<u64>,
    /// Every event the browser sent: (session, method, params).
    pub events: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl Chromium {
    /// Starts Chromium (`/usr/bin/chromium`, or `$CHROMIUM`) and connects.
    pub async fn launch() -> Self {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}): scripts/test installs it (apt-get install chromium), or set CHROMIUM")
            });
        let stderr = child.stderr.take().unwrap();
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if !sent {
                        let _ = found.send(url.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let url = address
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not announce its DevTools address within 60 s");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let (answers, log) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = value["id"].as_u64() {
                    if let Some(reply) = answers.lock().unwrap().remove(&id) {
                        let result = match value.get("error") {
                            Some(error) => Err(error.to_string()),
                            None => Ok(value["result"].clone()),
                        };
                        let _ = reply.send(result);
                    }
                } else if let Some(method) = value["method"].as_str() {
                    let session = value["sessionId"].as_str().unwrap_or("").to_owned();
                    log.lock()
                        .unwrap()
                        .push((session, method.to_owned(), value["params"].clone()));
                }
            }
        });
        Self {
            child,
            _profile: profile,
            outgoing,
            pending,
            next_id: Mutex::new(0),
            events,
        }
    }

    /// Sends a command (to a page's session, or the browser) and waits for its answer.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = {
            let mut next = self.next_id.lock().unwrap();
            *next += 1;
            *next
        };
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = Value::from(session);
        }
        self.outgoing
            .send(Message::Text(message.to_string().into()))
            .expect("DevTools connection open");
        match tokio::time::timeout(Duration::from_secs(60), answer).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => panic!("{method}: {error}"),
            _ => panic!("{method}: no answer from the browser within 60 s"),
        }
    }

    /// Opens a new tab.
    pub async fn page(&self) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let page = Page {
            browser: self,
            session,
        };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Chromium,
    session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Loads `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            &format!(
                "location.href == {} && document.readyState == 'complete'",
                json!(url)
            ),
            Duration::from_secs(30),
        )
        .await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` is true in the page.
    pub async fn wait_for(&self, condition: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let result = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": format!("!!({condition})"), "returnByValue": true}),
                )
                .await;
            if result["result"]["value"] == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {limit:?} for {condition}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Console messages and uncaught exceptions of this tab so far.
    pub fn console(&self) -> Vec<String> {
        self.browser
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|(session, _, _)| *session == self.session)
            .filter_map(|(_, method, params)| match method.as_str() {
                "Runtime.consoleAPICalled" => Some(format!(
                    "{}: {}",
                    params["type"].as_str().unwrap_or("?"),
                    params["args"]
                        .as_array()
                        .map(|args| args
                            .iter()
                            .map(|a| a["value"].to_string())
                            .collect::<Vec<_>>()
                            .join(" "))
                        .unwrap_or_default()
                )),
                "Runtime.exceptionThrown" => {
                    Some(format!("exception: {}", params["exceptionDetails"]))
                }
                _ => None,
            })
            .collect()
    }
}
