//! TLS for gatehouse: the sans-IO ClientHello reader for passthrough routing, certificate
//! and key files, the rustls server configuration for offload, and the `gatehouse cert`
//! commands.
//!
//! Owns everything about certificates, keys, ticket keys and rustls configuration. It does
//! not touch sockets or sessions: the engine feeds bytes to [`client_hello::read`] and
//! drives the `rustls::ServerConnection`s built from [`server::ServerTls`].

pub mod certs;
pub mod cli;
pub mod client_hello;
pub mod rotation;
pub mod server;
pub mod ticket_keys;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, KeyProvider};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;

/// The crypto provider every TLS object of gatehouse uses: ring for the record layer and
/// ECDSA keys, aws-lc-rs for RSA private keys (a TLS 1.3 RSA-2048 handshake costs about
/// 0.69x of the CPU it costs with ring) and for the key exchange (its X25519 makes a full
/// ECDSA handshake about 8% cheaper than ring's here; it also brings X25519MLKEM768, offered
/// last) and for random numbers. aws-lc-rs's record-layer keys would add about 450 bytes to every idle TLS
/// connection: see the provider measurements in BENCHMARKS.md. Cipher suites are in the
/// server's order of preference ([`suite_rank`]). One place to switch providers; passed
/// explicitly, never installed process-wide, so nothing depends on an install order
/// (rustls has both providers built in, so it has no default to pick).
pub fn provider() -> Arc<CryptoProvider> {
    let aws_lc = rustls::crypto::aws_lc_rs::default_provider();
    let mut provider = CryptoProvider {
        key_provider: &SigningKeys,
        kx_groups: aws_lc.kx_groups,
        // aws-lc-rs draws from a user-space DRBG; ring makes a getrandom(2) call per draw
        // (eight per TLS 1.3 handshake with its two tickets).
        secure_random: aws_lc.secure_random,
        ..rustls::crypto::ring::default_provider()
    };
    provider.cipher_suites.sort_by_key(suite_rank);
    Arc::new(provider)
}

/// The default order of cipher suites: TLS 1.3 before 1.2, then AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305. AES-128 first as Go's and BoringSSL's servers do: as safe in practice,
/// and its SHA-256 runs on this kind of CPU's SHA extensions where AES-256's SHA-384 does
/// not (about 7% of a full handshake here), with fewer AES rounds per record. A client
/// that leads with ChaCha20 (a CPU without AES instructions) still gets it: see
/// `server::ServerTls::for_hello`.
pub fn suite_rank(suite: &rustls::SupportedCipherSuite) -> (bool, u8) {
    let name = format!("{:?}", suite.suite());
    let aead = if name.contains("AES_128") {
        0
    } else if name.contains("AES_256") {
        1
    } else {
        2
    };
    (!name.starts_with("TLS13_"), aead)
}

/// Loads ECDSA keys with ring (a little faster than aws-lc-rs at P-256 signing here) and
/// every other key (RSA, Ed25519) with aws-lc-rs.
#[derive(Debug)]
struct SigningKeys;

impl KeyProvider for SigningKeys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        match rustls::crypto::ring::sign::any_ecdsa_type(&key_der) {
            Ok(key) => Ok(key),
            Err(_) => rustls::crypto::aws_lc_rs::default_provider()
                .key_provider
                .load_private_key(key_der),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_pki;

#[cfg(test)]
mod tests {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{SignatureAlgorithm, SignatureScheme};

    /// An RSA-2048 key made for this test with `openssl genpkey` (PKCS#8).
    const RSA_2048: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDPnY/DIUcukmzo
2K9rPMrsjiT4DVpJV6PmYmxzPDonX+Fo30F5sUWfqVOENEyKPkhyOXj6k5YJ82bF
piLLih1f5Sf9wF5ivep08FqVNVUnyRwFfQsYCkXFfhRJc4ZKVj1+PjALnQ2752i4
ZJfze27b5MsqwhoQeyhYNqdwJeVonDRqeZ49i9CPLYTDoGdiDFMZWzSfjcIsFlqt
NMHumWolhclX/PUX4ang7NNjcFOX+kL97iuk2njd6rMJleU1mSLamrnWx5153sNo
k6Xx4e1XNhVTGY+69SxQs/gNNQj5Wwb1iSz9k/qzniEiYTLijaMaRcTyzW0C0Low
yYT1RHFLAgMBAAECggEADjJujb/dT7x4kRWcLT+besCfm4zCM0i4bv0lAF5Kdb3T
Oqolno42PhxEl0JCR6PJrXHrqWrlNCn+SZ66O2Pm7VNMwEfizGrDORrkftaGS7Gv
ZlquIwc0zTP5bCpnsPajvtm+zFSBh2tkGFPcpiw3IPdMw1BBmwXo9NtL6NnWjagd
O61f92U0OFMft7mQMo2sYQuumYdoVvBUobLKrvj/+R6V2tQgVgdvFSymUGnO+nk+
4EsAgkUXvo3RksSACx3h3O5YMdLaH19EDcQKUU6YTq6p8e6hlFOQuNd7JJKU3xe7
RBD8ImOIYrK9qg4v74LvLXnn5DCYSS2HSt9/pCGtEQKBgQD3aErRXJyS60FXXTU0
THzCy0EewueZc1ncZz8cNY/YcgZOwi1Eht79kApoJKhnbbZQTkjLEy/pDI9U+ls4
TVjKu8V4ZLIDryrvidbWVZi1fnuVq7f/vOEG0qJiK1pzcR941ZA/ECutServlnst
mvHuU0R0Km6fKFLQMOywkkVrcQKBgQDW03pd5n6OwR8oaQ8Xiz45LcuA3wTvUjCB
7XNiKKzcRPXP54ciF0r8QSIyvwuXfdprpLa5wI8c7wAiMFtVGfQHL9DDpkr1F15u
jy/3uFa4rF+i1ik84UBi0fF7mi3m+wui7fI8BdF65hRlvZrKB/OF6Za68RJfu165
6CsPTWnyewKBgQCAKvAve5nFZshn2Op6GHG9fAxVQkU2spJH4tjH5VuKlq97144Z
5QDaPOeXQf5X7nc3LQb65Qq54X7TWAsvpKouBI5tK0UpMXK9uxun15oP0+F0DQx6
GMA+h5oF302xZlYWhBSBBwCJejSSP9O6MX3JqCtbPqwmGX6lSeMkKfJ6kQKBgQCi
Ccfd9hL16JNw7rW0g5H+nR1H6nCVd8Ag8JM8sgOY7ecf17qlKz6jQRnjfxjmPsa2
tPoi6CzKnTfTkfgCG95mYVmticw2TFctO5Hp30CCcXp9n95hDmJ7Z3InUidXd3rS
fXpebeERO2SdTUPpKdA07PmFrnq2fOU5gvafxzun6wKBgQCFAxPqdbzCdOtzdd3X
/leG27J/14+SUwEeibr7rdD4Qf0hFY6GWYgdGCncrCnKAZL+eqqGOEToGNR7ntpP
E0SeoEUE5raaZFyEprlPT0TJzBT+f6FFsjeleDqE/vJSU7ruiTDdf5S/SXy8kLsp
9hnMSmoVXQd3/d8hfRI85RnqLw==
-----END PRIVATE KEY-----
";

    fn sign_with(key: PrivateKeyDer<'static>, scheme: SignatureScheme) -> Vec<u8> {
        let key = super::provider()
            .key_provider
            .load_private_key(key)
            .expect("key loads");
        let signer = key.choose_scheme(&[scheme]).expect("scheme offered");
        signer.sign(b"handshake transcript").expect("signs")
    }

    #[test]
    fn rsa_keys_sign_through_the_fallback() {
        let key = rustls_pemfile::private_key(&mut RSA_2048.as_bytes())
            .unwrap()
            .unwrap();
        let provider = super::provider();
        let loaded = provider.key_provider.load_private_key(key.clone_key()).unwrap();
        assert_eq!(loaded.algorithm(), SignatureAlgorithm::RSA);
        // RSA-PSS-2048: one 256-byte signature, different each time (random salt).
        let a = sign_with(key.clone_key(), SignatureScheme::RSA_PSS_SHA256);
        let b = sign_with(key, SignatureScheme::RSA_PSS_SHA256);
        assert_eq!(a.len(), 256);
        assert_ne!(a, b);
    }

    #[test]
    fn ecdsa_keys_sign_with_ring() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
        let provider = super::provider();
        let loaded = provider.key_provider.load_private_key(key.clone_key()).unwrap();
        assert_eq!(loaded.algorithm(), SignatureAlgorithm::ECDSA);
        assert!(!sign_with(key, SignatureScheme::ECDSA_NISTP256_SHA256).is_empty());
    }

    #[test]
    fn a_key_neither_provider_reads_is_an_error() {
        let junk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        assert!(super::provider().key_provider.load_private_key(junk).is_err());
    }

    #[test]
    fn default_order_of_suites_and_groups() {
        let p = super::provider();
        let suites: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            &suites[..3],
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(suites[3..].iter().all(|s| !s.starts_with("TLS13_")), "{suites:?}");
        assert!(suites[3].contains("AES_128_GCM"), "{suites:?}");
        let groups: Vec<String> = p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect();
        assert_eq!(groups, ["X25519", "secp256r1", "secp384r1", "X25519MLKEM768"]);
    }
}
