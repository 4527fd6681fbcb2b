//! The client commands: `sluice send` and `sluice tail`, which talk to a
//! running Sluice over HTTP (an embedded store belongs to its process).

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};

/// Posts NDJSON events from `input` in batches; returns (accepted, rejected).
pub async fn send(
    url: &str,
    input: Box<dyn BufRead>,
    batch: usize,
    token: Option<&str>,
) -> anyhow::Result<(u64, u64)> {
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/events", url.trim_end_matches('/'));
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut lines = input.lines();
    let mut first_line = 0usize;
    loop {
        let mut body = String::new();
        let mut count = 0;
        for line in lines.by_ref() {
            let line = line.context("reading events")?;
            if line.trim().is_empty() {
                continue;
            }
            body.push_str(&line);
            body.push('\n');
            count += 1;
            if count == batch {
                break;
            }
        }
        if count == 0 {
            break;
        }
        let mut attempt = 0;
        loop {
            let mut request = client
                .post(&endpoint)
                .header("content-type", "application/x-ndjson")
                .body(body.clone());
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("posting to {endpoint}"))?;
            let status = response.status();
            if status.as_u16() == 503 && attempt < 20 {
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1u64);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let text = response.text().await.unwrap_or_default();
            if status.as_u16() == 202 {
                accepted += count as u64;
            } else {
                rejected += count as u64;
                eprintln!(
                    "events {}..{}: HTTP {status}: {text}",
                    first_line,
                    first_line + count
                );
            }
            break;
        }
        first_line += count;
    }
    Ok((accepted, rejected))
}

/// Prints a stream's records as NDJSON to stdout; with `follow`, keeps
/// polling for new ones.
pub async fn tail(
    url: &str,
    stream: &str,
    from: &str,
    limit: Option<usize>,
    follow: bool,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/streams/{stream}/records", url.trim_end_matches('/'));
    let mut cursor: Option<String> = None;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    loop {
        let page = limit.map_or(10_000, |l| (l - printed).clamp(1, 10_000));
        let mut request = client.get(&endpoint).query(&[("limit", page.to_string())]);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match &cursor {
            Some(c) => request.query(&[("cursor", c)]),
            None => request.query(&[("from", from)]),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("reading {endpoint}"))?;
        let status = response.status();
        let more = response
            .headers()
            .get("sluice-more")
            .is_some_and(|v| v == "true");
        cursor = response
            .headers()
            .get("sluice-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let count: usize = response
            .headers()
            .get("sluice-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        stdout.write_all(&body)?;
        stdout.flush()?;
        printed += count;
        if limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        if !more {
            if !follow {
                return Ok(());
            }
            let cursor = cursor.context("the read API gave no cursor")?;
            let left = limit.map(|l| l - printed);
            return follow_live(&client, url, stream, cursor, left, token).await;
        }
    }
}

/// Prints what arrives in `stream` after `cursor`, from its live feed (one
/// reader per stream in the server, whatever the number of followers).
/// Reconnects from the last record printed if the feed is cut off.
async fn follow_live(
    client: &reqwest::Client,
    url: &str,
    stream: &str,
    mut cursor: String,
    mut left: Option<usize>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let endpoint = format!("{}/v1/streams/{stream}/live", url.trim_end_matches('/'));
    let mut stdout = std::io::stdout();
    loop {
        let mut request = client.get(&endpoint).header("last-event-id", &cursor);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("following {endpoint}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("HTTP {status}: {}", body.trim());
        }
        let mut body = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut event = String::new();
        let mut data: Option<String> = None;
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if let Some(id) = line.strip_prefix("id: ") {
                    cursor = id.to_owned();
                } else if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_owned();
                } else if let Some(text) = line.strip_prefix("data: ") {
                    data = Some(text.to_owned());
                } else if line.is_empty() {
                    match (event.as_str(), data.take()) {
                        ("" | "message", Some(record)) => {
                            writeln!(stdout, "{record}")?;
                            stdout.flush()?;
                            if let Some(left) = &mut left {
                                *left -= 1;
                                if *left == 0 {
                                    return Ok(());
                                }
                            }
                        }
                        ("error", Some(reason)) => bail!("the live feed ended: {reason}"),
                        // Cut off as too slow: reconnect from the last record.
                        _ => {}
                    }
                    event.clear();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The text `sluice views` prints: every view, or one view's windows.
pub async fn views(
    url: &str,
    name: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
    token: Option<&str>,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let base = url.trim_end_matches('/');
    let endpoint = match name {
        Some(name) => format!("{base}/v1/views/{name}"),
        None => format!("{base}/v1/views"),
    };
    let mut request = reqwest::Client::new().get(&endpoint);
    for (key, value) in [("from", from), ("to", to)] {
        if let Some(value) = value {
            request = request.query(&[(key, value)]);
        }
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reading {endpoint}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {}", body.trim());
    }
    if json {
        return Ok(format!("{body}\n"));
    }
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let mut out = String::new();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if name.is_none() {
        writeln!(
            out,
            "{:<24} {:<7} {:<20} {:>8}  GROUP_BY",
            "VIEW", "KIND", "FROM", "WINDOW"
        )?;
        for view in answer.as_array().into_iter().flatten() {
            let window = view["window_secs"]
                .as_u64()
                .map_or("-".to_owned(), |s| format!("{s}s"));
            writeln!(
                out,
                "{:<24} {:<7} {:<20} {:>8}  {}",
                text(&view["name"]),
                text(&view["kind"]),
                text(&view["from"]),
                window,
                view["group_by"].as_str().unwrap_or("-")
            )?;
        }
        return Ok(out);
    }
    if let Some(keys) = answer["keys"].as_object() {
        for (key, records) in keys {
            writeln!(out, "{key}")?;
            for record in records.as_array().into_iter().flatten() {
                writeln!(out, "  {record}")?;
            }
        }
        return Ok(out);
    }
    for window in answer["windows"].as_array().into_iter().flatten() {
        let start = text(&window["start"]);
        if let Some(groups) = window["groups"].as_object() {
            let cells: Vec<String> = groups
                .iter()
                .map(|(group, value)| format!("{group}={value}"))
                .collect();
            writeln!(out, "{start}  {}", cells.join("  "))?;
        } else if let Some(top) = window["top"].as_array() {
            let cells: Vec<String> = top
                .iter()
                .map(|e| format!("{}={}", text(&e["value"]), e["count"]))
                .collect();
            writeln!(out, "{start}  {}", cells.join("  "))?;
        } else if let Some(groups) = window["top"].as_object() {
            for (group, top) in groups {
                let cells: Vec<String> = top
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{}={}", text(&e["value"]), e["count"]))
                    .collect();
                writeln!(out, "{start}  {group}: {}", cells.join("  "))?;
            }
        }
    }
    Ok(out)
}
