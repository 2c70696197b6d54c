//! Just enough HTTP to probe and scrape the daemon, without an HTTP client dependency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use churnd::daemon;

/// `GET path` on `addr` over a plain connection: status code and body. Enough HTTP for a
/// probe and a scrape, without an HTTP client dependency.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The sum of every sample of family `name` (all its label sets) in a Prometheus text
/// exposition; 0 when it has none.
pub fn family_total(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let (series, v) = line.rsplit_once(' ')?;
            let family = series.split_once('{').map_or(series, |(f, _)| f);
            (family == name)
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls `GET /readyz` every 10 ms until it answers 200, and returns the time from
/// `started`; fails if the daemon stops first or `limit` passes.
pub async fn wait_ready(
    addr: SocketAddr,
    daemon: &JoinHandle<Result<(), daemon::DaemonError>>,
    started: Instant,
    limit: Duration,
) -> Result<Duration> {
    loop {
        if daemon.is_finished() {
            bail!("the daemon stopped before it was ready");
        }
        if started.elapsed() > limit {
            bail!("the daemon was not ready within {limit:?}");
        }
        // While the daemon loads its snapshot nothing serves the (already bound) port: the
        // request waits in the backlog and is answered once HTTP starts.
        let reply = tokio::time::timeout(Duration::from_secs(5), http_get(addr, "/readyz"))
            .await
            .ok()
            .and_then(Result::ok);
        if reply.is_some_and(|(status, _)| status == 200) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
