//! Host partitioning: which live member processes a host's events.
//!
//! The owner of a host is its rendezvous (highest-random-weight) winner over the live members:
//! each member scores `hash(member, host)` and the highest score wins. Every manager computes it
//! alone from the same member set, so they agree as soon as they see the same members; when a
//! member leaves, only the hosts it owned move (each to its runner-up), and a member that joins
//! takes about 1/N of the hosts from the others, nothing else moves.
//!
//! The hash is spelled out here (FNV-1a over both names with a separator, then the
//! splitmix64 finaliser to spread the bits), not `std`'s hasher, whose output may change
//! between Rust releases: two managers built by different compilers must still agree.

use crate::{Cluster, ClusterError, Mirror};
use std::time::Duration;

/// The score of `member` for `host`.
pub fn score(member: &str, host: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xff]).chain(host.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone are weak.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `host` among `members`: the highest score, ties to the smaller id. None when
/// there is no member.
pub fn owner<'a>(host: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .map(|m| (score(m, host), m))
        .max_by(|(sa, ma), (sb, mb)| sa.cmp(sb).then(mb.cmp(ma)))
        .map(|(_, m)| m)
}

/// The live members, from a watch on `<prefix>/members/`, and who owns each host.
pub struct Members {
    mirror: Mirror,
    prefix: String,
}

impl Members {
    /// Read the members and keep watching them.
    pub fn watch(cluster: &Cluster) -> Result<Members, ClusterError> {
        let prefix = cluster.key("members/");
        Ok(Members {
            mirror: Mirror::start(cluster, &prefix)?,
            prefix,
        })
    }

    /// The live member ids, in order.
    pub fn ids(&self) -> Vec<String> {
        let p = self.prefix.as_bytes();
        self.mirror.read(|s| {
            s.scan(p)
                .filter_map(|(k, _)| std::str::from_utf8(&k[p.len()..]).ok())
                .map(str::to_string)
                .collect()
        })
    }

    /// What member `id` announced when it joined.
    pub fn info(&self, id: &str) -> Option<Vec<u8>> {
        let key = format!("{}{id}", self.prefix);
        self.mirror
            .read(|s| s.get(key.as_bytes()).map(|(v, _)| v.to_vec()))
    }

    /// The member that owns `host` now, as this process sees the members.
    pub fn owner(&self, host: &str) -> Option<String> {
        let p = self.prefix.as_bytes();
        self.mirror.read(|s| {
            owner(
                host,
                s.scan(p)
                    .filter_map(|(k, _)| std::str::from_utf8(&k[p.len()..]).ok()),
            )
            .map(str::to_string)
        })
    }

    /// Wait until the member set satisfies `ready` (or `timeout`); whether it does.
    pub fn wait_for(&self, timeout: Duration, mut ready: impl FnMut(&[String]) -> bool) -> bool {
        let p = self.prefix.as_bytes().to_vec();
        self.mirror.wait_for(timeout, |s| {
            let ids: Vec<String> = s
                .scan(&p)
                .filter_map(|(k, _)| std::str::from_utf8(&k[p.len()..]).ok())
                .map(str::to_string)
                .collect();
            ready(&ids)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hosts() -> Vec<String> {
        (0..3000).map(|i| format!("web{i}.example")).collect()
    }

    #[test]
    fn spread_is_even_and_stable() {
        let members = ["m1", "m2", "m3"];
        let mut count: HashMap<&str, usize> = HashMap::new();
        for h in hosts() {
            *count.entry(owner(&h, members).unwrap()).or_default() += 1;
        }
        for m in members {
            let n = count[m];
            assert!((800..1200).contains(&n), "{m} owns {n} of 3000: {count:?}");
        }
        // Pinned: another build must give the same owners.
        assert_eq!(score("m1", "web1"), score("m1", "web1"));
        assert_eq!(owner("web1", members), owner("web1", ["m3", "m2", "m1"]));
    }

    #[test]
    fn only_the_leavers_hosts_move() {
        let before = ["m1", "m2", "m3"];
        let after = ["m1", "m3"];
        let mut moved = 0;
        for h in hosts() {
            let a = owner(&h, before).unwrap();
            let b = owner(&h, after).unwrap();
            if a == "m2" {
                moved += 1;
                assert_ne!(b, "m2");
            } else {
                assert_eq!(a, b, "{h} moved from {a} though {a} stayed");
            }
        }
        assert!(moved > 0);
        assert_eq!(owner("x", std::iter::empty::<&str>()), None);
    }

    #[test]
    fn the_hash_is_pinned() {
        // A change here re-partitions every cluster on upgrade: only on purpose.
        assert_eq!(score("m1", "web1"), 0xb572_7a50_e2a5_36e3);
    }
}
