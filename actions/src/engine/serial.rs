//! The hasher for node serials. Serials are unique counters, so they can hash as
//! themselves: SipHash, the std default, costs milliseconds on a 10k-resource swap, and
//! there is nothing for an attacker to collide.

/// A `HashMap` hasher for maps keyed by node serial.
pub(super) type BySerial = std::hash::BuildHasherDefault<SerialHasher>;

#[derive(Default)]
pub(super) struct SerialHasher(u64);

impl std::hash::Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        // Spread the counter's low bits over the word the table takes its buckets from.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
