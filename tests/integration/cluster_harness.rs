//! A real Redis Cluster for tests: primaries, optionally with replicas, on free ports, from
//! the same `redis-server` binary, made with `redis-cli --cluster create`; and what tests do
//! to one: move a slot, fail a primary over, kill one.

use std::process::{Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::helpers::{cluster_info, wait_for, RedisServer, ServerOptions};

/// A Redis Cluster on free ports; every node is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `n` primaries, no replicas.
    pub async fn start(n: usize) -> Self {
        Self::create(n, 0, None).await
    }

    /// `primaries` primaries with one replica each; `node_timeout_ms` is
    /// `cluster-node-timeout`, how long a primary may not answer before its replica takes
    /// over (Redis' default, 15 s, when `None`).
    pub async fn start_with_replicas(primaries: usize, node_timeout_ms: Option<u64>) -> Self {
        let cluster = Self::create(primaries * 2, 1, node_timeout_ms).await;
        // Replicas connected and synchronised, so a failover has someone to hand over to.
        for i in 0..cluster.nodes.len() {
            let c = cluster.nodes[i].conn().await;
            wait_for(
                "the replicas to be in sync",
                Duration::from_secs(30),
                || {
                    let mut c = c.clone();
                    async move {
                        match role(&mut c).await {
                            Some(Role::Replica { state, .. }) => state == "connected",
                            Some(Role::Primary { replicas }) => replicas > 0,
                            None => false,
                        }
                    }
                },
            )
            .await;
        }
        cluster
    }

    async fn create(n: usize, replicas: usize, node_timeout_ms: Option<u64>) -> Self {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(ServerOptions {
                    cluster: true,
                    cluster_node_timeout_ms: node_timeout_ms,
                    ..ServerOptions::default()
                })
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        // Every node must know every other and the whole slot map before clients come.
        for node in &cluster.nodes {
            let c = node.conn().await;
            wait_for("the cluster to be up", Duration::from_secs(20), || {
                let mut c = c.clone();
                async move {
                    let info = cluster_info(&mut c).await;
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{n}\r"))
                }
            })
            .await;
        }
        cluster
    }

    /// A cluster connection with a generous response timeout, seeded with every node that
    /// runs (it outlives any one of them).
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.url());
        redis::cluster::ClusterClientBuilder::new(seeds)
            .response_timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get_async_connection()
            .await
            .expect("a connection to the test cluster")
    }

    /// The node serving `key`'s slot: the one that answers for it rather than redirecting.
    pub async fn owner_of(&self, key: &str) -> usize {
        self.try_owner_of(key)
            .await
            .unwrap_or_else(|| panic!("no node serves {key}"))
    }

    /// The running node that answers for `key`'s slot, if one does.
    async fn try_owner_of(&self, key: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(mut c) = try_conn(node).await else {
                continue;
            };
            let reply: Result<i64, _> = redis::cmd("EXISTS").arg(key).query_async(&mut c).await;
            if reply.is_ok() {
                return Some(i);
            }
        }
        None
    }

    /// The replica of primary `primary` (connected to it).
    pub async fn replica_of(&self, primary: usize) -> usize {
        let port = self.nodes[primary].port;
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(mut c) = try_conn(node).await else {
                continue;
            };
            if let Some(Role::Replica { primary_port, .. }) = role(&mut c).await {
                if primary_port == port {
                    return i;
                }
            }
        }
        panic!("primary {primary} (port {port}) has no replica");
    }

    /// Fails the primary serving `key`'s slot over to its replica with `CLUSTER FAILOVER`,
    /// the coordinated kind: the primary stops taking writes, the replica catches up with
    /// it, then takes over, so no acknowledged write is lost. Returns at once with the
    /// replica that will take over: wait for it with [`Self::wait_failed_over`].
    pub async fn begin_fail_over(&self, key: &str) -> usize {
        let from = self.owner_of(key).await;
        let to = self.replica_of(from).await;
        self.send_failover(to).await;
        to
    }

    /// Waits until the failover begun with [`Self::begin_fail_over`] to `to` is done,
    /// asking again every 10 s: a replica gives up a manual failover it cannot finish within
    /// 5 s (not yet caught up on a busy machine).
    pub async fn wait_failed_over(&self, key: &str, to: usize) {
        for _ in 0..5 {
            if self
                .taken_over_within(key, to, Duration::from_secs(10))
                .await
            {
                return;
            }
            self.send_failover(to).await;
        }
        panic!("node {to} did not take over {key}'s slot");
    }

    async fn send_failover(&self, replica: usize) {
        let mut c = self.nodes[replica].conn().await;
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async::<()>(&mut c)
            .await
            .expect("CLUSTER FAILOVER is accepted by a replica");
    }

    /// Kills the primary serving `key`'s slot (SIGKILL, no goodbye), and waits until the
    /// cluster has promoted its replica, after `cluster-node-timeout`. Writes the primary
    /// acknowledged but had not yet sent to its replica are lost: replication is
    /// asynchronous. Returns (the node killed, the new primary).
    pub async fn kill_primary_of(&mut self, key: &str) -> (usize, usize) {
        let from = self.owner_of(key).await;
        let to = self.replica_of(from).await;
        self.nodes[from].stop();
        self.wait_taken_over(key, to).await;
        (from, to)
    }

    /// Waits until node `to` serves `key`'s slot as a primary and every running node sees
    /// the cluster ok.
    pub async fn wait_taken_over(&self, key: &str, to: usize) {
        assert!(
            self.taken_over_within(key, to, Duration::from_secs(60))
                .await,
            "node {to} did not take over {key}'s slot"
        );
    }

    async fn taken_over_within(&self, key: &str, to: usize, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.taken_over(key, to).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn taken_over(&self, key: &str, to: usize) -> bool {
        if self.try_owner_of(key).await != Some(to) {
            return false;
        }
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Some(mut c) = try_conn(node).await else {
                return false;
            };
            if !cluster_info(&mut c).await.contains("cluster_state:ok") {
                return false;
            }
        }
        true
    }

    /// Moves `key`'s slot, with its keys, from the node serving it to node `to`, the way
    /// `redis-cli --cluster reshard` does: importing/migrating, MIGRATE, then the new owner
    /// told to every node. Clients with the old slot map get MOVED from then on.
    pub async fn migrate_slot_of(&self, key: &str, to: usize) {
        let from = self.owner_of(key).await;
        assert_ne!(from, to, "{key} is on node {to} already");
        let (mut src, mut dst) = (self.nodes[from].conn().await, self.nodes[to].conn().await);
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut src)
            .await
            .unwrap();
        let id = |c: &mut MultiplexedConnection| {
            let mut c = c.clone();
            async move {
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async::<String>(&mut c)
                    .await
                    .unwrap()
            }
        };
        let (src_id, dst_id) = (id(&mut src).await, id(&mut dst).await);
        let setslot = |c: &mut MultiplexedConnection, how: &'static str, node: String| {
            let mut c = c.clone();
            async move {
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(how)
                    .arg(node)
                    .query_async::<()>(&mut c)
                    .await
                    .unwrap()
            }
        };
        setslot(&mut dst, "IMPORTING", src_id).await;
        setslot(&mut src, "MIGRATING", dst_id.clone()).await;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut src)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(keys)
                .query_async::<()>(&mut src)
                .await
                .unwrap();
        }
        setslot(&mut dst, "NODE", dst_id.clone()).await;
        setslot(&mut src, "NODE", dst_id.clone()).await;
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to {
                setslot(&mut node.conn().await, "NODE", dst_id.clone()).await;
            }
        }
        assert_eq!(self.owner_of(key).await, to);
    }
}

/// What `ROLE` says of a node.
enum Role {
    Primary { replicas: usize },
    Replica { primary_port: u16, state: String },
}

async fn role(c: &mut MultiplexedConnection) -> Option<Role> {
    let reply: Value = redis::cmd("ROLE").query_async(c).await.ok()?;
    let Value::Array(items) = reply else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    match text(items.first()?)?.as_str() {
        "master" => match items.get(2)? {
            Value::Array(replicas) => Some(Role::Primary {
                replicas: replicas.len(),
            }),
            _ => None,
        },
        "slave" => Some(Role::Replica {
            primary_port: text(items.get(2)?)?.parse().ok()?,
            state: text(items.get(3)?)?,
        }),
        _ => None,
    }
}

/// A connection to a node that may be down: `None` rather than a wait.
async fn try_conn(node: &RedisServer) -> Option<MultiplexedConnection> {
    if !node.is_running() {
        return None;
    }
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    node.client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}
