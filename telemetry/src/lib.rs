//! What the reflex daemons tell about themselves over HTTP: Prometheus metrics at `/metrics`
//! (text exposition format, built with `prometheus-client`) and, for the manager, its page.
//!
//! The server is `tiny_http` on one thread of its own: requests are answered one after the
//! other, which is plenty for a scraper and a browser, and keeps a flood of requests from
//! taking more than that thread. Only `GET` and `HEAD` are served; the body of anything else
//! is never read. The daemons bind it where they are told (`--http ADDR`), off by default;
//! `reflex up` puts it on loopback.
//!
//! ```no_run
//! use prometheus_client::{metrics::counter::Counter, registry::Registry};
//! let mut registry = Registry::with_prefix("reflex_demo");
//! let seen: Counter = Counter::default();
//! registry.register("seen", "Things seen", seen.clone());
//! let server = telemetry::Server::start("127.0.0.1:0", registry, None)?;
//! println!("metrics at http://{}/metrics", server.addr());
//! seen.inc();
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

pub use prometheus_client;
use prometheus_client::registry::Registry;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Answers the paths other than `/metrics` (the URL as requested: path and query); `None`:
/// not one of its paths (404).
pub type Routes = Box<dyn Fn(&str) -> Option<Reply> + Send + 'static>;

/// The content type of the Prometheus text format.
pub const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running HTTP server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Bind `addr` (`host:port`; port 0 picks one) and serve `registry` at `/metrics` and
    /// `routes` for every other path.
    pub fn start(addr: &str, registry: Registry, routes: Option<Routes>) -> io::Result<Server> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| io::Error::other(format!("http on {addr}: {e}")))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other(format!("http on {addr}: not an IP address")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(server, registry, routes, &flag))?;
        tracing::info!(addr = %bound, "http up: /metrics");
        Ok(Server {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: tiny_http::Server, registry: Registry, routes: Option<Routes>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("http: {e}");
                continue;
            }
        };
        let head = *request.method() == tiny_http::Method::Head;
        let reply = if *request.method() != tiny_http::Method::Get && !head {
            Reply::text(405, "only GET and HEAD\n")
        } else {
            answer(request.url(), &registry, routes.as_ref())
        };
        let mut response =
            tiny_http::Response::from_data(if head { Vec::new() } else { reply.body })
                .with_status_code(reply.status);
        for (k, v) in [
            ("Content-Type", reply.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            // The page's address carries its token: never hand it on.
            ("Referrer-Policy", "no-referrer"),
        ] {
            if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
                response.add_header(h);
            }
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

fn answer(url: &str, registry: &Registry, routes: Option<&Routes>) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    if path == "/metrics" {
        let mut text = String::new();
        return match prometheus_client::encoding::text::encode(&mut text, registry) {
            Ok(()) => Reply {
                status: 200,
                content_type: METRICS_TYPE,
                body: text.into_bytes(),
            },
            Err(e) => Reply::text(500, format!("metrics: {e}\n")),
        };
    }
    routes
        .and_then(|r| r(url))
        .unwrap_or_else(|| Reply::text(404, "not found\n"))
}

/// Buckets for durations from 10 µs to about 40 s, a factor of 4 apart: a rule run, a check,
/// an apply.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 12)
}

/// The label of a dropped frame: why (`malformed`, `forged`, ...) and, for a malformed one,
/// what was wrong with it (`empty`, `version`, `oversize`, `malformed`; empty otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Dropped {
    /// Why it was dropped.
    pub reason: &'static str,
    /// What was wrong with a malformed frame.
    pub kind: &'static str,
}

/// Set a counter to the total a loop counted itself (a plain integer on its hot path, only
/// ever growing): exposing it costs the loop no atomic per event.
pub fn set_counter(c: &prometheus_client::metrics::counter::Counter, total: u64) {
    c.inner().store(total, std::sync::atomic::Ordering::Relaxed);
}

/// Set a gauge from any integer (saturating).
pub fn set_gauge(g: &prometheus_client::metrics::gauge::Gauge, v: impl TryInto<i64>) {
    g.set(v.try_into().unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_routes_and_refuses_the_rest() {
        let mut registry = Registry::with_prefix("t");
        let c: Counter = Counter::default();
        registry.register("things", "Things", c.clone());
        c.inc_by(3);
        let routes: Routes = Box::new(|url| (url == "/x").then(|| Reply::text(200, "x\n")));
        let server = Server::start("127.0.0.1:0", registry, Some(routes)).expect("start");
        let close = "Connection: close\r\n\r\n";
        let m = get(server.addr(), &format!("GET /metrics HTTP/1.1\r\n{close}"));
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("t_things_total 3"), "{m}");
        let x = get(server.addr(), &format!("GET /x HTTP/1.1\r\n{close}"));
        assert!(x.ends_with("\r\n\r\nx\n"), "{x}");
        let nf = get(server.addr(), &format!("GET /nope HTTP/1.1\r\n{close}"));
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let post = get(
            server.addr(),
            &format!("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}"),
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let garbage = get(server.addr(), "\x00\x01garbage\r\n\r\n");
        assert!(!garbage.contains("t_things_total"), "{garbage}");
        // Still serving after the garbage.
        let again = get(server.addr(), &format!("GET /metrics HTTP/1.1\r\n{close}"));
        assert!(again.contains("t_things_total 3"), "{again}");
    }
}
