//! Test-only PKI: a root CA, an intermediate and leaves made with rcgen, so certificate and
//! server tests build exactly the chains they need.

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certs::CertBundle;

/// A root and an intermediate CA.
pub(crate) struct Pki {
    pub(crate) root: rcgen::Certificate,
    root_key: KeyPair,
    pub(crate) intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

/// A leaf made by [`Pki::leaf`].
pub(crate) struct Leaf {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let root_key = KeyPair::generate().expect("P-256 key generation");
        let root = ca_params("Test Root CA")
            .self_signed(&root_key)
            .expect("self-signed root");
        let intermediate_key = KeyPair::generate().expect("P-256 key generation");
        let intermediate = ca_params("Test Intermediate CA")
            .signed_by(&intermediate_key, &root, &root_key)
            .expect("intermediate signed by root");
        Pki {
            root,
            root_key,
            intermediate,
            intermediate_key,
        }
    }

    /// A leaf for `names`, signed by the intermediate, valid from `not_before` to `not_after`.
    pub(crate) fn leaf_between(&self, names: &[&str], not_before: SystemTime, not_after: SystemTime) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key = KeyPair::generate().expect("P-256 key generation");
        let cert = params
            .signed_by(&key, &self.intermediate, &self.intermediate_key)
            .expect("leaf signed by intermediate");
        Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf valid for a day around now.
    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        self.leaf_between(names, now - day, now + day)
    }

    /// A leaf signed directly by the root (for "unrelated" and "other CA" cases).
    pub(crate) fn root_signed_leaf(&self, names: &[&str]) -> Leaf {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("valid names");
        let key = KeyPair::generate().expect("P-256 key generation");
        let cert = params
            .signed_by(&key, &self.root, &self.root_key)
            .expect("leaf signed by root");
        Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// The full bundle for a leaf: leaf, intermediate, root.
    pub(crate) fn bundle(&self, leaf: &Leaf) -> CertBundle {
        CertBundle {
            chain: vec![
                leaf.cert.clone(),
                self.intermediate.der().clone(),
                self.root.der().clone(),
            ],
            key: leaf.key.clone_key(),
            unrelated: Vec::new(),
        }
    }
}
