//! A Server-Sent Events reader over reqwest, for the live feed tests.

use std::time::Duration;

use futures::StreamExt;

/// One message: its `event` (`message` when none), `id` and `data`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

pub struct Feed {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    /// Keep-alive comments seen.
    pub comments: usize,
    /// Hand out comments too, as messages of event `comment`.
    pub keep_comments: bool,
}

impl Feed {
    /// Opens `url` with `headers`; panics unless the answer is a 200 event stream.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let client = reqwest::Client::new();
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}: {:?}", response.text().await);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            comments: 0,
            keep_comments: false,
        }
    }

    /// The next message, or `None` when the server ended the stream. Fails
    /// after `limit` without one.
    pub async fn next(&mut self, limit: Duration) -> Option<Message> {
        tokio::time::timeout(limit, self.next_message())
            .await
            .unwrap_or_else(|_| panic!("no message within {limit:?}"))
    }

    async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 events");
                let mut message = Message {
                    event: "message".into(),
                    ..Message::default()
                };
                let mut fields = 0;
                for line in text.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    let (name, value) = line.split_once(": ").unwrap_or((line, ""));
                    fields += 1;
                    match name {
                        "event" => message.event = value.to_owned(),
                        "id" => message.id = Some(value.to_owned()),
                        "data" => message.data.push_str(value),
                        other => panic!("unexpected field {other:?}"),
                    }
                }
                if fields == 0 {
                    self.comments += 1;
                    if self.keep_comments {
                        message.event = "comment".into();
                        return Some(message);
                    }
                    continue;
                }
                return Some(message);
            }
            match self.body.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk.unwrap()),
                None => return None,
            }
        }
    }
}
