//! The SUB thread: it owns the subscription sockets, one per publisher (ZeroMQ sockets are not
//! thread-safe), and hands the sealed frames the publishers send to the serve loop, which
//! verifies them, each tagged with the publisher it came from (its index in
//! [`Config::publishers`]): sequences are per publisher. It never blocks on anything but the
//! channel to the serve loop, so live actions keep being taken in while a replay is in flight.

use crate::{ActorError, Config};
use bus::delivery::TICK;
use bus::{BadFrames, MalformedKind, Target};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the SUB thread hands the serve loop: what came from which publisher.
pub(crate) struct Inbound {
    /// The publisher's index in [`Config::publishers`].
    pub(crate) from: usize,
    pub(crate) msg: Msg,
}

/// What a publisher's subscription delivered.
pub(crate) enum Msg {
    /// Sealed action frames received live, in order, not verified yet: what the socket had
    /// ready, up to [`BATCH`], so a burst is verified as a batch and crosses to the serve loop
    /// in one hand-over rather than one each.
    Frames(Vec<Vec<u8>>),
    /// The subscription reached a publisher (first connect or reconnect): time to catch up.
    Connected,
    /// The connection to the publisher was lost (closed, or its heartbeats timed out).
    Lost,
    /// The publisher's last seq on one of our topics (see `publisher::topics`): behind it,
    /// we missed actions that no later one will show.
    Tick {
        /// The topic, as subscribed (`host/web1/`).
        topic: String,
        /// The last seq published there.
        last: u64,
    },
}

/// The most frames handed over at once.
pub(crate) const BATCH: usize = 64;

/// How often the subscription pings the publisher (ZMTP heartbeats), and how long without any
/// traffic it waits before taking the connection for lost and reconnecting: a link cut without
/// a reset (a host unplugged) is noticed in seconds, not at the next TCP timeout.
const HEARTBEAT_MS: i32 = 1_000;
const HEARTBEAT_TIMEOUT_MS: i32 = 5_000;

/// The topics this actor subscribes to, in the one order the SUB socket and the replay request
/// both use. A name or group that would never match (one with a slash, say) is a bad config,
/// and so are no publisher at all and one endpoint given twice.
pub(crate) fn subscriptions(cfg: &Config) -> Result<Vec<String>, ActorError> {
    if cfg.publishers.is_empty() {
        return Err(ActorError::Config("no publisher to follow".into()));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(p) = cfg.publishers.iter().find(|p| !seen.insert(&p.publish)) {
        return Err(ActorError::Config(format!(
            "publisher {} given twice",
            p.publish
        )));
    }
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

/// How long after the publisher refused our key the subscription dials it again (a key
/// accepted at a manager reaches the other publishers a moment later: another process reads
/// the store, or etcd carries it).
const REDIAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One publisher's subscription and the watch on its handshakes.
struct Feed {
    sub: zmq::Socket,
    watch: bus::sockets::HandshakeWatch,
    publish: String,
    /// When to dial again, after the publisher refused our key.
    redial_at: Cell<Option<Instant>>,
}

/// Subscribe to `topics` on every publisher and start the thread that receives from them
/// until `stop` is set or the serve loop is gone.
pub(crate) fn spawn(
    cfg: &Config,
    topics: &[String],
    tx: mpsc::Sender<Inbound>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ActorError> {
    let mut feeds = Vec::with_capacity(cfg.publishers.len());
    for p in &cfg.publishers {
        let (sub, watch) =
            bus::secure::connect_watched_losses(zmq::SUB, &p.publish, &cfg.security)?;
        sub.set_heartbeat_ivl(HEARTBEAT_MS)?;
        sub.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
        for topic in topics {
            sub.set_subscribe(topic.as_bytes())?;
        }
        feeds.push(Feed {
            sub,
            watch,
            publish: p.publish.clone(),
            redial_at: Cell::new(None),
        });
    }
    let max_frame = cfg.max_frame;
    let thread = std::thread::Builder::new()
        .name("actor-sub".into())
        .spawn(move || sub_loop(feeds, tx, max_frame, &stop))?;
    Ok(thread)
}

fn sub_loop(feeds: Vec<Feed>, tx: mpsc::Sender<Inbound>, max_frame: usize, stop: &AtomicBool) {
    receive(&feeds, &tx, max_frame, stop);
    // Before the sockets close (see `HandshakeWatch::unwatch`).
    for Feed { mut sub, watch, .. } in feeds {
        watch.unwatch(&mut sub);
    }
}

/// Hand what the subscriptions receive to the serve loop until `stop` or the loop is gone.
fn receive(feeds: &[Feed], tx: &mpsc::Sender<Inbound>, max_frame: usize, stop: &AtomicBool) {
    let mut bad = BadFrames::new("action frame");
    let mut ready = vec![(false, false); feeds.len()];
    while !stop.load(Ordering::Relaxed) {
        {
            let mut items: Vec<zmq::PollItem> = feeds
                .iter()
                .flat_map(|f| {
                    [
                        f.sub.as_poll_item(zmq::POLLIN),
                        f.watch.socket().as_poll_item(zmq::POLLIN),
                    ]
                })
                .collect();
            if bus::sockets::poll(&mut items, 100).is_err() {
                continue;
            }
            for (r, pair) in ready.iter_mut().zip(items.chunks(2)) {
                *r = (pair[0].is_readable(), pair[1].is_readable());
            }
        }
        for (from, (feed, &(data, shake))) in feeds.iter().zip(&ready).enumerate() {
            if !take(feed, from, data, shake, tx, max_frame, &mut bad) {
                return;
            }
            if feed.redial_at.get().is_some_and(|t| t <= Instant::now()) {
                feed.redial_at.set(None);
                if let Err(e) = bus::sockets::redial(&feed.sub, &feed.publish) {
                    tracing::error!(publisher = %feed.publish, "cannot dial the publisher again: {e}");
                }
            }
        }
    }
}

/// Hand what one subscription has ready to the serve loop; false once the loop is gone.
fn take(
    feed: &Feed,
    from: usize,
    data: bool,
    shake: bool,
    tx: &mpsc::Sender<Inbound>,
    max_frame: usize,
    bad: &mut BadFrames,
) -> bool {
    let send = |msg| tx.blocking_send(Inbound { from, msg }).is_ok();
    // Told before any action received after it, so the serve loop holds those back until
    // it has caught up.
    if shake {
        let told = feed.watch.drain_all();
        if told.refused && feed.redial_at.get().is_none() {
            tracing::warn!(publisher = %feed.publish, after_s = REDIAL.as_secs_f64(), "the publisher refused our key (not accepted there yet?): dialing again");
            feed.redial_at.set(Some(Instant::now() + REDIAL));
        }
        if told.lost && !send(Msg::Lost) {
            return false;
        }
        if told.shook && !send(Msg::Connected) {
            return false;
        }
    }
    if !data {
        return true;
    }
    let mut frames = Vec::new();
    // A tick is handed over after the frames received before it, never ahead of them.
    let flush =
        |frames: &mut Vec<Vec<u8>>| frames.is_empty() || send(Msg::Frames(std::mem::take(frames)));
    while let Ok(parts) = feed.sub.recv_multipart(zmq::DONTWAIT) {
        let mut parts = parts;
        if let Some(tick) = tick(&parts) {
            if !flush(&mut frames) || !send(tick) {
                return false;
            }
            continue;
        }
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
        frames.extend(frame);
        if frames.len() >= BATCH && !flush(&mut frames) {
            return false;
        }
    }
    flush(&mut frames)
}

/// A tick, checked: three frames, a topic we can read, `tick`, 8 bytes of seq.
fn tick(parts: &[Vec<u8>]) -> Option<Msg> {
    let [topic, mid, seq] = parts else {
        return None;
    };
    let topic = std::str::from_utf8(topic).ok()?;
    let seq: [u8; 8] = seq.as_slice().try_into().ok()?;
    (mid == TICK).then(|| Msg::Tick {
        topic: topic.to_string(),
        last: u64::from_be_bytes(seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, groups: &[&str]) -> Config {
        Config {
            publishers: vec![crate::Publisher {
                publish: "tcp://127.0.0.1:1".into(),
                replay: None,
            }],
            managers: Vec::new(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            max_frame: 1024,
            state: None,
            graphviz: None,
            converged_timeout: std::time::Duration::from_secs(1),
            security: bus::secure::Security::Insecure,
            sign_key: None,
            policy: crate::Policy::strict(),
            http: None,
        }
    }

    #[test]
    fn topics_are_all_host_then_groups_and_bad_names_are_a_config_error() {
        assert_eq!(
            subscriptions(&config("web1", &["db"])).unwrap(),
            ["all/", "host/web1/", "group/db/"]
        );
        let mut none = config("web1", &[]);
        none.publishers.clear();
        let mut twice = config("web1", &[]);
        twice.publishers.push(twice.publishers[0].clone());
        for bad in [config("web/1", &[]), config("web1", &["a/b"]), none, twice] {
            assert!(matches!(subscriptions(&bad), Err(ActorError::Config(_))));
        }
    }
}
