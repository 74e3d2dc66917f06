//! The farm's trust: the farm CA and member certificates (`gatehouse farm init|issue`), the
//! farm ticket key file, and the rustls configurations of mutual TLS between farm members.
//!
//! Owns the files in a farm directory and how a peer certificate names a member (subject CN
//! = node name, OU = role). Knows nothing of frames or requests.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::OsRng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};

use gatehouse_control::frame::Role;
use gatehouse_control::ticket::{FarmKey, KeyId, KeyRing, FARM_KEY_BYTES};

/// File name of the farm CA certificate in a farm directory.
pub const CA_CERT_FILE: &str = "farm-ca.pem";
/// File name of the farm CA private key (mode 0600).
pub const CA_KEY_FILE: &str = "farm-ca.key";
/// File name of the farm ticket key file (mode 0600).
pub const FARM_KEYS_FILE: &str = "farm-keys.toml";
/// Largest PEM or key file read.
const MAX_PKI_FILE_BYTES: u64 = 1 << 20;
/// Subject CN prefix of farm CAs; a random farm id follows, so that two farms' CAs never
/// share a name (a verifier picks the issuer by name).
const CA_COMMON_NAME: &str = "gatehouse farm CA";
/// Days a farm CA is valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Days a member certificate is valid.
const MEMBER_VALIDITY_DAYS: i64 = 825;

/// A farm member role as written in certificates and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// A broker (publishing agent).
    Broker,
    /// A gateway.
    Gateway,
    /// A host agent.
    HostAgent,
    /// A HALB appliance.
    Halb,
}

impl MemberRole {
    /// The role's name: `broker`, `gateway`, `host-agent`, `halb` (also the certificate's OU).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Gateway => "gateway",
            Self::HostAgent => "host-agent",
            Self::Halb => "halb",
        }
    }

    /// The control protocol role of a certificate role, if it speaks the protocol.
    pub fn protocol_role(self) -> Option<Role> {
        match self {
            Self::Broker => Some(Role::Broker),
            Self::Gateway => Some(Role::Gateway),
            Self::HostAgent => Some(Role::HostAgent),
            Self::Halb => None,
        }
    }
}

impl std::str::FromStr for MemberRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "broker" => Ok(Self::Broker),
            "gateway" => Ok(Self::Gateway),
            "host-agent" => Ok(Self::HostAgent),
            "halb" => Ok(Self::Halb),
            other => Err(format!(
                "unknown role {other:?} (expected broker, gateway, host-agent or halb)"
            )),
        }
    }
}

/// Why a farm PKI operation failed; the message names the file.
#[derive(Debug)]
pub struct PkiError(pub String);

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PkiError {}

fn err(msg: impl Into<String>) -> PkiError {
    PkiError(msg.into())
}

/// What `farm init` wrote.
#[derive(Debug, Clone)]
pub struct FarmInit {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The ticket key file.
    pub keys: PathBuf,
    /// The id of the first ticket key.
    pub key_id: u32,
}

/// `gatehouse farm init --dir D`: a farm CA (ECDSA P-256) and a farm ticket key with id 1.
/// Refuses to overwrite an existing CA.
pub fn farm_init(dir: &Path) -> Result<FarmInit, PkiError> {
    fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let keys = dir.join(FARM_KEYS_FILE);
    for p in [&ca_cert, &ca_key, &keys] {
        if p.exists() {
            return Err(err(format!(
                "{} exists: this directory already holds a farm",
                p.display()
            )));
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err(format!("cannot make the CA key: {e}")))?;
    let mut farm_id = [0u8; 8];
    rand::RngCore::fill_bytes(&mut OsRng, &mut farm_id);
    let farm_id: String = farm_id.iter().map(|b| format!("{b:02x}")).collect();
    let cert = ca_params(&format!("{CA_COMMON_NAME} {farm_id}"))
        .self_signed(&key)
        .map_err(|e| err(format!("cannot make the CA certificate: {e}")))?;
    write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&ca_cert, cert.pem().as_bytes(), 0o644)?;
    let farm_key = FarmKey::generate(KeyId(1), &mut OsRng);
    write_file(&keys, keys_file_text(&[farm_key], KeyId(1)).as_bytes(), 0o600)?;
    Ok(FarmInit {
        ca_cert,
        ca_key,
        keys,
        key_id: 1,
    })
}

/// What `farm issue` wrote.
#[derive(Debug, Clone)]
pub struct MemberFiles {
    /// The member certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// `gatehouse farm issue NAME --dir D --role R`: a certificate for member `name` (CN and DNS
/// SAN = name, OU = role, client and server auth) signed by the farm CA of `dir`.
pub fn farm_issue(dir: &Path, name: &str, role: MemberRole) -> Result<MemberFiles, PkiError> {
    gatehouse_control::frame::NodeName::new(name).map_err(|e| err(format!("member name {name:?}: {e}")))?;
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_key_pem = read_bounded(&ca_key_path)?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| err(format!("{}: not a CA key: {e}", ca_key_path.display())))?;
    // rcgen signs with the issuer's name and key: rebuilding the CA from its name and its
    // key gives the same issuer name and key identifier.
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_cert = read_certs(&ca_cert_path)?.remove(0);
    let ca_name = member_of(&ca_cert)
        .map(|m| m.name)
        .ok_or_else(|| err(format!("{}: no subject CN", ca_cert_path.display())))?;
    let ca = ca_params(&ca_name)
        .self_signed(&ca_key)
        .map_err(|e| err(format!("cannot rebuild the CA: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| err(format!("member name {name:?}: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, role.as_str());
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(MEMBER_VALIDITY_DAYS);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err(format!("cannot make a key: {e}")))?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| err(format!("cannot sign the certificate: {e}")))?;
    let files = MemberFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn ca_params(common_name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    // Only the name and the key of a rebuilt issuer matter to rcgen, so the validity of the
    // rebuilt copy in `farm_issue` need not match the stored one.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    params
}

/// The farm ticket key file: `[[key]]` entries with `id`, `secret` (64 hex digits) and
/// `current = true` on the signing key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    key: Vec<KeyEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    secret: String,
    #[serde(default)]
    current: bool,
}

fn keys_file_text(keys: &[FarmKey], current: KeyId) -> String {
    let file = KeysFile {
        key: keys
            .iter()
            .map(|k| KeyEntry {
                id: k.id().0,
                secret: k.secret().iter().map(|b| format!("{b:02x}")).collect(),
                current: k.id() == current,
            })
            .collect(),
    };
    let body = toml::to_string(&file).expect("the key file holds only numbers, strings and bools");
    format!("# gatehouse farm ticket keys: keep this file mode 0600 and identical on every member.\n{body}")
}

/// Reads a farm key file into a key ring (exactly one `current` key).
pub fn load_key_ring(path: &Path) -> Result<KeyRing, PkiError> {
    let text = read_bounded(path)?;
    let file: KeysFile = toml::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let mut keys = Vec::new();
    let mut current = None;
    for (i, entry) in file.key.iter().enumerate() {
        let secret = parse_hex_key(&entry.secret)
            .ok_or_else(|| err(format!("{}: key[{i}].secret: not 64 hex digits", path.display())))?;
        if entry.current {
            if current.is_some() {
                return Err(err(format!("{}: more than one current key", path.display())));
            }
            current = Some(keys.len());
        }
        keys.push(FarmKey::new(KeyId(entry.id), secret));
    }
    let Some(current) = current else {
        return Err(err(format!("{}: no key has current = true", path.display())));
    };
    let mut ring = KeyRing::new(keys[current].clone());
    for (i, k) in keys.into_iter().enumerate() {
        if i != current {
            ring.insert(k)
                .map_err(|e| err(format!("{}: key[{i}]: {e}", path.display())))?;
        }
    }
    Ok(ring)
}

fn parse_hex_key(text: &str) -> Option<[u8; FARM_KEY_BYTES]> {
    let bytes = text.as_bytes();
    if bytes.len() != FARM_KEY_BYTES * 2 {
        return None;
    }
    let mut out = [0u8; FARM_KEY_BYTES];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The PEM files a member presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberTls {
    /// The member certificate (from `gatehouse farm issue`).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The farm CA certificate.
    pub ca_file: PathBuf,
}

impl MemberTls {
    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&self.ca_file)? {
            roots
                .add(cert)
                .map_err(|e| err(format!("{}: {e}", self.ca_file.display())))?;
        }
        Ok(Arc::new(roots))
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let chain = read_certs(&self.cert_file)?;
        let text = read_bounded(&self.key_file)?;
        let key = rustls_pemfile::private_key(&mut text.as_bytes())
            .map_err(|e| err(format!("{}: {e}", self.key_file.display())))?
            .ok_or_else(|| err(format!("{}: no private key", self.key_file.display())))?;
        Ok((chain, key))
    }

    /// What rustls said about the member certificate and key, in the files' words.
    fn identity_error(&self, e: rustls::Error) -> PkiError {
        match e {
            rustls::Error::InconsistentKeys(_) => err(format!(
                "{}: the private key does not belong to the certificate {} (issue both with `gatehouse farm issue`)",
                self.key_file.display(),
                self.cert_file.display()
            )),
            e => err(format!("{}: {e}", self.cert_file.display())),
        }
    }

    /// The server side (broker): presents the member certificate and requires a client
    /// certificate issued by the farm CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let provider = crate::tls::provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| err(format!("client verifier: {e}")))?;
        let (chain, key) = self.identity()?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("protocol versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| self.identity_error(e))?;
        Ok(Arc::new(config))
    }

    /// The client side (gateway, host agent): presents the member certificate and accepts
    /// any server certificate issued by the farm CA for the name in its own CN (the hello
    /// name is then checked against that CN).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let provider = crate::tls::provider();
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
                .build()
                .map_err(|e| err(format!("server verifier: {e}")))?;
        let (chain, key) = self.identity()?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FarmServerVerifier { inner }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| self.identity_error(e))?;
        Ok(Arc::new(config))
    }
}

/// Verifies a server's chain against the farm CA under the name the certificate claims, so a
/// client needs only addresses, not names, of its brokers.
#[derive(Debug)]
struct FarmServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for FarmServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let member = member_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        let name = ServerName::try_from(member.name)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who a farm certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Subject CN: the node name.
    pub name: String,
    /// Subject OU: the role, when it is one of ours.
    pub role: Option<MemberRole>,
}

/// Reads CN and OU of a member certificate (already verified by rustls).
pub fn member_of(cert: &CertificateDer<'_>) -> Option<Member> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .and_then(|ou| ou.parse().ok());
    Some(Member { name, role })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let text = read_bounded(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_bytes()).collect();
    let certs = certs.map_err(|e| err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

fn read_bounded(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_PKI_FILE_BYTES {
        return Err(err(format!(
            "{} is larger than {MAX_PKI_FILE_BYTES} bytes",
            path.display()
        )));
    }
    fs::read_to_string(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let e = |e: std::io::Error| err(format!("cannot write {}: {e}", path.display()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .or_else(|_| {
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .create(true)
                .mode(mode)
                .open(path)
        })
        .map_err(e)?;
    f.write_all(bytes).map_err(e)?;
    f.sync_all().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let init = farm_init(dir.path()).unwrap();
        assert!(
            farm_init(dir.path()).is_err(),
            "a second init must not overwrite the CA"
        );
        let ring = load_key_ring(&init.keys).unwrap();
        assert_eq!(ring.current_id(), KeyId(1));
        let files = farm_issue(dir.path(), "broker-1", MemberRole::Broker).unwrap();
        for key in [&files.key, &init.ca_key, &init.keys] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let cert = read_certs(&files.cert).unwrap().remove(0);
        assert_eq!(
            member_of(&cert),
            Some(Member {
                name: "broker-1".into(),
                role: Some(MemberRole::Broker)
            })
        );
        let tls = MemberTls {
            cert_file: files.cert,
            key_file: files.key,
            ca_file: init.ca_cert,
        };
        tls.server_config().unwrap();
        tls.client_config().unwrap();
        assert!(farm_issue(dir.path(), "bad name", MemberRole::Gateway).is_err());
    }

    #[test]
    fn hex_keys() {
        assert_eq!(parse_hex_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_hex_key("ab"), None);
        assert_eq!(parse_hex_key(&"zz".repeat(32)), None);
    }
}
