//! Oversized entries: a backlog of entries carrying a large field is read a few at a time
//! within `source.max_inflight_bytes`, entries over `events.max_entry_bytes` are
//! dead-lettered with a copy cut to `dead_letter.max_copy_bytes`, and the memory they took
//! goes back to the system once they are applied. Measured on the built binary's resident
//! memory.

use std::time::{Duration, Instant};

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const MB: u64 = 1 << 20;

/// Appends `n` purchases, each carrying a `blob` field of `blob_bytes`.
async fn backlog(redis: &RedisServer, n: usize, blob_bytes: usize) {
    let mut c = redis.conn().await;
    let blob = "x".repeat(blob_bytes);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("XADD")
                .arg(EVENTS)
                .arg("*")
                .arg("customer_id")
                .arg(format!("c{i}"))
                .arg("type")
                .arg("purchase")
                .arg("amount")
                .arg("5")
                .arg("ts")
                .arg(T0_MS + *i as u64)
                .arg("blob")
                .arg(&blob)
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
    }
}

/// Reads the daemon's resident memory every few milliseconds until the group has read
/// every entry and written its effects; the highest reading.
async fn peak_rss_until_drained(daemon: &DaemonProcess, redis: &RedisServer) -> u64 {
    let mut c = redis.conn().await;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(state) = drained(&mut c, EVENTS, "churnd").await {
        peak = peak.max(daemon.rss_bytes());
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peak.max(daemon.rss_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_entries_are_dead_lettered_cut_and_their_memory_comes_back() {
    let redis = RedisServer::start();
    // 600 entries of 300 KB: 180 MB, all in the first read of a batch of 1,000 were reads
    // counted in entries only.
    backlog(&redis, 600, 300_000).await;
    let daemon = DaemonProcess::spawn(&[
        ("CHURND__REDIS__URL", redis.url()),
        ("CHURND__SOURCE__MAX_INFLIGHT_BYTES", (8 * MB).to_string()),
    ]);
    let peak = peak_rss_until_drained(&daemon, &redis).await;
    assert!(
        peak < 100 * MB,
        "reading 180 MB of oversized entries peaked at {} MB",
        peak / MB
    );
    wait_for(
        "the memory to come back",
        Duration::from_secs(30),
        || async { daemon.rss_bytes() < 60 * MB },
    )
    .await;

    let mut c = redis.conn().await;
    let dead = read_stream(&mut c, "churn:events:dlq").await;
    assert_eq!(dead.len(), 600);
    for (_, fields) in &dead {
        assert_eq!(fields["dlq_reason"], "entry_too_large");
        assert!(
            fields["dlq_detail"].contains("events.max_entry_bytes (65536)")
                && fields["dlq_detail"].contains("dead_letter.max_copy_bytes"),
            "{}",
            fields["dlq_detail"]
        );
        assert!(fields["customer_id"].starts_with('c'), "{fields:?}");
        let copied: usize = fields
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq_"))
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert!(copied <= 16 << 10, "{copied} bytes copied");
    }
    let metrics = daemon.get_text("/metrics").await.unwrap();
    assert_eq!(
        parse_metric(
            &metrics,
            "churnd_events_dead_lettered_total{reason=\"entry_too_large\"}"
        ),
        Some(600.0)
    );
    assert_eq!(
        parse_metric(&metrics, "churnd_source_inflight_bytes"),
        Some(0.0)
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_within_the_limit_are_applied_within_the_inflight_budget() {
    let redis = RedisServer::start();
    backlog(&redis, 1_000, 200_000).await;
    let daemon = DaemonProcess::spawn(&[
        ("CHURND__REDIS__URL", redis.url()),
        ("CHURND__SOURCE__MAX_INFLIGHT_BYTES", (8 * MB).to_string()),
        ("CHURND__EVENTS__MAX_ENTRY_BYTES", "300000".to_string()),
    ]);
    let peak = peak_rss_until_drained(&daemon, &redis).await;
    assert!(
        peak < 100 * MB,
        "applying 200 MB of large entries peaked at {} MB",
        peak / MB
    );
    let metrics = daemon.get_text("/metrics").await.unwrap();
    assert_eq!(
        parse_metric(
            &metrics,
            "churnd_events_total{outcome=\"applied\",type=\"purchase\"}"
        ),
        Some(1000.0)
    );
    wait_for(
        "the memory to come back",
        Duration::from_secs(30),
        || async { daemon.rss_bytes() < 60 * MB },
    )
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}
