//! `http`: one request to a URL (a webhook, an alert, a deploy hook), with method, headers,
//! body and the expected status.
//!
//! URL, method and headers are checked here by the rules of RFC 3986 and RFC 9110 (std
//! only, so the schema needs no HTTP client).

use std::collections::BTreeMap;

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "http";

/// What an `http` sends: the response's status and body.
pub const SENDS: Values = &[("status", ValueType::Int), ("body", ValueType::Str)];

/// What an `http` can receive: the request body.
pub const RECEIVES: Values = &[("body", ValueType::Str)];

/// A request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// `http:name`.
    pub id: String,
    /// An http(s) URL.
    pub url: String,
    /// Upper-case method (default GET).
    pub method: String,
    /// Request headers.
    pub headers: BTreeMap<String, String>,
    /// Request body (unless one is received).
    pub body: Option<String>,
    /// Exact status wanted; None: any 2xx.
    pub status: Option<u16>,
}

pub(crate) fn parse(id: String, name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    // The name is the URL unless `url` is given.
    let url = fields.opt_str("url")?.unwrap_or_else(|| name.to_string());
    let field = if url == name { "name" } else { "url" };
    if !is_http_url(&url) {
        return Err(fields.invalid(field, format!("`{url}` is not an http(s) URL")));
    }
    let method = fields
        .opt_str("method")?
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    if !is_token(&method) {
        return Err(fields.invalid("method", format!("`{method}` is not an HTTP method")));
    }
    let headers = fields.opt_str_map("headers")?;
    if let Some(k) = headers
        .iter()
        .find(|(k, v)| !is_token(k) || !is_header_value(v))
        .map(|(k, _)| k)
    {
        return Err(fields.invalid("headers", format!("`{k}` is not a valid header")));
    }
    let body = fields.opt_str("body")?;
    let status = match fields.opt_number("status")? {
        None => None,
        Some(n) if n.fract() == 0.0 && (100.0..=599.0).contains(&n) => Some(n as u16),
        Some(n) => return Err(fields.invalid("status", format!("{n} is not an HTTP status"))),
    };
    Ok(Spec::Http(Box::new(HttpSpec {
        id,
        url,
        method,
        headers,
        body,
        status,
    })))
}

/// `http://` or `https://`, a host (optional userinfo, optional numeric port), then any
/// path, query and fragment, all in visible ASCII.
fn is_http_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) => (addr, after.strip_prefix(':')),
            None => return false,
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok());
    !host.is_empty() && port_ok
}

/// An RFC 9110 token: what a method and a header name are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: no control characters but tab.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "http://x",
            "https://example.com/a?b=c#d",
            "http://127.0.0.1:8080/hook",
            "http://[::1]:80/",
            "HTTP://user@host",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "ftp://x",
            "http://",
            "http:///path",
            "x",
            "http://a b",
            "http://h:port",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
