//! The order-independent digest of a room's materialised state.

use serde::{Deserialize, Serialize};

/// A 128-bit digest: the XOR of the hashes of every state record, so it depends on the state
/// alone, not on the order the changes arrived in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest(pub [u8; 16]);

impl Digest {
    pub fn toggle(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a ^= b;
        }
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad digest"))
    }
}

/// The hash a state record contributes to its room's digest. It covers the record's address and
/// its canonical JSON text (serde_json maps are sorted), so equal states hash equal on every node.
pub fn state_hash(stream: &str, key: &str, json: &str) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(stream.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(json.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Digest(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_toggling_twice_cancels() {
        let d = state_hash("s", "k", r#"{"a":[1,2],"b":1}"#);
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        let mut x = d;
        x.toggle(&d);
        assert_eq!(x, Digest::default());
        assert_ne!(d, state_hash("s", "k2", r#"{"a":[1,2],"b":1}"#));
    }
}
