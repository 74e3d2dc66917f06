//! Certificates and private keys: loading (all-in-one PEM in any order, separate PEM files,
//! PKCS#12/PFX), ordering a chain leaf-first, validation for `gatehouse check`, and making
//! new ones (self-signed certificates for a node's names, kept on disk and reused; CSRs
//! for a third-party CA).
//!
//! Owns the file formats and the checks. It knows nothing of listeners or rustls server
//! settings (`super::server` turns a [`CertBundle`] into a `CertifiedKey`). Times are passed
//! in, so every check is testable without waiting for a certificate to expire.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest certificate or key file read (a chain of a few certificates is under 20 KiB).
pub const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Validity of generated self-signed certificates: one year, regenerated when it runs out.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A self-signed certificate is regenerated at start when it expires within this margin,
/// so a node never starts with a certificate that dies the next day.
pub const SELF_SIGNED_RENEW_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// A certificate chain, leaf first, with the leaf's private key.
#[derive(Debug)]
pub struct CertBundle {
    /// Leaf first, then each certificate's issuer (RFC 8446 §4.4.2 order).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
    /// Certificates found in the input that belong to no chain from the leaf; left out of
    /// `chain` and reported by [`CertBundle::problems`].
    pub unrelated: Vec<CertificateDer<'static>>,
}

impl Clone for CertBundle {
    fn clone(&self) -> Self {
        CertBundle {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            unrelated: self.unrelated.clone(),
        }
    }
}

/// Why a certificate or key could not be loaded or made.
#[derive(Debug)]
pub enum CertError {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file larger than [`MAX_FILE_LEN`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A file that is not PEM, or a PEM section that does not decode.
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// No certificate in the input.
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the file seems to hold instead, and what to do ("" when nothing to say).
        hint: &'static str,
    },
    /// No private key in the input.
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// More than one private key in the input.
    SeveralPrivateKeys {
        /// The file.
        path: PathBuf,
    },
    /// An `ENCRYPTED PRIVATE KEY` block: decrypt it first (`openssl pkey -in F -out F2`).
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that is not valid DER X.509.
    BadCertificate {
        /// Its position in the input, from 1.
        position: usize,
        /// What the parser said.
        detail: String,
    },
    /// A PKCS#12 file that does not open with this password or does not parse.
    BadPkcs12 {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        detail: String,
    },
    /// The PKCS#12 password's environment variable is not set (or not UTF-8).
    PasswordUnset {
        /// The PKCS#12 file.
        path: PathBuf,
        /// The variable's name.
        var: String,
    },
    /// No certificate in the input carries the private key's public key.
    KeyMismatch,
    /// A key rustls cannot sign with (unsupported algorithm or curve).
    UnsupportedKey {
        /// What rustls said.
        detail: String,
    },
    /// rcgen could not make a key, certificate or CSR.
    Generate {
        /// What rcgen said.
        detail: String,
    },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CertError::TooLarge { path } => {
                write!(
                    f,
                    "{}: larger than {MAX_FILE_LEN} bytes, not a certificate file",
                    path.display()
                )
            }
            CertError::BadPem { path, detail } => write!(f, "{}: bad PEM: {detail}", path.display()),
            CertError::NoCertificate { path, hint } => {
                write!(f, "{}: no certificate found{hint}", path.display())
            }
            CertError::NoPrivateKey { path } => write!(f, "{}: no private key found", path.display()),
            CertError::SeveralPrivateKeys { path } => {
                write!(
                    f,
                    "{}: more than one private key; keep only the leaf's",
                    path.display()
                )
            }
            CertError::EncryptedKey { path } => write!(
                f,
                "{}: the private key is encrypted; decrypt it with `openssl pkey -in FILE -out NEW`",
                path.display()
            ),
            CertError::BadCertificate { position, detail } => {
                write!(f, "certificate #{position} is not valid X.509: {detail}")
            }
            CertError::BadPkcs12 { path, detail } => {
                write!(
                    f,
                    "{}: cannot open PKCS#12 (wrong password?): {detail}",
                    path.display()
                )
            }
            CertError::PasswordUnset { path, var } => write!(
                f,
                "{}: its password variable {var} is not set in gatehouse's environment (or is not UTF-8)",
                path.display()
            ),
            CertError::KeyMismatch => write!(f, "the private key does not belong to any of the certificates"),
            CertError::UnsupportedKey { detail } => write!(f, "unsupported private key: {detail}"),
            CertError::Generate { detail } => write!(f, "cannot generate: {detail}"),
        }
    }
}

impl std::error::Error for CertError {}

/// Something wrong with a loaded certificate or chain, for `gatehouse check` and
/// `gatehouse cert show`. [`CertProblem::is_fatal`] says whether a listener may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    /// `notAfter` is in the past.
    Expired {
        /// Subject of the certificate.
        subject: String,
        /// Its `notAfter`, formatted.
        not_after: String,
    },
    /// `notBefore` is in the future.
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Its `notBefore`, formatted.
        not_before: String,
    },
    /// The leaf has no subjectAltName: browsers and rustls ignore the CN (RFC 6125 §6.4.4).
    NoSubjectAltName,
    /// A name the node serves that the leaf does not cover.
    NameNotCovered {
        /// The name.
        name: String,
    },
    /// Certificates not in leaf-first order (position from 1, in the input's order).
    OutOfOrder {
        /// What is out of place.
        detail: String,
    },
    /// A certificate that issues no other and is not the leaf.
    Unrelated {
        /// Its subject.
        subject: String,
    },
    /// The chain stops at an intermediate whose issuer is not in the file; fine when
    /// clients have that issuer, a classic cause of "unable to get local issuer" otherwise.
    IncompleteChain {
        /// Issuer missing.
        issuer: String,
    },
    /// The leaf is a CA certificate (basicConstraints CA:TRUE); rustls clients refuse it.
    LeafIsCa,
}

impl CertProblem {
    /// Whether a listener must refuse the certificate (expired, not yet valid, leaf is a CA);
    /// the others are warnings.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CertProblem::Expired { .. } | CertProblem::NotYetValid { .. } | CertProblem::LeafIsCa
        )
    }
}

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertProblem::Expired { subject, not_after } => {
                write!(f, "expired: {subject} (not after {not_after})")
            }
            CertProblem::NotYetValid { subject, not_before } => {
                write!(f, "not yet valid: {subject} (not before {not_before})")
            }
            CertProblem::NoSubjectAltName => write!(f, "the certificate has no subjectAltName"),
            CertProblem::NameNotCovered { name } => write!(f, "the certificate does not cover {name}"),
            CertProblem::OutOfOrder { detail } => write!(f, "chain order: {detail}"),
            CertProblem::Unrelated { subject } => write!(f, "certificate not part of the chain: {subject}"),
            CertProblem::IncompleteChain { issuer } => {
                write!(f, "chain incomplete: issuer {issuer} not included")
            }
            CertProblem::LeafIsCa => write!(
                f,
                "the leaf certificate is a CA certificate (basicConstraints CA:TRUE, as `openssl req -x509` makes by default), which rustls and webpki clients refuse; make it with `gatehouse cert self-signed`, or add `-addext basicConstraints=critical,CA:FALSE`"
            ),
        }
    }
}

/// The fields of one certificate that people and checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// subjectAltName entries as `DNS:name` or `IP:address`.
    pub sans: Vec<String>,
    /// `notBefore`, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Subject and issuer are the same name.
    pub self_issued: bool,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    spki: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate; `position` (from 1) only labels errors.
    pub fn parse(der: &[u8], position: usize) -> Result<CertInfo, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate {
            position,
            detail: e.to_string(),
        })?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let subject_raw = cert.subject().as_raw().to_vec();
        let issuer_raw = cert.issuer().as_raw().to_vec();
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            self_issued: subject_raw == issuer_raw,
            subject_raw,
            issuer_raw,
            spki: cert.public_key().raw.to_vec(),
        })
    }

    /// Whether this certificate's subject is `other`'s issuer (names compared as DER).
    pub fn issues(&self, other: &CertInfo) -> bool {
        self.subject_raw == other.issuer_raw
    }

    /// Whether the subjectAltName covers `name`: an exact DNS name (case-insensitive), a
    /// wildcard `*.example.com` for one left-most label (RFC 6125 §6.4.3), or an IP address.
    pub fn covers(&self, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self
                .sans
                .iter()
                .any(|s| s.strip_prefix("IP:").and_then(|a| a.parse::<IpAddr>().ok()) == Some(ip));
        }
        let name = name.to_ascii_lowercase();
        self.sans
            .iter()
            .filter_map(|s| s.strip_prefix("DNS:"))
            .any(|dns| {
                let dns = dns.to_ascii_lowercase();
                match dns.strip_prefix("*.") {
                    Some(suffix) => name
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                    None => dns == name,
                }
            })
    }

    /// Problems with the validity period at `now`.
    pub fn validity_problems(&self, now: SystemTime) -> Vec<CertProblem> {
        let now = unix_seconds(now);
        let mut problems = Vec::new();
        if now > self.not_after_unix {
            problems.push(CertProblem::Expired {
                subject: self.subject.clone(),
                not_after: format_unix(self.not_after_unix),
            });
        }
        if now < self.not_before_unix {
            problems.push(CertProblem::NotYetValid {
                subject: self.subject.clone(),
                not_before: format_unix(self.not_before_unix),
            });
        }
        problems
    }
}

impl CertBundle {
    /// Builds a bundle from certificates in any order and the leaf's key: the leaf is the
    /// certificate carrying the key's public key, then each issuer follows its subject.
    pub fn from_parts(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertBundle, CertError> {
        let infos = certs
            .iter()
            .enumerate()
            .map(|(i, c)| CertInfo::parse(c, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        let spki = key_spki(&key)?;
        let leaf = infos
            .iter()
            .position(|i| i.spki == spki)
            .ok_or(CertError::KeyMismatch)?;
        let order = chain_from(&infos, leaf);
        let chain = order.iter().map(|&i| certs[i].clone()).collect();
        let unrelated = (0..certs.len())
            .filter(|i| !order.contains(i))
            .map(|i| certs[i].clone())
            .collect();
        Ok(CertBundle {
            chain,
            key,
            unrelated,
        })
    }

    /// The leaf's fields.
    pub fn leaf(&self) -> Result<CertInfo, CertError> {
        CertInfo::parse(&self.chain[0], 1)
    }

    /// Every problem a listener or an administrator should know about at `now`, given the
    /// names the node serves (empty: no name check). Fatal ones first.
    pub fn problems(&self, now: SystemTime, names: &[String]) -> Result<Vec<CertProblem>, CertError> {
        let infos = self
            .chain
            .iter()
            .enumerate()
            .map(|(i, c)| CertInfo::parse(c, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = &infos[0];
        let mut problems = Vec::new();
        for info in &infos {
            problems.extend(info.validity_problems(now));
        }
        if leaf.is_ca {
            problems.push(CertProblem::LeafIsCa);
        }
        if leaf.sans.is_empty() {
            problems.push(CertProblem::NoSubjectAltName);
        }
        for name in names {
            if !leaf.covers(name) {
                problems.push(CertProblem::NameNotCovered { name: name.clone() });
            }
        }
        if let Some(last) = infos.last() {
            if !last.self_issued && infos.len() > 1 {
                problems.push(CertProblem::IncompleteChain {
                    issuer: last.issuer.clone(),
                });
            }
        }
        for der in &self.unrelated {
            problems.push(CertProblem::Unrelated {
                subject: CertInfo::parse(der, 0).map(|i| i.subject).unwrap_or_default(),
            });
        }
        problems.sort_by_key(|p| !p.is_fatal());
        Ok(problems)
    }

    /// The rustls signing form: checks again that key and leaf match.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let provider = super::provider();
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map(Arc::new)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
                other => CertError::UnsupportedKey {
                    detail: other.to_string(),
                },
            })
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem_block("CERTIFICATE", c)).collect()
    }

    /// The key as PEM, in its own format (PKCS#8 `PRIVATE KEY`, PKCS#1 or SEC1).
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_block(label, self.key.secret_der())
    }

    /// Writes the chain (mode 0644) and the key (mode 0600), each atomically.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_atomic(key_path, self.key_pem().as_bytes(), 0o600)?;
        write_atomic(cert_path, self.chain_pem().as_bytes(), 0o644)
    }
}

/// Loads one PEM file holding the private key, the certificate and intermediates in any
/// order (the "all-in-one" PEM of the guide's enterprise flow).
pub fn load_pem_bundle(path: &Path) -> Result<CertBundle, CertError> {
    let (certs, keys) = read_pem_with_certificates(path)?;
    CertBundle::from_parts(certs, single_key(path, keys)?)
}

/// Loads a certificate file (chain in any order) and a separate key file.
pub fn load_pem_pair(cert_path: &Path, key_path: &Path) -> Result<CertBundle, CertError> {
    let (certs, _) = read_pem_with_certificates(cert_path)?;
    let (_, keys) = read_pem(key_path)?;
    CertBundle::from_parts(certs, single_key(key_path, keys)?)
}

/// Loads a PKCS#12/PFX file with its password (PBES2 with AES as OpenSSL 3 writes by
/// default, or the legacy 3DES/RC2 encryption).
pub fn load_pkcs12(path: &Path, password: &str) -> Result<CertBundle, CertError> {
    let data = read_bounded(path)?;
    let archive =
        p12_keystore::Pkcs12Archive::from_pkcs12(&data, password).map_err(|e| CertError::BadPkcs12 {
            path: path.into(),
            detail: e.to_string(),
        })?;
    let certs: Vec<CertificateDer<'static>> = archive
        .certs
        .iter()
        .map(|bag| CertificateDer::from(bag.cert.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.into(),
            hint: " in the PKCS#12 file",
        });
    }
    let keys: Vec<PrivateKeyDer<'static>> = archive
        .keys
        .iter()
        .map(|bag| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bag.key.as_der().to_vec())))
        .collect();
    CertBundle::from_parts(certs, single_key(path, keys)?)
}

/// Reads every certificate of a PEM file in file order (for `cert show`, which needs the
/// order as given, and keys are not required).
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    Ok(read_pem_with_certificates(path)?.0)
}

/// Problems with the order of certificates as they appear in a file: the leaf (the
/// certificate no other one names as issuer) must come first, and each certificate must be
/// followed by its issuer when the file holds it.
pub fn chain_order_problems(infos: &[CertInfo]) -> Vec<CertProblem> {
    let mut problems = Vec::new();
    if infos.len() < 2 {
        return problems;
    }
    // The leaf: issues nothing in the file; with several such, the first non-CA one.
    let issues_nothing: Vec<usize> = (0..infos.len())
        .filter(|&i| !(0..infos.len()).any(|j| j != i && infos[i].issues(&infos[j]) && !infos[j].self_issued))
        .collect();
    let leaf = issues_nothing
        .iter()
        .copied()
        .find(|&i| !infos[i].is_ca)
        .or(issues_nothing.first().copied())
        .unwrap_or(0);
    if leaf != 0 {
        problems.push(CertProblem::OutOfOrder {
            detail: format!(
                "the leaf ({}) is certificate #{}, not #1",
                infos[leaf].subject,
                leaf + 1
            ),
        });
    }
    let order = chain_from(infos, leaf);
    for pair in order.windows(2) {
        let (subject, issuer) = (pair[0], pair[1]);
        if issuer != subject + 1 {
            problems.push(CertProblem::OutOfOrder {
                detail: format!(
                    "certificate #{} ({}) is issued by #{} ({}), which should come right after it",
                    subject + 1,
                    infos[subject].subject,
                    issuer + 1,
                    infos[issuer].subject
                ),
            });
        }
    }
    for i in (0..infos.len()).filter(|i| !order.contains(i)) {
        problems.push(CertProblem::Unrelated {
            subject: infos[i].subject.clone(),
        });
    }
    problems
}

/// How [`ensure_self_signed`] got its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfSignedOutcome {
    /// The files on disk were valid for the names and reused.
    Reused,
    /// New files were written; `why` says what was wrong with the old ones (or that there
    /// were none).
    Generated {
        /// Reason for generating.
        why: String,
    },
}

/// Makes a self-signed certificate (ECDSA P-256, serverAuth) for `names` (DNS names or IP
/// addresses; the first is also the CN), valid from an hour before `now` for `validity`.
pub fn generate_self_signed(
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<CertBundle, CertError> {
    let gen = |e: rcgen::Error| CertError::Generate {
        detail: e.to_string(),
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen)?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "gatehouse self-signed");
    params.not_before = offset_time(now - Duration::from_secs(3600))?;
    params.not_after = offset_time(now + validity)?;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok(CertBundle {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        unrelated: Vec::new(),
    })
}

/// The first-start flow: reuses the certificate and key at these paths when they load,
/// match, cover `names` and stay valid beyond [`SELF_SIGNED_RENEW_MARGIN`]; otherwise
/// generates a new pair and writes it (key mode 0600). Called by the node at start and
/// reload for a listener without a configured certificate.
pub fn ensure_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
    now: SystemTime,
) -> Result<(CertBundle, SelfSignedOutcome), CertError> {
    let why = if !cert_path.exists() || !key_path.exists() {
        "no certificate on disk yet".to_string()
    } else {
        match load_pem_pair(cert_path, key_path) {
            Err(e) => format!("the files on disk do not load: {e}"),
            Ok(bundle) => match reuse_problem(&bundle, names, now) {
                None => {
                    // Tighten a key file someone loosened.
                    fs::set_permissions(key_path, fs::Permissions::from_mode(0o600)).map_err(|source| {
                        CertError::Io {
                            path: key_path.into(),
                            source,
                        }
                    })?;
                    return Ok((bundle, SelfSignedOutcome::Reused));
                }
                Some(why) => why,
            },
        }
    };
    let bundle = generate_self_signed(names, now, SELF_SIGNED_VALIDITY)?;
    bundle.write(cert_path, key_path)?;
    Ok((bundle, SelfSignedOutcome::Generated { why }))
}

/// A new key and a certificate signing request for a third-party CA.
#[derive(Debug, Clone)]
pub struct CsrOutput {
    /// `CERTIFICATE REQUEST` PEM.
    pub csr_pem: String,
    /// The new private key, PKCS#8 PEM; it never leaves the node.
    pub key_pem: String,
}

/// Makes a new ECDSA P-256 key and a CSR with subject `CN=cn` and subjectAltNames `sans`
/// (the CN is added to the SANs when missing, since clients only look at SANs).
pub fn generate_csr(cn: &str, sans: &[String]) -> Result<CsrOutput, CertError> {
    let gen = |e: rcgen::Error| CertError::Generate {
        detail: e.to_string(),
    };
    let mut names = sans.to_vec();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(cn)) {
        names.insert(0, cn.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(gen)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let csr = params.serialize_request(&key).map_err(gen)?;
    Ok(CsrOutput {
        csr_pem: csr.pem().map_err(gen)?,
        key_pem: key.serialize_pem(),
    })
}

/// Whether `name` can stand in a subjectAltName: an IP address, or a DNS name of letters,
/// digits and hyphens in labels of 1 to 63 characters (a `*.` wildcard first allowed).
pub fn check_subject_name(name: &str) -> Result<(), String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{name:?} is not a DNS name or IP address (1 to 253 characters)"
        ));
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a DNS name or IP address (labels of letters, digits and inner hyphens)"
            ));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, created with `mode`
/// (0600 for keys: never readable by others, not even for an instant).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.into(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Why an existing self-signed pair cannot be reused, or `None`.
fn reuse_problem(bundle: &CertBundle, names: &[String], now: SystemTime) -> Option<String> {
    let leaf = match bundle.leaf() {
        Ok(l) => l,
        Err(e) => return Some(e.to_string()),
    };
    if let Some(p) = leaf
        .validity_problems(now + SELF_SIGNED_RENEW_MARGIN)
        .into_iter()
        .next()
    {
        return Some(format!(
            "{p} (or within {} days)",
            SELF_SIGNED_RENEW_MARGIN.as_secs() / 86400
        ));
    }
    if let Some(p) = leaf.validity_problems(now).into_iter().next() {
        return Some(p.to_string());
    }
    names
        .iter()
        .find(|n| !leaf.covers(n))
        .map(|n| format!("it does not cover {n}"))
}

/// The chain from `leaf`: each next certificate is the issuer of the previous one, until a
/// self-issued certificate or an issuer not in `infos`.
fn chain_from(infos: &[CertInfo], leaf: usize) -> Vec<usize> {
    let mut order = vec![leaf];
    let mut current = leaf;
    while !infos[current].self_issued {
        match (0..infos.len()).find(|&i| !order.contains(&i) && infos[i].issues(&infos[current])) {
            Some(next) => {
                order.push(next);
                current = next;
            }
            None => break,
        }
    }
    order
}

/// The public key (SubjectPublicKeyInfo DER) of a private key, through the crypto provider.
fn key_spki(key: &PrivateKeyDer<'static>) -> Result<Vec<u8>, CertError> {
    let signing = super::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| CertError::UnsupportedKey {
            detail: e.to_string(),
        })?;
    signing
        .public_key()
        .map(|spki| spki.as_ref().to_vec())
        .ok_or_else(|| CertError::UnsupportedKey {
            detail: "its public key cannot be derived".into(),
        })
}

fn single_key(
    path: &Path,
    mut keys: Vec<PrivateKeyDer<'static>>,
) -> Result<PrivateKeyDer<'static>, CertError> {
    match keys.len() {
        0 => Err(CertError::NoPrivateKey { path: path.into() }),
        1 => Ok(keys.remove(0)),
        _ => Err(CertError::SeveralPrivateKeys { path: path.into() }),
    }
}

type PemItems = (Vec<CertificateDer<'static>>, Vec<PrivateKeyDer<'static>>);

fn read_pem(path: &Path) -> Result<PemItems, CertError> {
    parse_pem(path, &read_bounded(path)?)
}

/// [`read_pem`] of a file that must hold a certificate; without one, the error says what the
/// file seems to be (DER, PKCS#12, a lone key) and what to do.
fn read_pem_with_certificates(path: &Path) -> Result<PemItems, CertError> {
    let data = read_bounded(path)?;
    let (certs, keys) = parse_pem(path, &data)?;
    if !certs.is_empty() {
        return Ok((certs, keys));
    }
    let hint = if !keys.is_empty() {
        ": it holds a private key only (the certificate must be in another file)"
    } else if data.first() == Some(&0x30) {
        // An ASN.1 SEQUENCE: a DER certificate or a PKCS#12 archive, not PEM text.
        if x509_parser::parse_x509_certificate(&data).is_ok() {
            ": it is a DER certificate; convert it with `openssl x509 -inform der -in FILE -out FILE.pem`"
        } else {
            ": it is binary (PKCS#12/PFX? use `pfx = ...` or `gatehouse cert import --pfx`)"
        }
    } else {
        " (no -----BEGIN CERTIFICATE----- block)"
    };
    Err(CertError::NoCertificate {
        path: path.into(),
        hint,
    })
}

fn parse_pem(path: &Path, data: &[u8]) -> Result<PemItems, CertError> {
    if String::from_utf8_lossy(data).contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(CertError::EncryptedKey { path: path.into() });
    }
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for item in rustls_pemfile::read_all(&mut BufReader::new(data)) {
        match item.map_err(|e| CertError::BadPem {
            path: path.into(),
            detail: format!("{e:?}"),
        })? {
            rustls_pemfile::Item::X509Certificate(c) => certs.push(c),
            rustls_pemfile::Item::Pkcs1Key(k) => keys.push(PrivateKeyDer::Pkcs1(k)),
            rustls_pemfile::Item::Pkcs8Key(k) => keys.push(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Sec1Key(k) => keys.push(PrivateKeyDer::Sec1(k)),
            _ => {}
        }
    }
    Ok((certs, keys))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, CertError> {
    let io = |source| CertError::Io {
        path: path.into(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() > MAX_FILE_LEN {
        return Err(CertError::TooLarge { path: path.into() });
    }
    fs::read(path).map_err(io)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn offset_time(t: SystemTime) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t)).map_err(|e| CertError::Generate {
        detail: format!("date out of range: {e}"),
    })
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
