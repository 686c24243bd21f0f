//! Short ids for people: 12 hex characters that name a task (or any object) uniquely
//! enough to type, show in tables and use as a container's hostname.
//!
//! Task ids are structured (`<service id>.<slot>.<generation>`), so their first 12
//! characters are the same for every replica; the short id of a task is instead the
//! first 12 hex digits of a 64-bit FNV-1a hash of its whole id, mixed with MurmurHash3's
//! finalizer so that ids differing in their last character (generations) look nothing
//! alike: stable, the same on master, agent and skiffctl, and DNS-safe. Ids without dots (nodes, services) are
//! random hex already and are shortened by taking their prefix.

/// The 12-character short form of `id`.
pub fn short_id(id: &str) -> String {
    if !id.contains('.') {
        return id.chars().take(12).collect();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    format!("{hash:016x}").chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_one_service_get_different_short_ids() {
        let a = short_id("e70da3cefffc0123456789abcdef0123.1.1");
        let b = short_id("e70da3cefffc0123456789abcdef0123.2.1");
        let c = short_id("e70da3cefffc0123456789abcdef0123.1.2");
        assert_eq!(a.len(), 12);
        assert!(a != b && a != c && b != c, "{a} {b} {c}");
        // Neighbouring generations share no prefix a person would confuse.
        assert_ne!(a[..4], c[..4], "{a} {c}");
        assert!(a.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(a, short_id("e70da3cefffc0123456789abcdef0123.1.1"));
    }

    #[test]
    fn plain_ids_keep_their_prefix() {
        assert_eq!(short_id("7686836228bd4f00aa"), "7686836228bd");
        assert_eq!(short_id("abc"), "abc");
    }
}
