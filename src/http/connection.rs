//! One HTTP connection: hyper's HTTP/1 serves it, and a watchdog closes it when it overstays
//! what it is doing: waiting for a request, sending a request's head, or being answered.
//!
//! hyper's own `header_read_timeout` starts when it waits for a request, so it would close a
//! kept-alive connection that waits quietly as if it sent its head slowly: one timeout for
//! two things. Here the connection's reader and service record what happens, and the
//! deadline follows from that (see [`Activity::deadline`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Milliseconds on the server's [`Clock`]: plain integers, so that what a connection does
/// fits in atomics its reader, its service, its watchdog and the accept loop share.
pub(crate) type Millis = u64;

/// The server's clock: milliseconds since it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> Millis {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, at: Millis) -> Instant {
        self.0 + Duration::from_millis(at)
    }
}

/// How long a connection may take over each thing it does (`http.*_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Millis,
    pub idle: Millis,
    pub request: Millis,
}

/// Why churnd closed a connection: the `reason` label of
/// `churnd_http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// No next request within the idle timeout.
    IdleTimeout,
    /// The response was not handed over within the request timeout.
    RequestTimeout,
    /// It waited for a request when a new connection needed its place.
    Evicted,
}

impl Close {
    pub const ALL: [Self; 4] = [
        Self::HeaderTimeout,
        Self::IdleTimeout,
        Self::RequestTimeout,
        Self::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// What a connection is doing, recorded by its reader (bytes arrived) and its service (a
/// request began, its response ended). Every update happens on the connection's own task;
/// the atomics let the accept loop read it when it looks for a connection to close.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Millis,
    /// Requests begun (heads complete); 0: the connection has not sent one yet.
    requests: AtomicU64,
    /// Requests whose response is not handed over yet.
    in_flight: AtomicU32,
    /// When the latest request's head was complete.
    request_began: AtomicU64,
    /// When the last response was handed over (the connection's opening before the first):
    /// it has waited for a request since, unless one is in flight.
    idle_since: AtomicU64,
    /// One more than when the first byte of the next request arrived; 0: none yet.
    head_began: AtomicU64,
    /// Told when the deadline may have moved (a head began, a request, a response done),
    /// since a new deadline can come before the one the watchdog sleeps until.
    changed: Notify,
}

impl Activity {
    pub fn new(opened: Millis) -> Self {
        Self {
            opened,
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            request_began: AtomicU64::new(0),
            idle_since: AtomicU64::new(opened),
            head_began: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// Bytes arrived: while no request is in flight, they begin the next request's head.
    fn bytes_read(&self, now: Millis) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .head_began
                .compare_exchange(
                    0,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A request's head is complete; its handler runs.
    fn request_began(&self, now: Millis) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_began.store(now, Ordering::Relaxed);
        self.head_began.store(0, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A response was handed over whole (or given up, the connection closing).
    fn response_done(&self, now: Millis) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(now, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Since when the connection has waited for a request (idle, or receiving a head), or
    /// `None` while one is in flight: the connection to close at the limit is the one that
    /// has waited longest.
    pub(crate) fn waiting_since(&self) -> Option<Millis> {
        (!self.is_busy()).then(|| self.idle_since.load(Ordering::Relaxed))
    }

    /// When the connection overstays what it is doing, and what that is.
    pub fn deadline(&self, t: &Timeouts) -> (Millis, Close) {
        let head_began = self.head_began.load(Ordering::Relaxed);
        if self.is_busy() {
            let began = self.request_began.load(Ordering::Relaxed);
            (began.saturating_add(t.request), Close::RequestTimeout)
        } else if head_began > 0 {
            (
                (head_began - 1).saturating_add(t.header),
                Close::HeaderTimeout,
            )
        } else if self.requests.load(Ordering::Relaxed) == 0 {
            // A connection is opened to send a request: silence counts as a slow head.
            (self.opened.saturating_add(t.header), Close::HeaderTimeout)
        } else {
            let idle_since = self.idle_since.load(Ordering::Relaxed);
            (idle_since.saturating_add(t.idle), Close::IdleTimeout)
        }
    }
}

/// An open connection as the accept loop sees it.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub activity: Activity,
    /// Cancelled to ask the connection to make room for a new one.
    pub evict: CancellationToken,
}

/// What every connection of a server shares.
pub(crate) struct Shared {
    pub router: Router,
    pub timeouts: Timeouts,
    pub clock: Clock,
    /// The server is stopping: finish the request in flight, then close.
    pub stop: CancellationToken,
}

/// Serves `stream` until the client closes it, it fails, or churnd closes it: the reason
/// in the last case.
pub async fn serve(stream: TcpStream, tracked: Arc<Tracked>, cx: &Shared) -> Option<Close> {
    let clock = cx.clock;
    let io = TokioIo::new(Watched {
        stream,
        tracked: tracked.clone(),
        clock,
    });
    let service = Service {
        router: TowerToHyperService::new(cx.router.clone()),
        tracked: tracked.clone(),
        clock,
    };
    let http = hyper::server::conn::http1::Builder::new()
        // The watchdog below times heads; hyper's timer would also time idle waits.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(http);
    let activity = &tracked.activity;
    let (mut stopping, mut evicting) = (false, false);
    loop {
        let (due, _) = activity.deadline(&cx.timeouts);
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return None;
            }
            // The deadline may have moved: computed again at the top.
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(clock.instant(due).into()) => {
                // Something may have happened meanwhile: only a deadline still passed counts.
                let (due, reason) = activity.deadline(&cx.timeouts);
                if due <= clock.now() {
                    return Some(reason);
                }
            }
            () = tracked.evict.cancelled(), if !evicting => {
                evicting = true;
                if !activity.is_busy() {
                    return Some(Close::Evicted);
                }
                // A request began since it was chosen: answer it, then close.
                http.as_mut().graceful_shutdown();
            }
            () = cx.stop.cancelled(), if !stopping => {
                stopping = true;
                if !activity.is_busy() {
                    return None;
                }
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The router, recording when each request begins and when its response is handed over.
#[derive(Clone)]
struct Service {
    router: TowerToHyperService<Router>,
    tracked: Arc<Tracked>,
    clock: Clock,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.tracked.activity.request_began(self.clock.now());
        // Dropped with the body once hyper has sent it, or with this future if the
        // connection closes first.
        let done = ResponseDone {
            tracked: self.tracked.clone(),
            clock: self.clock,
        };
        let response = self.router.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _done: done }))
        })
    }
}

struct ResponseDone {
    tracked: Arc<Tracked>,
    clock: Clock,
}

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.tracked.activity.response_done(self.clock.now());
    }
}

/// A response body that tells the connection's [`Activity`] when it is done.
struct TrackedBody {
    body: Body,
    _done: ResponseDone,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling its [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    tracked: Arc<Tracked>,
    clock: Clock,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracked.activity.bytes_read(this.clock.now());
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: 100,
        idle: 1_000,
        request: 10_000,
    };

    #[test]
    fn a_new_connection_has_the_header_timeout_to_send_its_first_head() {
        let a = Activity::new(50);
        assert_eq!(a.deadline(&T), (150, Close::HeaderTimeout));
        // Bytes do not move the deadline of a head: only its completion does.
        a.bytes_read(60);
        a.bytes_read(140);
        assert_eq!(a.deadline(&T), (160, Close::HeaderTimeout));
        assert_eq!(a.waiting_since(), Some(50));
    }

    #[test]
    fn a_request_in_flight_has_the_request_timeout_and_cannot_be_evicted() {
        let a = Activity::new(0);
        a.bytes_read(10);
        a.request_began(20);
        assert_eq!(a.deadline(&T), (10_020, Close::RequestTimeout));
        assert_eq!(a.waiting_since(), None);
        // Bytes during a request (its body, a pipelined head) start no head deadline.
        a.bytes_read(30);
        assert_eq!(a.deadline(&T), (10_020, Close::RequestTimeout));
    }

    #[test]
    fn between_requests_the_idle_timeout_runs_until_the_next_head_begins() {
        let a = Activity::new(0);
        a.request_began(20);
        a.response_done(40);
        assert_eq!(a.deadline(&T), (1_040, Close::IdleTimeout));
        assert_eq!(a.waiting_since(), Some(40));
        a.bytes_read(900);
        assert_eq!(a.deadline(&T), (1_000, Close::HeaderTimeout));
        a.request_began(950);
        a.response_done(960);
        assert_eq!(a.deadline(&T), (1_960, Close::IdleTimeout));
    }

    #[test]
    fn close_reasons_are_the_documented_label_values() {
        assert_eq!(
            Close::ALL.map(Close::as_str),
            [
                "header_timeout",
                "idle_timeout",
                "request_timeout",
                "evicted"
            ]
        );
    }
}
