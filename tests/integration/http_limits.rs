//! The HTTP server's bounds: at most `http.max_connections` open (the one that waited
//! longest for a request makes room for a new one), heads, idle keep-alive connections and
//! responses timed, and `http.max_connections` checked against the open-file limit.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use churnd::config::Interval;

use crate::helpers::*;

const EVENTS: &str = "churn:events";

/// Sends `GET path` on a kept-alive connection and returns the whole response.
async fn ask(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: churnd\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("an answer within 30 s")
            .expect("the connection stays open for the answer");
        assert!(n > 0, "closed before the answer was complete");
        response.extend_from_slice(&buf[..n]);
        if let Some(length) = content_length(&response) {
            let head = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            if response.len() >= head + length {
                return String::from_utf8(response).unwrap();
            }
        }
    }
}

fn content_length(response: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(response);
    let (head, _) = text.split_once("\r\n\r\n")?;
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .or(Some(0))
}

/// Reads until the daemon closes the connection (a reset counts); returns what came first.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("the daemon closes the connection within 30 s")
        {
            Ok(0) | Err(_) => return data,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the daemon has neither sent anything nor closed the connection.
fn is_open_and_silent(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// At the limit, the connection that waited longest for a request is closed to make room,
/// so probes, scrapes and queries are answered while idle clients take every other place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_limit_make_room_for_new_ones() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.max_connections = std::num::NonZeroU32::new(8).unwrap();
    // Nothing times out during the test: only the limit closes connections.
    settings.http.header_timeout = Interval::from_millis(300_000);
    settings.http.idle_timeout = Interval::from_millis(300_000);
    let app = App::spawn(settings).await;

    // Until the connections App::spawn used are gone, this one is the only one open.
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = ask(&mut first, "/metrics").await;
        if parse_metric(&metrics, "churnd_http_connections") == Some(1.0) {
            let evicted = "churnd_http_connections_closed_total{reason=\"evicted\"}";
            assert_eq!(parse_metric(&metrics, evicted), Some(0.0));
            assert_eq!(
                parse_metric(&metrics, "churnd_http_connections_max"),
                Some(8.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "other connections stay open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Seven idle clients take the other places.
    let mut idle = Vec::new();
    for _ in 0..7 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }

    // A ninth connection is answered: the first, waiting for a request since its last
    // answer (longer than the others since they opened), is closed for it.
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let metrics = ask(&mut extra, "/metrics").await;
    assert_eq!(parse_metric(&metrics, "churnd_http_connections"), Some(8.0));
    assert_eq!(
        parse_metric(
            &metrics,
            "churnd_http_connections_closed_total{reason=\"evicted\"}"
        ),
        Some(1.0)
    );
    assert!(until_closed(&mut first).await.is_empty());
    assert!(idle.iter().all(is_open_and_silent));

    // Everything else keeps working with every place taken: probes, queries, processing,
    // snapshots.
    let written = "churnd_snapshots_total{outcome=\"written\"}";
    let snapshots_before = app.metric(written).await.unwrap();
    let mut c = redis.conn().await;
    for i in 0..3 {
        xadd(&mut c, EVENTS, &purchase(&format!("c{i}"), 10.0, T0_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    wait_for("readiness", Duration::from_secs(20), || {
        let app = &app;
        async move { app.get("/readyz").await.status() == 200 }
    })
    .await;
    assert_eq!(app.get_json("/v1/summary").await["customers"], 3);
    wait_for("another snapshot", Duration::from_secs(20), || {
        let app = &app;
        async move { app.metric(written).await > Some(snapshots_before) }
    })
    .await;

    // Once the idle clients leave, their places are free again.
    drop(idle);
    drop(extra);
    wait_for(
        "the idle connections to be gone",
        Duration::from_secs(20),
        || {
            let app = &app;
            async move { app.metric("churnd_http_connections").await == Some(1.0) }
        },
    )
    .await;
    app.stop().await;
}

/// Clients that send no head, half a head, or a head one byte at a time are closed after
/// `http.header_timeout_ms`, counted from the connection's opening, however the bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_missing_request_heads_are_closed_after_the_header_timeout() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.header_timeout = Interval::from_millis(1_000);
    settings.http.idle_timeout = Interval::from_millis(300_000);
    let app = App::spawn(settings).await;

    let opened = Instant::now();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: churnd\r\n")
        .await
        .unwrap();
    // A valid head of some 300 bytes, one byte every 20 ms: complete only after 6 s.
    let trickle = TcpStream::connect(app.addr).await.unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: churnd\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(250)
    );
    let writer = tokio::spawn(async move {
        for byte in head.bytes() {
            if trickle_write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    for stream in [&mut silent, &mut partial] {
        assert!(until_closed(stream).await.is_empty(), "closed unanswered");
    }
    assert!(opened.elapsed() >= Duration::from_millis(900));
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline.into(), trickle_read.read(&mut buf))
            .await
            .expect("the trickling connection is closed")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        answer.is_empty(),
        "the slow head was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    writer.abort();
    wait_for(
        "three header timeouts counted",
        Duration::from_secs(20),
        || {
            let app = &app;
            async move {
                app.metric("churnd_http_connections_closed_total{reason=\"header_timeout\"}")
                    .await
                    == Some(3.0)
            }
        },
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

/// A kept-alive connection serves several requests, then is closed once it has waited
/// `http.idle_timeout_ms` for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.header_timeout = Interval::from_millis(300_000);
    settings.http.idle_timeout = Interval::from_millis(1_000);
    let app = App::spawn(settings).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for _ in 0..2 {
        let response = ask(&mut stream, "/healthz").await;
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("ok\n"),
            "{response}"
        );
    }
    let answered = Instant::now();
    assert!(until_closed(&mut stream).await.is_empty());
    assert!(answered.elapsed() >= Duration::from_millis(900));
    wait_for("the idle timeout counted", Duration::from_secs(20), || {
        let app = &app;
        async move {
            app.metric("churnd_http_connections_closed_total{reason=\"idle_timeout\"}")
                .await
                == Some(1.0)
        }
    })
    .await;
    assert_eq!(
        app.metric("churnd_http_connections_closed_total{reason=\"header_timeout\"}")
            .await,
        Some(0.0)
    );
    app.stop().await;
}

/// The new keys are checked at start by name; `http.max_connections` must leave 64 file
/// descriptors under the open-file limit, so with a limit of 200 the default 256 is refused
/// with the largest value that fits.
#[test]
fn http_limits_are_checked_at_start() {
    use std::os::unix::process::CommandExt;

    let whole_ms = "must be a whole number of milliseconds, at least 1";
    for (variable, named, expected) in [
        (
            "CHURND__HTTP__MAX_CONNECTIONS",
            "http.max_connections",
            "must be a whole number from 1 to 4294967295",
        ),
        (
            "CHURND__HTTP__HEADER_TIMEOUT_MS",
            "http.header_timeout_ms",
            whole_ms,
        ),
        (
            "CHURND__HTTP__IDLE_TIMEOUT_MS",
            "http.idle_timeout_ms",
            whole_ms,
        ),
        (
            "CHURND__HTTP__REQUEST_TIMEOUT_MS",
            "http.request_timeout_ms",
            whole_ms,
        ),
    ] {
        let out = churnd()
            .arg("check-config")
            .env(variable, "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{variable}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "  - {variable} (environment): {named} {expected} (got \"0\")"
            )),
            "{stderr}"
        );
    }

    let mut low_limit = churnd();
    low_limit.arg("check-config");
    // SAFETY: setrlimit is async-signal-safe and touches only the child about to exec.
    unsafe {
        low_limit.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = low_limit.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "http.max_connections (256) does not fit the open-file limit (ulimit -n) of 200"
        ) && stderr.contains("set it to at most 136"),
        "{stderr}"
    );
    let out = low_limit
        .env("CHURND__HTTP__MAX_CONNECTIONS", "136")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
