//! The output streams' backlog as the daemon's lag monitor samples it from a real Redis: the
//! length and cap of every output stream, what a consumer group of the tasks' consumers has
//! not read, and the tasks `MAXLEN ~` trimmed before it read them.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::helpers::*;

const WINBACK: &str = "churn:winback";
const GROUP: &str = "crm";
const CAP: u64 = 20;

/// Appends `n` tasks the way the sink does, with the stream's approximate cap.
async fn add_tasks(c: &mut MultiplexedConnection, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(WINBACK)
            .arg("MAXLEN")
            .arg("~")
            .arg(CAP)
            .arg("*")
            .arg("task_id")
            .arg(i)
            .ignore();
    }
    pipe.query_async::<()>(c).await.unwrap();
}

/// The group reads `count` entries (all that are new, at most).
async fn read(c: &mut MultiplexedConnection, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("consumer-1")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(WINBACK)
        .arg(">")
        .query_async(c)
        .await
        .unwrap();
}

async fn xinfo_stream(c: &mut MultiplexedConnection, field: &str) -> i64 {
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(WINBACK)
        .query_async(c)
        .await
        .unwrap();
    let redis::Value::Array(flat) = info else {
        panic!("XINFO STREAM: {info:?}")
    };
    flat.chunks_exact(2)
        .find_map(|pair| match (&pair[0], &pair[1]) {
            (redis::Value::BulkString(k), redis::Value::Int(v)) if k == field.as_bytes() => {
                Some(*v)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {field} in XINFO STREAM"))
}

fn series(name: &str, group: bool) -> String {
    if group {
        format!("{name}{{group=\"{GROUP}\",stream=\"{WINBACK}\"}}")
    } else {
        format!("{name}{{stream=\"{WINBACK}\"}}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_trimmed_before_their_consumer_group_read_them_are_counted() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    // Stream nodes of 5 entries: MAXLEN ~ 20 then trims in fives, close to the cap.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(5)
        .query_async(&mut c)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.winback.max_len = std::num::NonZeroU64::new(CAP).unwrap();
    let app = App::spawn(settings).await;
    let within = Duration::from_secs(30);

    // Every output stream is there from the start, with its cap, before it exists in Redis.
    wait_for("the first sample", within, || {
        let app = &app;
        async move {
            app.metric("churnd_output_stream_length{stream=\"churn:events:dlq\"}")
                .await
                == Some(0.0)
        }
    })
    .await;
    let text = app.metrics().await;
    for (stream, cap) in [
        (WINBACK, CAP),
        ("churn:winback:control", CAP),
        ("crm:tasks", 1_000_000),
        ("churn:events:dlq", 1_000_000),
    ] {
        let cap_series = format!("churnd_output_stream_max_length{{stream=\"{stream}\"}}");
        assert_eq!(
            parse_metric(&text, &cap_series),
            Some(cap as f64),
            "{cap_series}"
        );
    }

    // The consumers' group reads 3 of the first 10 tasks.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(WINBACK)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    add_tasks(&mut c, 10).await;
    read(&mut c, 3).await;
    wait_for("7 unread of 10", within, || {
        let app = &app;
        async move {
            let text = app.metrics().await;
            parse_metric(&text, &series("churnd_output_stream_group_unread", true)) == Some(7.0)
                && parse_metric(&text, &series("churnd_output_stream_length", false)) == Some(10.0)
        }
    })
    .await;
    assert_eq!(
        app.metric(&series(
            "churnd_output_stream_group_trimmed_unread_total",
            true
        ))
        .await,
        Some(0.0)
    );

    // 100 more: the cap trims the oldest, 7 of the first 10 among them, before the group
    // reads them.
    add_tasks(&mut c, 100).await;
    let length = xinfo_stream(&mut c, "length").await;
    assert_eq!(xinfo_stream(&mut c, "entries-added").await, 110);
    assert!(length < 110 - 3, "nothing trimmed: {length}");
    let lost = 110 - length - 3;
    wait_for("the trimmed tasks to be counted", within, || {
        let app = &app;
        async move {
            app.metric(&series(
                "churnd_output_stream_group_trimmed_unread_total",
                true,
            ))
            .await
                == Some(lost as f64)
        }
    })
    .await;
    let text = app.metrics().await;
    assert_eq!(
        parse_metric(&text, &series("churnd_output_stream_group_unread", true)),
        Some(length as f64),
        "everything left is unread"
    );
    assert_eq!(
        parse_metric(&text, &series("churnd_output_stream_length", false)),
        Some(length as f64)
    );
    assert_eq!(
        parse_metric(
            &text,
            &series("churnd_output_stream_removed_entries", false)
        ),
        Some((110 - length) as f64)
    );

    // The group catches up: nothing unread, nothing more lost.
    read(&mut c, 1000).await;
    wait_for("the group to have read everything", within, || {
        let app = &app;
        async move {
            app.metric(&series("churnd_output_stream_group_unread", true))
                .await
                == Some(0.0)
        }
    })
    .await;
    assert_eq!(
        app.metric(&series(
            "churnd_output_stream_group_trimmed_unread_total",
            true
        ))
        .await,
        Some(lost as f64)
    );

    // A group that is gone takes its series with it.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(WINBACK)
        .arg(GROUP)
        .query_async(&mut c)
        .await
        .unwrap();
    wait_for("the group's series to go", within, || {
        let app = &app;
        async move { !app.metrics().await.contains("group=\"crm\"") }
    })
    .await;
    app.stop().await;
}
