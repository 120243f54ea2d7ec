//! The SUB thread: it owns the subscription socket (ZeroMQ sockets are not thread-safe) and
//! hands the sealed frames the publisher sends to the serve loop, which verifies them. It never blocks on anything but the
//! channel to the serve loop, so live actions keep being taken in while a replay is in flight.

use crate::{ActorError, Config};
use bus::{BadFrames, MalformedKind, Target};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the SUB thread hands the serve loop.
pub(crate) enum Inbound {
    /// A sealed action frame received live, not verified yet.
    Frame(Vec<u8>),
    /// The subscription reached a publisher (first connect or reconnect): time to catch up.
    Connected,
}

/// The topics this actor subscribes to, in the one order the SUB socket and the replay request
/// both use. A name or group that would never match (one with a slash, say) is a bad config.
pub(crate) fn subscriptions(cfg: &Config) -> Result<Vec<String>, ActorError> {
    let topics = Target::subscriptions(&cfg.name, &cfg.groups);
    if let Some(t) = topics
        .iter()
        .find(|t| Target::parse(t.trim_end_matches('/')).is_err())
    {
        return Err(ActorError::Config(format!(
            "bad actor name or group: topic {t:?}"
        )));
    }
    Ok(topics)
}

/// Subscribe to `topics` on `cfg.publish` and start the thread that receives from it until
/// `stop` is set or the serve loop is gone.
pub(crate) fn spawn(
    cfg: &Config,
    topics: &[String],
    tx: mpsc::Sender<Inbound>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ActorError> {
    let (sub, watch) = bus::secure::connect_watched(zmq::SUB, &cfg.publish, &cfg.security)?;
    for topic in topics {
        sub.set_subscribe(topic.as_bytes())?;
    }
    let max_frame = cfg.max_frame;
    let thread = std::thread::Builder::new()
        .name("actor-sub".into())
        .spawn(move || sub_loop(sub, watch, tx, max_frame, &stop))?;
    Ok(thread)
}

fn sub_loop(
    sub: zmq::Socket,
    watch: bus::sockets::HandshakeWatch,
    tx: mpsc::Sender<Inbound>,
    max_frame: usize,
    stop: &AtomicBool,
) {
    let mut bad = BadFrames::new("action frame");
    while !stop.load(Ordering::Relaxed) {
        let (data, shake) = {
            let mut items = [
                sub.as_poll_item(zmq::POLLIN),
                watch.socket().as_poll_item(zmq::POLLIN),
            ];
            if bus::sockets::poll(&mut items, 100).is_err() {
                continue;
            }
            (items[0].is_readable(), items[1].is_readable())
        };
        // Told before any action received after it, so the serve loop holds those back until
        // it has caught up.
        if shake && watch.drain() && tx.blocking_send(Inbound::Connected).is_err() {
            return;
        }
        if !data {
            continue;
        }
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            let mut parts = parts;
            let frame = match parts.len() {
                2 if parts[1].len() > max_frame => {
                    let why = format!("{} bytes over the {max_frame}-byte limit", parts[1].len());
                    bad.count(MalformedKind::Oversize, &why);
                    None
                }
                2 => parts.pop(),
                _ => {
                    let why = format!("expected 2 frames, got {}", parts.len());
                    bad.count(MalformedKind::Malformed, &why);
                    None
                }
            };
            if let Some(f) = frame {
                if tx.blocking_send(Inbound::Frame(f)).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, groups: &[&str]) -> Config {
        Config {
            publish: String::new(),
            ingest: String::new(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            max_frame: 1024,
            state: None,
            graphviz: None,
            converged_timeout: std::time::Duration::from_secs(1),
            replay: None,
            security: bus::secure::Security::Insecure,
            sign_key: None,
            policy: crate::Policy::strict(),
        }
    }

    #[test]
    fn topics_are_all_host_then_groups_and_bad_names_are_a_config_error() {
        assert_eq!(
            subscriptions(&config("web1", &["db"])).unwrap(),
            ["all/", "host/web1/", "group/db/"]
        );
        for bad in [config("web/1", &[]), config("web1", &["a/b"])] {
            assert!(matches!(subscriptions(&bad), Err(ActorError::Config(_))));
        }
    }
}
