//! Serving and observing replicas that own partitions (`partitions.ownership = leases`),
//! in-process against a real Redis: any replica answers for a customer of any partition
//! with the owner's answer, a request already passed on is never passed on again, the
//! owner's absence is told apart from its silence, `/readyz` follows the hand-overs, and
//! the per-partition lag is shown only by the partition's owner.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use churnd::config::{Interval, Ownership, Settings};
use churnd::ownership::{assign, MemberName};
use churnd::partition::PartitionCount;
use redis::aio::MultiplexedConnection;

use crate::helpers::*;

const P: u16 = 4;
const TOKEN: &str = "serving-test-token";
const GROUP: &str = "churnd";

fn count() -> PartitionCount {
    PartitionCount::new(P).unwrap()
}

/// Settings of replica `name`, on a port of its own that it advertises.
fn replica_settings(base: &Settings, name: &str) -> Settings {
    let mut s = base.clone();
    s.partitions.count = count();
    s.partitions.ownership = Ownership::Leases;
    // Well above the stalls of a busy 2-core machine (as the crash tests' replicas).
    s.partitions.lease = Interval::from_millis(5_000);
    s.source.consumer = name.to_string();
    s.http.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    s.partitions.advertise_url = Some(format!("http://{}", s.http.addr));
    s.http.customer_token = Some(TOKEN.into());
    s
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// GET `path` of `app` with the token (and `extra` headers).
async fn get(app: &App, path: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(app.url(path)).bearer_auth(TOKEN);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.expect("the replica answers HTTP")
}

/// Which replica holds partition `p`'s lease, by name.
async fn lease_holder(c: &mut MultiplexedConnection, p: u16) -> Option<String> {
    let token: Option<String> = redis::cmd("GET")
        .arg(format!("{GROUP}:lease:{{{p}}}"))
        .query_async(c)
        .await
        .unwrap();
    token.map(|t| t.rsplit_once('#').unwrap().0.to_string())
}

/// The partitions with a `churnd_partition_lag` series in `app`'s metrics.
async fn lag_series(app: &App) -> BTreeSet<u16> {
    app.metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("churnd_partition_lag{partition=\""))
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

/// The partitions of the streams with a `churnd_consumer_group_lag` series in `app`'s
/// metrics.
async fn group_lag_series(app: &App) -> BTreeSet<u16> {
    app.metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("churnd_consumer_group_lag{stream=\""))
        .filter_map(|rest| {
            let stream = rest.split('"').next()?;
            (0..P).find(|&p| count().stream("churn:events", p) == stream)
        })
        .collect()
}

async fn owned(app: &App) -> u16 {
    app.metric("churnd_partitions_owned").await.unwrap_or(0.0) as u16
}

async fn ready(app: &App) -> bool {
    app.get("/readyz").await.status() == 200
}

/// Waits until `apps` (named `names`) each own what rendezvous hashing assigns them among
/// themselves, and are all ready.
async fn settled(apps: &[&App], names: &[&str]) {
    let members: BTreeSet<MemberName> = names.iter().map(|n| MemberName::new(n).unwrap()).collect();
    wait_for(
        &format!("{names:?} to own their partitions and be ready"),
        Duration::from_secs(90),
        || {
            let members = &members;
            async move {
                for (app, name) in apps.iter().zip(names) {
                    let me = MemberName::new(name).unwrap();
                    let assigned = assign::owned_by(&me, members, count()).len() as u16;
                    if owned(app).await != assigned || !ready(app).await {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
}

/// A purchase of each customer, written to its partition's stream.
async fn one_purchase_each(c: &mut MultiplexedConnection, customers: &[String]) {
    for customer in customers {
        let stream = count().stream("churn:events", count().of(customer));
        xadd(c, &stream, &purchase(customer, 40.0, T0_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_for_every_partition_with_the_owners_answer() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let base = test_settings(&redis, dir.path());
    let mut c = redis.conn().await;
    let customers = one_customer_per_partition(count());
    one_purchase_each(&mut c, &customers).await;
    let names = ["replica-a", "replica-b", "replica-c"];
    let mut apps = Vec::new();
    for name in names {
        apps.push(App::spawn(replica_settings(&base, name)).await);
    }
    settled(&apps.iter().collect::<Vec<_>>(), &names).await;

    // Each replica answers for the customer of every partition, as the partition's owner
    // does; an answer names the replica whose engine gave it.
    for (p, customer) in customers.iter().enumerate() {
        let path = format!("/v1/customers/{customer}");
        wait_for(
            &format!("every replica to answer for {customer} (partition {p})"),
            Duration::from_secs(60),
            || {
                let (apps, path, mut c) = (&apps, path.clone(), c.clone());
                async move {
                    let Some(owner) = lease_holder(&mut c, p as u16).await else {
                        return false;
                    };
                    for app in apps {
                        let response = get(app, &path, &[]).await;
                        let served_by = response
                            .headers()
                            .get("x-churnd-served-by")
                            .map(|v| v.to_str().unwrap().to_string());
                        if response.status() != 200 || served_by.as_deref() != Some(&owner) {
                            return false;
                        }
                        let body: serde_json::Value = response.json().await.unwrap();
                        assert_eq!(body["customer_id"], customer.as_str());
                        assert_eq!(body["rfm"]["purchases"], 1);
                    }
                    true
                }
            },
        )
        .await;
    }
    let mut answered = 0.0;
    for app in &apps {
        answered += app
            .metric(r#"churnd_http_forwarded_requests_total{outcome="answered"}"#)
            .await
            .unwrap();
    }
    assert!(
        answered >= f64::from(P) * 2.0,
        "each customer passed on by the two replicas that do not own it: {answered}"
    );
    // The summary is the deployment's from every replica (each owner asked for its own
    // totals); asked as by another replica, a replica's own.
    for app in &apps {
        let body: serde_json::Value = get(app, "/v1/summary", &[]).await.json().await.unwrap();
        assert_eq!(body["complete"], true, "{body}");
        assert_eq!(body["customers"], P, "{body}");
        assert_eq!(body["partitions"], P, "{body}");
        let counted: BTreeSet<u64> = body["replicas"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|ps| ps.as_array().unwrap().iter().map(|p| p.as_u64().unwrap()))
            .collect();
        assert_eq!(counted, (0..u64::from(P)).collect(), "{body}");
        let own: serde_json::Value = get(app, "/v1/summary", &[("x-churnd-forwarded-by", "x")])
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(own["customers"], owned(app).await, "{own}");
    }
    // The token is checked before anything is passed on: without it, 401 from any replica.
    let status = client()
        .get(apps[0].url(&format!("/v1/customers/{}", customers[0])))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // An unknown customer is the owner's 404, passed back.
    let unknown = (0..)
        .map(|i| format!("nobody-{i}"))
        .find(|id| count().of(id) == count().of(&customers[0]))
        .unwrap();
    for app in &apps {
        assert_eq!(
            get(app, &format!("/v1/customers/{unknown}"), &[])
                .await
                .status(),
            404
        );
    }

    // A request already passed on, to a replica that does not own the partition, is
    // refused rather than passed on again.
    let (p, owner) = (0u16, lease_holder(&mut c, 0).await.unwrap());
    let stranger = apps
        .iter()
        .zip(names)
        .find(|(_, name)| *name != owner)
        .unwrap()
        .0;
    let response = get(
        stranger,
        &format!("/v1/customers/{}", customers[usize::from(p)]),
        &[("x-churnd-forwarded-by", "replica-x")],
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("partition 0 is not served by replica") && text.contains("replica-x"),
        "{text}"
    );
    assert_eq!(
        stranger
            .metric(r#"churnd_http_forwarded_requests_total{outcome="loop_refused"}"#)
            .await,
        Some(1.0)
    );

    // The per-partition lag and the group's lag per stream: each replica shows the
    // partitions it owns, and only those; and the partition count.
    wait_for(
        "each replica's lag series to be its own partitions",
        Duration::from_secs(30),
        || {
            let (apps, mut c) = (&apps, c.clone());
            async move {
                let mut holders = Vec::new();
                for p in 0..P {
                    holders.push(lease_holder(&mut c, p).await);
                }
                for (app, name) in apps.iter().zip(names) {
                    let mine: BTreeSet<u16> = (0..P)
                        .filter(|&p| holders[usize::from(p)].as_deref() == Some(name))
                        .collect();
                    if lag_series(app).await != mine || group_lag_series(app).await != mine {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert_eq!(
        apps[0].metric("churnd_partitions").await,
        Some(f64::from(P))
    );

    // The owner unreachable: its published address leads nowhere (rewritten by its next
    // heartbeat, so tried until a request falls before that).
    let dead = format!("http://127.0.0.1:{}", free_port());
    wait_for("a 502 naming the owner", Duration::from_secs(30), || {
        let (mut c, dead, owner, path) = (
            c.clone(),
            dead.clone(),
            owner.clone(),
            format!("/v1/customers/{}", customers[0]),
        );
        async move {
            let _: () = redis::cmd("HSET")
                .arg(format!("{GROUP}:addresses"))
                .arg(&owner)
                .arg(&dead)
                .query_async(&mut c)
                .await
                .unwrap();
            let response = get(stranger, &path, &[]).await;
            if response.status() != 502 {
                return false;
            }
            let text = response.text().await.unwrap();
            assert!(
                text.contains(&format!("owned by replica {owner} at {dead}")),
                "{text}"
            );
            true
        }
    })
    .await;

    // No owner: the lease gone (as between a release and the next owner's take).
    wait_for(
        "a 503 for a partition without owner",
        Duration::from_secs(30),
        || {
            let (mut c, path) = (c.clone(), format!("/v1/customers/{}", customers[0]));
            async move {
                let _: () = redis::cmd("DEL")
                    .arg(format!("{GROUP}:lease:{{0}}"))
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let response = get(stranger, &path, &[]).await;
                if response.status() != 503 {
                    return false;
                }
                assert_eq!(response.headers()["retry-after"], "1");
                let text = response.text().await.unwrap();
                assert!(
                    text.contains("partition 0 has no owner right now"),
                    "{text}"
                );
                true
            }
        },
    )
    .await;
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_replica_through_a_hand_over() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let base = test_settings(&redis, dir.path());
    let mut c = redis.conn().await;
    // Enough customers that restoring and handing over take a moment.
    let customers: Vec<String> = (0..20_000).map(|i| format!("c{i}")).collect();
    one_purchase_each(&mut c, &customers).await;
    let a = App::spawn(replica_settings(&base, "replica-a")).await;
    settled(&[&a], &["replica-a"]).await;
    assert_eq!(owned(&a).await, P);
    wait_for(
        "the lag of every partition",
        Duration::from_secs(30),
        || async { lag_series(&a).await == (0..P).collect() },
    )
    .await;

    // A second replica joins: partitions move, and while they do the replicas say why
    // they are not ready.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    // A name that rendezvous hashing gives some of the partitions, not all.
    let b_name = (0..)
        .map(|i| format!("replica-b{i}"))
        .find(|b| {
            let members: BTreeSet<MemberName> = ["replica-a", b.as_str()]
                .iter()
                .map(|n| MemberName::new(n).unwrap())
                .collect();
            (1..P).contains(
                &(assign::owned_by(&MemberName::new(b).unwrap(), &members, count()).len() as u16),
            )
        })
        .unwrap();
    let b_settings = replica_settings(&base, &b_name);
    let b_url = format!("http://{}/readyz", b_settings.http.addr);
    let watcher = {
        let (seen, stop, a_url) = (seen.clone(), stop.clone(), a.url("/readyz"));
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for url in [&a_url, &b_url] {
                    if let Ok(r) = client().get(url).send().await {
                        if r.status() == 503 {
                            let body: serde_json::Value = r.json().await.unwrap();
                            for reason in body["reasons"].as_array().unwrap() {
                                seen.lock()
                                    .unwrap()
                                    .insert(reason.as_str().unwrap().to_string());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let b = App::spawn(b_settings).await;
    settled(&[&a, &b], &["replica-a", &b_name]).await;
    stop.cancel();
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("restoring partitions ")
                || r.starts_with("handing over partitions ")),
        "reasons seen during the hand-over: {seen:?}"
    );
    let (na, nb) = (owned(&a).await, owned(&b).await);
    assert!(
        na > 0 && nb > 0 && na + nb == P,
        "{na} + {nb}: each owns some"
    );
    // The lag series moved with the partitions.
    wait_for(
        "the lag series to follow",
        Duration::from_secs(30),
        || async {
            let (la, lb) = (lag_series(&a).await, lag_series(&b).await);
            la.len() == usize::from(na) && lb.len() == usize::from(nb) && la.is_disjoint(&lb)
        },
    )
    .await;
    b.stop().await;
    a.stop().await;
}
