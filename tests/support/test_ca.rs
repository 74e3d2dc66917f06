//! A test certificate authority (rcgen): a root that signs leaf certificates, written as
//! PEM files, for the TLS tests of several test binaries (offload, LDAP over TLS).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A root CA that signs leaf certificates, written as PEM files into a directory.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate file (for `-CAfile`, `--cacert`).
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    /// A new CA whose files go to `dir`.
    pub fn new(dir: &Path, cn: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join(format!("{cn}.ca.pem").replace(' ', "_"));
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf for `name` valid from `not_before` to `not_after`; returns (cert, key) files.
    pub fn leaf_between(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let c = self.dir.join(format!("{name}.crt"));
        let k = self.dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A leaf for `name` valid for a day around now.
    pub fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        self.leaf_between(name, now - day, now + day)
    }
}
