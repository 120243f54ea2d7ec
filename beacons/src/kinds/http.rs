//! `beacon/http`: a URL check — status, latency, and optionally whether the body matches.
//!
//! `url = "https://example.org/health"`, `expect = 200` (default: any 2xx or 3xx after
//! redirects), `match = "\"status\":\"ok\""` (a regex the body must match), `timeout = "10s"`.
//! Each check reports `{url, status, ok, latency_ms, body_match}`. A URL that does not answer
//! (refused, timed out, bad name or certificate) is a failure of the beacon:
//! `beacon/http/error`. Default: threshold on `ok` below 1, so the events are "the check
//! fails" and "it passes again"; every 30 s.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use regex::Regex;
use std::time::{Duration, Instant};

/// What `http` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(30),
    mode: Mode::Threshold,
    field: Some("ok"),
    fields: &["ok", "status", "latency_ms", "body_match"],
    above: None,
    below: Some(1.0),
    hysteresis: 0.0,
};

/// The most of a body read for matching.
const MAX_BODY: u64 = 1 << 20;

/// The `http` beacon: a URL check.
pub struct Http {
    url: String,
    expect: Option<u16>,
    body: Option<Regex>,
    agent: ureq::Agent,
}

impl Http {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Http, ConfigError> {
        let url = f
            .string("url")?
            .ok_or_else(|| f.missing("url", "the URL to check"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(f.error("url", format!("{url:?} is not an http:// or https:// URL")));
        }
        let expect = match f.u64("expect")? {
            None => None,
            Some(s) if (100..600).contains(&s) => Some(s as u16),
            Some(s) => return Err(f.error("expect", format!("{s} is not an HTTP status"))),
        };
        let body = f.regex("match")?;
        let timeout = f.duration("timeout")?.unwrap_or(Duration::from_secs(10));
        Ok(Http::new(url, expect, body, timeout))
    }

    /// Check `url`, expecting status `expect` (any 2xx or 3xx after redirects when None) and
    /// a body matching `body`.
    pub fn new(url: String, expect: Option<u16>, body: Option<Regex>, timeout: Duration) -> Http {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A 500 is an answer to report, not a failure to reach the URL.
            .http_status_as_error(false)
            .user_agent(format!("reflex-beacon/{}", crate::VERSION))
            .build()
            .into();
        Http {
            url,
            expect,
            body,
            agent,
        }
    }
}

impl Beacon for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let t = Instant::now();
        let mut resp = self
            .agent
            .get(&self.url)
            .call()
            .map_err(|e| format!("{}: {e}", self.url))?;
        let status = resp.status().as_u16();
        let body_match = match &self.body {
            None => None,
            Some(re) => {
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_BODY)
                    .read_to_string()
                    .map_err(|e| format!("{}: cannot read the body: {e}", self.url))?;
                Some(re.is_match(&text))
            }
        };
        let latency = t.elapsed().as_secs_f64() * 1000.0;
        let status_ok = match self.expect {
            Some(want) => status == want,
            None => (200..400).contains(&status),
        };
        let mut data = obj! {
            "url" => self.url, "status" => status, "latency_ms" => round2(latency),
            "ok" => status_ok && body_match.unwrap_or(true),
        };
        if let Some(m) = body_match {
            data.insert("body_match".into(), m.into());
        }
        out.measure("", data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A real HTTP server on loopback: `/ok` says healthy, `/down` is a 503, `/slow` answers
    /// after 3 s. Serves `n` requests, then stops.
    fn server(n: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming().take(n) {
                let Ok(mut s) = stream else { continue };
                let mut first = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                r.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (status, body) = if first.contains("/ok") {
                    ("200 OK", "{\"status\":\"ok\"}")
                } else if first.contains("/slow") {
                    std::thread::sleep(Duration::from_secs(3));
                    ("200 OK", "late")
                } else {
                    ("503 Service Unavailable", "{\"status\":\"down\"}")
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    fn check(h: &mut Http) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let mut out = Out::default();
        h.sample(&mut out)?;
        Ok(out.readings.remove(0).data)
    }

    #[test]
    fn status_latency_and_body_against_a_local_server() {
        let base = server(3);
        let re = Some(Regex::new("\"status\":\"ok\"").unwrap());
        let mut ok = Http::new(
            format!("{base}/ok"),
            None,
            re.clone(),
            Duration::from_secs(10),
        );
        let d = check(&mut ok).unwrap();
        assert_eq!(
            (
                d["status"].as_u64(),
                d["ok"].as_bool(),
                d["body_match"].as_bool()
            ),
            (Some(200), Some(true), Some(true))
        );
        assert!(d["latency_ms"].as_f64().unwrap() >= 0.0);

        let mut down = Http::new(format!("{base}/down"), None, re, Duration::from_secs(10));
        let d = check(&mut down).unwrap();
        assert_eq!(
            (
                d["status"].as_u64(),
                d["ok"].as_bool(),
                d["body_match"].as_bool()
            ),
            (Some(503), Some(false), Some(false))
        );

        let mut want503 = Http::new(
            format!("{base}/down"),
            Some(503),
            None,
            Duration::from_secs(10),
        );
        assert_eq!(check(&mut want503).unwrap()["ok"], true);
    }

    #[test]
    fn no_answer_is_a_failure_of_the_beacon() {
        // A port nothing listens on.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut h = Http::new(
            format!("http://127.0.0.1:{port}/"),
            None,
            None,
            Duration::from_secs(5),
        );
        let e = check(&mut h).unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");

        let base = server(1);
        let mut slow = Http::new(
            format!("{base}/slow"),
            None,
            None,
            Duration::from_millis(300),
        );
        let e = check(&mut slow).unwrap_err();
        assert!(
            e.to_lowercase().contains("timeout") || e.to_lowercase().contains("timed out"),
            "{e}"
        );
    }
}
