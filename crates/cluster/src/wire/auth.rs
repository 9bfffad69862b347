//! Challenge-response with the pool secret: the server sends a fresh nonce on every
//! connection, the client's `Hello` carries a keyed blake3 over it and its own nonce, and the
//! server answers with a keyed blake3 over both the other way round. A captured `Hello`
//! replayed on a new connection meets a new server nonce and fails.

/// Keyed blake3 over length-prefixed parts under a domain tag, so no two inputs collide.
fn mac(secret: &[u8; 32], tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(tag.as_bytes());
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

pub fn hello_mac(
    secret: &[u8; 32],
    server_nonce: &[u8; 32],
    client_nonce: &[u8; 32],
    pool: &str,
    host: &str,
) -> [u8; 32] {
    let parts: [&[u8]; 4] = [server_nonce, client_nonce, pool.as_bytes(), host.as_bytes()];
    mac(secret, "foreshard FSX1 hello", &parts)
}

pub fn server_mac(
    secret: &[u8; 32],
    server_nonce: &[u8; 32],
    client_nonce: &[u8; 32],
    host: &str,
) -> [u8; 32] {
    let parts: [&[u8]; 3] = [client_nonce, server_nonce, host.as_bytes()];
    mac(secret, "foreshard FSX1 server", &parts)
}

/// Constant-time comparison (blake3::Hash's `==`).
pub fn macs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_depend_on_secret_nonces_and_direction() {
        let (s, n1, n2) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let m = hello_mac(&s, &n1, &n2, "pool", "h1");
        assert!(macs_equal(&m, &hello_mac(&s, &n1, &n2, "pool", "h1")));
        assert!(!macs_equal(
            &m,
            &hello_mac(&[9u8; 32], &n1, &n2, "pool", "h1")
        ));
        assert!(!macs_equal(&m, &hello_mac(&s, &n2, &n2, "pool", "h1")));
        assert!(!macs_equal(&m, &hello_mac(&s, &n1, &n2, "poolh", "1")));
        assert!(!macs_equal(&m, &server_mac(&s, &n1, &n2, "h1")));
    }
}
