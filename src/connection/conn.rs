//! One connection type for both `redis.mode`s: a multiplexed connection to one server, or
//! the redis crate's cluster connection (which reads the slot map from a seed node, routes
//! each command to the primary of its key's slot, follows MOVED and ASK, and finds the new
//! primary after a failover). Both speak [`ConnectionLike`], so every command, script and
//! pipeline of churnd runs on either.
//!
//! What differs in a cluster is that one command, script call or pipeline reaches one node:
//! a command's keys must share a slot (churnd's do: a script call names one stream and its
//! guards, all under the stream's hash tag), and a pipeline whose commands name keys of
//! several slots is split here into one pipeline per slot, sent at once, their replies put
//! back in the pipeline's order ([`RedisConn::req_packed_commands`]). A transaction
//! (MULTI/EXEC) is never split: it must name keys of one slot. Reads over streams of
//! several slots (XREADGROUP) are split by their caller ([`slot_groups`]).

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, Slot};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

/// The client the `[redis]` settings describe ([`super::client`]). Built once at start and
/// cloned into each connector: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum RedisClient {
    /// `redis.mode = "standalone"`: one server.
    Standalone(redis::Client),
    /// `redis.mode = "cluster"`: `redis.url` is a seed node.
    Cluster(ClusterSeeds),
}

/// How to reach a cluster: `redis.url`'s node and the TLS certificates, from which a client
/// is made at each connection, seeded with that node and every node learnt from the cluster
/// before ([`cluster_nodes`]). A connection made from the seed alone could not be made while
/// that node is down, and the node that died may well be the seed.
#[derive(Clone)]
pub struct ClusterSeeds {
    seed: ConnectionInfo,
    certificates: Option<TlsCertificates>,
}

impl ClusterSeeds {
    /// Checks that a client can be made of these (the URL's kind, its TLS settings).
    pub(crate) fn new(
        seed: ConnectionInfo,
        certificates: Option<TlsCertificates>,
    ) -> RedisResult<Self> {
        let seeds = Self { seed, certificates };
        seeds.client(&[])?;
        Ok(seeds)
    }

    /// A client seeded with the URL's node, then `nodes`; the URL's password, user name and
    /// TLS settings serve for every node.
    fn client(&self, nodes: &[(String, u16)]) -> RedisResult<ClusterClient> {
        let mut seeds = vec![self.seed.clone()];
        // The URL's node is usually among those learnt: named once, it is tried (and a
        // failure logged) once per connection.
        let url_node = match self.seed.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        };
        for (host, port) in nodes.iter().filter(|node| Some(*node) != url_node.as_ref()) {
            let addr = match self.seed.addr().clone() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure,
                    tls_params,
                },
                _ => ConnectionAddr::Tcp(host.clone(), *port),
            };
            seeds.push(self.seed.clone().set_addr(addr));
        }
        let mut builder = ClusterClientBuilder::new(seeds);
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        builder.build()
    }
}

/// Names the mode only: the clients hold the password.
impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Standalone(_) => "RedisClient::Standalone",
            Self::Cluster(_) => "RedisClient::Cluster",
        })
    }
}

impl RedisClient {
    /// One connection for a tool (the demo), with waits long enough for a busy machine: the
    /// library's default response timeout (500 ms) failed the demo's pipelined loads and
    /// stream pages on a loaded 2-core machine, and a tool has no reconnect loop to recover.
    /// The daemon's tasks connect through [`super::Connector`] with their own timeouts.
    pub async fn connection(&self) -> RedisResult<RedisConn> {
        const CONNECT: std::time::Duration = std::time::Duration::from_secs(10);
        const RESPONSE: std::time::Duration = std::time::Duration::from_secs(60);
        self.connection_with(CONNECT, RESPONSE, &[]).await
    }

    /// One connection with these timeouts: `response` bounds each command (in a cluster, a
    /// command with its redirections and retries). In a cluster, `nodes` are seeds beside
    /// the URL's.
    pub(crate) async fn connection_with(
        &self,
        connect: std::time::Duration,
        response: std::time::Duration,
        nodes: &[(String, u16)],
    ) -> RedisResult<RedisConn> {
        match self {
            Self::Standalone(c) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(response));
                c.get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(RedisConn::Standalone)
            }
            Self::Cluster(c) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                c.client(nodes)?
                    .get_async_connection_with_config(config)
                    .await
                    .map(RedisConn::Cluster)
            }
        }
    }
}

/// A connection to Redis in either mode. Cheap to clone (both kinds are handles to one
/// multiplexed connection, or one set of them).
#[derive(Clone)]
pub enum RedisConn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// `cmd`'s reply from every primary, each with the node's address (on a single Redis,
    /// its one reply with an empty address). For what each node decides for itself, such
    /// as its persistence settings, where the crate would ask one node at random. A node's
    /// error reply is its reply; a node that cannot be reached fails the whole.
    pub async fn on_every_primary(&mut self, cmd: &Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            Self::Standalone(c) => Ok(vec![(String::new(), cmd.query_async(c).await?)]),
            Self::Cluster(c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match c.route_command(cmd.clone(), all).await? {
                    Value::Map(replies) => Ok(replies
                        .into_iter()
                        .map(|(node, reply)| match node {
                            Value::BulkString(b) => {
                                (String::from_utf8_lossy(&b).into_owned(), reply)
                            }
                            other => (format!("{other:?}"), reply),
                        })
                        .collect()),
                    other => Ok(vec![(String::new(), other)]),
                }
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => {
                // A transaction (its replies past MULTI and the queued ones) goes whole.
                let whole = offset != 0 || count != pipeline.len();
                match per_slot(pipeline) {
                    Some(parts) if !whole => Box::pin(split(c.clone(), parts, count)),
                    _ => c.req_packed_commands(pipeline, offset, count),
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The slot of a command's first key; `None` for a command without keys. (The crate's own
/// routing does this for every command but keeps it to itself; this knows the shapes of
/// the commands churnd pipelines, and takes the first argument as the key otherwise.)
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(a) => a,
            _ => b"0",
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)?
        }
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2)?,
        b"PING" | b"ECHO" | b"INFO" | b"SCRIPT" | b"CONFIG" | b"CLUSTER" | b"CLIENT" | b"TIME"
        | b"MULTI" | b"EXEC" | b"DISCARD" | b"FLUSHALL" | b"FLUSHDB" | b"DBSIZE" | b"SCAN"
        | b"KEYS" | b"RANDOMKEY" | b"WAIT" | b"SELECT" | b"AUTH" | b"HELLO" | b"READONLY"
        | b"READWRITE" | b"FUNCTION" | b"COMMAND" | b"SLOWLOG" | b"LATENCY" => return None,
        _ => args.get(1)?,
    };
    Some(Slot::for_key(key))
}

/// The pipeline's commands grouped by slot, in order within each group, when they name keys
/// of more than one slot (commands without a key go with the first group); `None` when one
/// pipeline serves.
fn per_slot(pipeline: &Pipeline) -> Option<Vec<(Vec<usize>, Pipeline)>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut keyless = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        match slot_of(cmd) {
            Some(slot) => {
                let g = *index.entry(slot).or_insert_with(|| {
                    groups.push((slot, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(i);
            }
            None => keyless.push(i),
        }
    }
    if groups.len() < 2 {
        return None;
    }
    groups[0].1.extend(keyless);
    groups[0].1.sort_unstable();
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    Some(
        groups
            .into_iter()
            .map(|(_, members)| {
                let mut p = redis::pipe();
                for &i in &members {
                    p.add_command(cmds[i].clone());
                }
                (members, p)
            })
            .collect(),
    )
}

/// Sends each slot's pipeline at once and puts the replies back in the original order.
/// One part that fails fails the whole (as one pipeline's connection failing would): the
/// caller sends it again, and churnd's writes are safe to repeat.
async fn split(
    conn: ClusterConnection,
    parts: Vec<(Vec<usize>, Pipeline)>,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let mut sent = tokio::task::JoinSet::new();
    for (part, (_, p)) in parts.iter().enumerate() {
        let (mut c, p) = (conn.clone(), p.clone());
        sent.spawn(async move { (part, c.req_packed_commands(&p, 0, p.len()).await) });
    }
    let mut out = vec![Value::Nil; count];
    while let Some(done) = sent.join_next().await {
        let (part, values) = done.map_err(|e| {
            redis::RedisError::from(std::io::Error::other(format!(
                "a pipeline part failed: {e}"
            )))
        })?;
        for (&i, v) in parts[part].0.iter().zip(values?) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// Every node the cluster's slot map names, primaries and replicas (`CLUSTER SLOTS`), as
/// (host, port): seeds for the next connection.
pub async fn cluster_nodes(c: &mut RedisConn) -> RedisResult<Vec<(String, u16)>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    Ok(slot_map_nodes(&reply))
}

/// The (host, port) of every node in a `CLUSTER SLOTS` reply, each once, in order: each
/// range is `[start, end, [host, port, id, …], …]`. A node without a host (announced as
/// "" or "?") is left out.
fn slot_map_nodes(reply: &Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut nodes: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        for node in parts.iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let host = match fields.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = fields.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if host.is_empty() || host == "?" || nodes.iter().any(|n| *n == (host.clone(), port)) {
                continue;
            }
            nodes.push((host, port));
        }
    }
    nodes
}

/// The streams' indices grouped by Redis Cluster slot, in order of first appearance: the
/// streams of one group can be read in one XREADGROUP on a cluster.
pub fn slot_groups<S: AsRef<str>>(streams: &[S]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let slot = Slot::for_key(s.as_ref());
        match groups.iter_mut().find(|(g, _)| *g == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_grouped_by_their_hash_tag() {
        let partitions: Vec<String> = (0..4).map(|p| format!("churn:events:{{{p}}}")).collect();
        assert_eq!(slot_groups(&partitions), [[0], [1], [2], [3]]);
        assert_eq!(
            slot_groups(&["a{x}", "b", "c{x}"]),
            vec![vec![0, 2], vec![1]]
        );
    }

    #[test]
    fn the_slot_map_names_each_node_once() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(5470),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5471),
                Value::Int(16383),
                node("", 7001),
                node("10.0.0.2", 7001),
            ]),
        ]);
        assert_eq!(
            slot_map_nodes(&reply),
            [
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.4".to_string(), 7003),
                ("10.0.0.2".to_string(), 7001)
            ]
        );
        assert!(slot_map_nodes(&Value::Nil).is_empty());
    }

    #[test]
    fn a_pipeline_of_several_slots_is_split_in_order() {
        let mut p = redis::pipe();
        p.cmd("XACK").arg("churn:events:{0}").arg("g").arg("1-0");
        p.cmd("PING");
        p.cmd("XACK").arg("churn:events:{1}").arg("g").arg("1-0");
        p.cmd("XADD")
            .arg("churn:winback")
            .arg("*")
            .arg("f")
            .arg("v");
        p.cmd("XACK").arg("churn:events:{0}").arg("g").arg("2-0");
        let parts = per_slot(&p).expect("two slots");
        let members: Vec<&Vec<usize>> = parts.iter().map(|(m, _)| m).collect();
        assert_eq!(members, [&vec![0, 1, 4], &vec![2], &vec![3]]);
        let mut one = redis::pipe();
        one.cmd("XACK").arg("s{t}").arg("g").arg("1-0");
        one.cmd("XADD")
            .arg("{t}:dedup:1")
            .arg("*")
            .arg("f")
            .arg("v");
        assert!(per_slot(&one).is_none());
    }
}
