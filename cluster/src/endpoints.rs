//! `etcd://HOST:PORT[,HOST:PORT…]`: where the etcd cluster answers.
//!
//! The string comes from a flag or a config file, so it is parsed strictly and every refusal
//! says what is wrong: a scheme other than `etcd://`, credentials, a path or query, an empty or
//! duplicated endpoint, a host with characters no host name has, a port that is missing, zero
//! or past 65535. IPv6 addresses are written in brackets (`etcd://[::1]:2379`).

use crate::ClusterError;

/// Most endpoints one URL may list (an etcd cluster has 3, 5 or 7 members).
pub const MAX_ENDPOINTS: usize = 32;

/// The endpoints of `url`, each as `http://HOST:PORT` for the gRPC client, in the given order.
pub fn parse(url: &str) -> Result<Vec<String>, ClusterError> {
    let bad = |why: String| ClusterError::BadUrl {
        url: url.chars().take(200).collect(),
        why,
    };
    let rest = url.strip_prefix("etcd://").ok_or_else(|| {
        bad("it must start with etcd:// (etcd://HOST:PORT[,HOST:PORT...])".into())
    })?;
    if rest.is_empty() {
        return Err(bad("no endpoint after etcd://".into()));
    }
    if rest.contains('@') {
        return Err(bad("credentials in the URL are not supported".into()));
    }
    if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#')) {
        return Err(bad(format!(
            "{c:?} after the endpoints: no path, query or fragment"
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, part) in rest.split(',').enumerate() {
        let n = i + 1;
        if out.len() == MAX_ENDPOINTS {
            return Err(bad(format!("more than {MAX_ENDPOINTS} endpoints")));
        }
        if part.is_empty() {
            return Err(bad(format!("endpoint {n} is empty")));
        }
        let (host, port) =
            split_host_port(part).map_err(|why| bad(format!("endpoint {n} ({part:?}): {why}")))?;
        let endpoint = format!("http://{host}:{port}");
        if out.contains(&endpoint) {
            return Err(bad(format!("endpoint {n} ({part:?}) is listed twice")));
        }
        out.push(endpoint);
    }
    Ok(out)
}

/// `HOST:PORT` or `[V6]:PORT`, checked.
fn split_host_port(part: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = part.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{addr:?} is not an IPv6 address"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or("a port must follow the address (HOST:PORT)")?;
        (&part[..addr.len() + 2], port)
    } else {
        let (host, port) = part.rsplit_once(':').ok_or("no port (HOST:PORT)")?;
        if host.is_empty() {
            return Err("no host before the port".into());
        }
        if host.len() > 253 {
            return Err("the host name is longer than 253 characters".into());
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "{c:?} has no place in a host name (IPv6 goes in brackets)"
            ));
        }
        (host, port)
    };
    if port.is_empty() {
        return Err("the port is empty".into());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the port {port:?} is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("the port is 0".into()),
        Ok(p) => Ok((host, p)),
        Err(_) => Err(format!("the port {port} is past 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(url: &str) -> String {
        match parse(url) {
            Err(ClusterError::BadUrl { why, .. }) => why,
            other => panic!("{url:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn good_urls() {
        assert_eq!(
            parse("etcd://127.0.0.1:2379").unwrap(),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse("etcd://a.example:1,b-2:65535,[::1]:2379").unwrap(),
            [
                "http://a.example:1",
                "http://b-2:65535",
                "http://[::1]:2379"
            ]
        );
    }

    #[test]
    fn hostile_urls_are_refused_with_the_reason() {
        assert!(why("http://127.0.0.1:2379").contains("must start with etcd://"));
        assert!(why("etcd://").contains("no endpoint"));
        assert!(why("etcd://u:p@h:1").contains("credentials"));
        assert!(why("etcd://h:1/path").contains("no path"));
        assert!(why("etcd://h:1?x=1").contains("no path"));
        assert!(why("etcd://h:1,,h:2").contains("endpoint 2 is empty"));
        assert!(why("etcd://h:1,").contains("endpoint 2 is empty"));
        assert!(why("etcd://h").contains("no port"));
        assert!(why("etcd://:1").contains("no host"));
        assert!(why("etcd://h:").contains("port is empty"));
        assert!(why("etcd://h:0").contains("port is 0"));
        assert!(why("etcd://h:65536").contains("past 65535"));
        assert!(why("etcd://h:99999999999999999999").contains("past 65535"));
        assert!(why("etcd://h:-1").contains("not a number"));
        assert!(why("etcd://h:+1").contains("not a number"));
        assert!(why("etcd://h h:1").contains("' '"));
        assert!(why("etcd://::1:2379").contains("IPv6 goes in brackets"));
        assert!(why("etcd://[::1:2379").contains("closing ]"));
        assert!(why("etcd://[zz]:1").contains("not an IPv6"));
        assert!(why("etcd://[::1]").contains("port must follow"));
        assert!(why("etcd://h:1,h:1").contains("listed twice"));
        assert!(why(&format!("etcd://{}:1", "a".repeat(300))).contains("longer than 253"));
        let many: Vec<String> = (1..=40).map(|p| format!("h:{p}")).collect();
        assert!(why(&format!("etcd://{}", many.join(","))).contains("more than 32"));
        assert!(why("etcd://h\u{e9}:1").contains("no place in a host name"));
    }
}
