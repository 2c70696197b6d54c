//! The HTTP server: an accept loop of its own, since `axum::serve` bounds neither the
//! connections it holds nor how long they may take. At most `http.max_connections` are
//! open at once; each is closed when it overstays what it is doing (see `connection.rs`).
//!
//! At the limit, a new connection takes the place of the one that has waited longest for a
//! request (idle between requests, or still sending its head), as nginx does with idle
//! keep-alive connections when it runs out. A crowd of idle or slow clients therefore keeps
//! neither probes nor scrapes out, and holds no descriptor beyond the limit. When every
//! connection is in the middle of a request, none is closed: the new connection waits for
//! the first response to be done (the request timeout bounds that), and the listener waits
//! with it, so later clients wait in the kernel's listen backlog, holding no descriptor of
//! churnd's. The alternatives do worse for probes: accepting and closing at once fails
//! them immediately, and leaving every newcomer in the backlog makes them wait until an
//! idle client's timeout ends.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::connection::{self, Activity, Clock, Shared, Timeouts, Tracked};
use crate::config::HttpSettings;
use crate::metrics::HttpMetrics;

/// File descriptors kept for everything but HTTP connections: the Redis connections
/// (source, sink, monitor), a snapshot being written and its directory, the model file, the
/// listener, a connection accepted while it waits for a place, and the runtime's own.
/// About twenty are in use at most; the rest is a margin.
pub(crate) const RESERVED_DESCRIPTORS: u64 = 64;

/// How often a new connection waiting for a place looks again for one to close, while
/// every connection is in the middle of a request.
const EVICT_RETRY: Duration = Duration::from_millis(50);

/// The pause after a failed accept, doubled while failures follow one another up to
/// [`MAX_PAUSE`]: a full descriptor table leaves the connection in the backlog, and
/// accepting again at once would spin.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Accept failures are logged at most this often (with how many were not).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's bounds, from the `http.*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub timeouts: Timeouts,
}

impl From<&HttpSettings> for Limits {
    fn from(s: &HttpSettings) -> Self {
        Self {
            max_connections: s.max_connections.get(),
            timeouts: Timeouts {
                header: s.header_timeout.as_millis(),
                idle: s.idle_timeout.as_millis(),
                request: s.request_timeout.as_millis(),
            },
        }
    }
}

/// Why `max_connections` does not fit under the process's open-file limit, if it does not:
/// at start, so that an HTTP crowd can never take the descriptors snapshots and Redis need.
/// A value that does not fit is refused rather than lowered, so that the limit in force is
/// the one configured.
pub(crate) fn descriptor_problem(max_connections: u32) -> Option<String> {
    budget_problem(max_connections, open_file_limit()?)
}

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited or unknown.
pub(crate) fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives through the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let soft: u64 = limit.rlim_cur;
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft)
}

fn budget_problem(max_connections: u32, open_files: u64) -> Option<String> {
    let max = u64::from(max_connections);
    if max.saturating_add(RESERVED_DESCRIPTORS) <= open_files {
        return None;
    }
    let what = format!(
        "http.max_connections ({max}) does not fit the open-file limit (ulimit -n) of {open_files}: \
         churnd keeps {RESERVED_DESCRIPTORS} file descriptors for Redis connections, snapshot \
         files and the listener"
    );
    let raise = "raise the limit (LimitNOFILE= in systemd, --ulimit nofile= in Docker)";
    Some(match open_files.checked_sub(RESERVED_DESCRIPTORS) {
        Some(room) if room > 0 => format!("{what}; set it to at most {room}, or {raise}"),
        _ => format!("{what}, which leaves none for HTTP; {raise}"),
    })
}

/// Serves `router` on `listener` until `stop` is cancelled, then closes the connections
/// waiting for a request, lets those in the middle of one finish, and returns once all are
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let max = limits.max_connections.max(1);
    metrics.connections_max.set(i64::from(max));
    let server = Arc::new(Server {
        shared: Shared {
            router,
            timeouts: limits.timeouts,
            clock: Clock::start(),
            stop: stop.clone(),
        },
        metrics,
        places: Arc::new(Semaphore::new(max as usize)),
        open: Mutex::new(Open::default()),
    });
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                errors.succeeded();
                stream
            }
            Err(e) => {
                let Some(after) = errors.failed(e.kind(), Instant::now()) else {
                    continue;
                };
                server.metrics.accept_errors.inc();
                if let Some(not_logged) = after.log {
                    tracing::error!(
                        error = %e,
                        pause = ?after.pause,
                        failures_not_logged = not_logged,
                        "cannot accept HTTP connections; pausing the listener"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(after.pause) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let Some(permit) = server.place().await else {
            break;
        };
        // A response may go out in more than one write (head, body chunks); Nagle's
        // algorithm would hold a later one until the client acknowledges the earlier, which
        // delayed acknowledgements stretch to tens of milliseconds.
        let _ = stream.set_nodelay(true);
        let (tracked, place) = server.register(permit);
        tokio::spawn(run_connection(server.clone(), stream, tracked, place));
    }
    drop(listener);
    // Every connection holds a place until it is closed.
    let _ = server.places.acquire_many(max).await;
}

struct Server {
    shared: Shared,
    metrics: HttpMetrics,
    /// One permit per connection that may be open.
    places: Arc<Semaphore>,
    /// The open connections, to choose one to close at the limit. A std mutex: never held
    /// across an await, taken twice per connection and once per eviction.
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By ID, which follows the order of acceptance.
    connections: BTreeMap<u64, Arc<Tracked>>,
}

impl Server {
    /// A place for a new connection: a free one; else that of the connection that has
    /// waited longest for a request, asked to close; else, every connection being in a
    /// request, the first one freed. `None` if the server stops meanwhile.
    async fn place(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Some(permit);
        }
        let mut evicted = self.evict_longest_waiting();
        if !evicted {
            self.metrics.connections_waited.inc();
            tracing::debug!("every HTTP connection is in a request: the new one waits");
        }
        loop {
            tokio::select! {
                permit = self.places.clone().acquire_owned() => return permit.ok(),
                () = tokio::time::sleep(EVICT_RETRY), if !evicted => {
                    evicted = self.evict_longest_waiting();
                }
                () = self.shared.stop.cancelled() => return None,
            }
        }
    }

    /// Asks the connection that has waited longest for a request to close; false if every
    /// connection is in a request (or already asked).
    fn evict_longest_waiting(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = longest_waiting(
            open.connections
                .iter()
                .filter(|(_, c)| !c.evict.is_cancelled())
                .map(|(&id, c)| (id, c.activity.waiting_since())),
        );
        match victim.and_then(|id| open.connections.get(&id)) {
            Some(connection) => {
                connection.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Records a new connection as open until its [`Place`] is dropped.
    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> (Arc<Tracked>, Place) {
        let tracked = Arc::new(Tracked {
            activity: Activity::new(self.shared.clock.now()),
            evict: CancellationToken::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let id = open.next_id;
        open.next_id += 1;
        open.connections.insert(id, tracked.clone());
        drop(open);
        self.metrics.connections.inc();
        let place = Place {
            server: self.clone(),
            id,
            _permit: permit,
        };
        (tracked, place)
    }
}

/// The connection to close at the limit: of those waiting for a request (`Some` time), the
/// one waiting since the earliest time, the first accepted among equals.
fn longest_waiting(connections: impl Iterator<Item = (u64, Option<u64>)>) -> Option<u64> {
    connections
        .filter_map(|(id, since)| Some((since?, id)))
        .min()
        .map(|(_, id)| id)
}

/// A connection's place among the open ones: dropped when it is closed (the socket is by
/// then), it gives the place back.
struct Place {
    server: Arc<Server>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self
            .server
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.connections.remove(&self.id);
        drop(open);
        self.server.metrics.connections.dec();
    }
}

async fn run_connection(
    server: Arc<Server>,
    stream: TcpStream,
    tracked: Arc<Tracked>,
    place: Place,
) {
    if let Some(reason) = connection::serve(stream, tracked, &server.shared).await {
        server.metrics.connections_closed.get(reason).inc();
        tracing::debug!(reason = reason.as_str(), "HTTP connection closed by churnd");
    }
    drop(place);
}

/// What follows a failed accept.
#[derive(Debug, PartialEq, Eq)]
struct AfterError {
    pause: Duration,
    /// `Some(n)`: log it now, with the `n` failures not logged since the last line.
    log: Option<u64>,
}

/// Failed accepts in a row, and when one was last logged.
#[derive(Debug, Default)]
struct AcceptErrors {
    pause: Option<Duration>,
    logged: Option<Instant>,
    not_logged: u64,
}

impl AcceptErrors {
    fn succeeded(&mut self) {
        self.pause = None;
    }

    /// `None` when the client gave up before it was accepted: accept the next one at once.
    fn failed(&mut self, kind: io::ErrorKind, now: Instant) -> Option<AfterError> {
        use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            kind,
            ConnectionAborted | ConnectionRefused | ConnectionReset
        ) {
            return None;
        }
        let pause = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(MAX_PAUSE));
        self.pause = Some(pause);
        let due = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        let log = if due {
            self.logged = Some(now);
            Some(std::mem::take(&mut self.not_logged))
        } else {
            self.not_logged += 1;
            None
        };
        Some(AfterError { pause, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn max_connections_must_leave_the_reserved_descriptors_free() {
        assert_eq!(budget_problem(256, 1024), None);
        assert_eq!(budget_problem(960, 1024), None);
        let err = budget_problem(961, 1024).unwrap();
        assert!(
            err.contains("http.max_connections (961)")
                && err.contains("open-file limit (ulimit -n) of 1024")
                && err.contains("at most 960"),
            "{err}"
        );
        let err = budget_problem(1, 64).unwrap();
        assert!(err.contains("leaves none for HTTP"), "{err}");
        assert!(budget_problem(u32::MAX, u64::MAX).is_none());
    }

    #[test]
    fn the_connection_waiting_longest_is_closed_first() {
        let open = [(1, Some(500)), (2, None), (3, Some(200)), (4, Some(200))];
        assert_eq!(longest_waiting(open.into_iter()), Some(3));
        assert_eq!(longest_waiting([(1, None), (2, None)].into_iter()), None);
    }

    #[test]
    fn accept_failures_pause_longer_each_time_and_are_logged_sparingly() {
        let mut errors = AcceptErrors::default();
        let t0 = Instant::now();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE).kind();
        assert_eq!(errors.failed(io::ErrorKind::ConnectionAborted, t0), None);
        let first = errors.failed(emfile, t0).unwrap();
        assert_eq!(
            first,
            AfterError {
                pause: FIRST_PAUSE,
                log: Some(0)
            }
        );
        let pauses: Vec<_> = (0..6).map(|_| errors.failed(emfile, t0).unwrap()).collect();
        assert!(pauses.iter().all(|a| a.log.is_none()));
        assert_eq!(pauses[0].pause, FIRST_PAUSE * 2);
        assert_eq!(pauses[5].pause, MAX_PAUSE);
        let later = errors.failed(emfile, t0 + LOG_EVERY).unwrap();
        assert_eq!(later.log, Some(6));
        errors.succeeded();
        assert_eq!(
            errors.failed(emfile, t0 + LOG_EVERY).unwrap().pause,
            FIRST_PAUSE
        );
    }

    /// A server whose `/slow` handler waits until `release` has a permit for it.
    struct SlowServer {
        addr: std::net::SocketAddr,
        metrics: HttpMetrics,
        release: Arc<Semaphore>,
        /// `/slow` requests whose handler runs (or ran).
        started: Arc<AtomicUsize>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn slow_server(limits: Limits) -> SlowServer {
        let release = Arc::new(Semaphore::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let (r, s) = (release.clone(), started.clone());
        let router = Router::new()
            .route("/fast", axum::routing::get(|| async { "fast\n" }))
            .route(
                "/slow",
                axum::routing::get(move || {
                    let (release, started) = (r.clone(), s.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.acquire().await.unwrap().forget();
                        "slow\n"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = crate::metrics::Metrics::new().http;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            router,
            limits,
            metrics.clone(),
            stop.clone(),
        ));
        SlowServer {
            addr,
            metrics,
            release,
            started,
            stop,
            task,
        }
    }

    fn limits(max_connections: u32, request: u64) -> Limits {
        Limits {
            max_connections,
            timeouts: Timeouts {
                header: 30_000,
                idle: 30_000,
                request,
            },
        }
    }

    async fn send(addr: std::net::SocketAddr, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Reads until the peer closes the connection, returning what came.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut text))
            .await
            .expect("the connection is closed");
        String::from_utf8_lossy(&text).into_owned()
    }

    async fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_connection_waits_while_every_one_is_in_a_request() {
        let SlowServer {
            addr,
            metrics,
            release,
            started,
            stop,
            task,
        } = slow_server(limits(2, 30_000)).await;
        let mut slow = [send(addr, "/slow").await, send(addr, "/slow").await];
        wait_until("both slow requests to run", || {
            started.load(Ordering::SeqCst) == 2
        })
        .await;
        let mut fast = send(addr, "/fast").await;
        wait_until("the new connection to wait for a place", || {
            metrics.connections_waited.get() == 1
        })
        .await;
        // Not served, and no connection in a request was closed for it.
        let evicted = || {
            metrics
                .connections_closed
                .get(super::super::Close::Evicted)
                .get()
        };
        let mut byte = [0u8; 1];
        assert!(
            matches!(fast.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        );
        assert_eq!(evicted(), 0);
        assert_eq!(metrics.connections.get(), 2);
        // One slow request answered (whichever took the permit: the handlers queue for it
        // in the order they ran, not the order the requests were sent), its connection
        // waits for another and is closed to make room.
        release.add_permits(1);
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), fast.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).ends_with("fast\n"));
        assert_eq!(evicted(), 1);
        let [a, b] = &mut slow;
        let (answered, text) = tokio::select! {
            text = read_to_close(a) => (0, text),
            text = read_to_close(b) => (1, text),
        };
        assert!(text.ends_with("slow\n"), "{text:?}");
        let second = &mut slow[1 - answered];
        // At shutdown a request in flight is answered before its connection closes.
        stop.cancel();
        release.add_permits(1);
        assert!(read_to_close(second).await.ends_with("slow\n"));
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(metrics.connections.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_not_answered_in_time_loses_its_connection() {
        let SlowServer {
            addr,
            metrics,
            stop,
            task,
            ..
        } = slow_server(limits(4, 300)).await;
        let began = Instant::now();
        let mut slow = send(addr, "/slow").await;
        assert_eq!(read_to_close(&mut slow).await, "");
        assert!(began.elapsed() >= Duration::from_millis(300));
        wait_until("the timeout to be counted", || {
            metrics
                .connections_closed
                .get(super::super::Close::RequestTimeout)
                .get()
                == 1
        })
        .await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
}
