//! The audit trail: one record per login attempt, launch, ticket redemption and plain-RDP
//! host choice (who, from where, what, result), written to a sink.
//!
//! The broker core calls [`AuditSink::record`] as it decides; the sink is given to it by the
//! shell. [`JsonLinesAudit`] appends one JSON object per line to a file (mode 0600: user
//! names and addresses are personal data); [`MemoryAudit`] keeps records for tests.
//! Credentials never reach a record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::message::RefusalReason;

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A login attempt.
    Login,
    /// A launch.
    Launch,
    /// A ticket redemption (a tunnel opening at a gateway).
    RedeemTicket,
    /// A plain-RDP host choice.
    ChooseHost,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// Granted.
    Ok,
    /// Refused, with the reason sent to the gateway.
    Refused(RefusalReason),
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The broker that decided.
    pub broker: String,
    /// The gateway that asked (its node name).
    pub gateway: String,
    /// What was attempted.
    pub action: AuditAction,
    /// The user, as typed or as bound in the ticket; for `choose_host`, the cookie hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The client's address as the gateway saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<SocketAddr>,
    /// The resource launched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The session host chosen or bound (its address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Granted or refused.
    pub result: AuditResult,
    /// More for the log: why a refusal happened, that a failure started a lock-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where audit records go. Called by the broker core for every audited decision, on the
/// broker's thread; an implementation must not block for long (append to a file, push to a
/// channel).
pub trait AuditSink: Send {
    /// Stores one record.
    fn record(&mut self, record: &AuditRecord);
}

/// Appends records to a file as JSON lines.
#[derive(Debug)]
pub struct JsonLinesAudit {
    path: PathBuf,
    file: File,
    write_failures: u64,
}

impl JsonLinesAudit {
    /// Opens (creating with mode 0600) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            write_failures: 0,
        })
    }

    /// Records that could not be written (disk full, ...), for a metric and an alert.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&mut self, record: &AuditRecord) {
        let mut line =
            serde_json::to_vec(record).expect("audit records hold only strings, numbers and enums");
        line.push(b'\n');
        // One write per line on an O_APPEND file: lines from concurrent writers never interleave.
        if self.file.write_all(&line).is_err() {
            self.write_failures += 1;
        }
    }
}

/// Keeps records in memory; clones share the same list (tests, the admin API's recent view).
#[derive(Debug, Clone, Default)]
pub struct MemoryAudit {
    records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl MemoryAudit {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the records so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&mut self, record: &AuditRecord) {
        if let Ok(mut records) = self.records.lock() {
            records.push(record.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record(result: AuditResult) -> AuditRecord {
        AuditRecord {
            at_ms: 1_700_000_000_000,
            broker: "broker-a".into(),
            gateway: "gw-a".into(),
            action: AuditAction::Login,
            user: Some("alice".into()),
            client_addr: Some("203.0.113.7:50123".parse().unwrap()),
            resource: None,
            host: None,
            result,
            detail: None,
        }
    }

    #[test]
    fn json_lines_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = JsonLinesAudit::open(&path).unwrap();
        sink.record(&record(AuditResult::Ok));
        sink.record(&record(AuditResult::Refused(RefusalReason::WrongPassword)));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["result"], "ok");
        assert_eq!(lines[1]["result"]["refused"], "wrong_password");
        assert_eq!(lines[1]["client_addr"], "203.0.113.7:50123");
        assert_eq!(lines[1]["action"], "login");
        assert!(lines[0].get("resource").is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(sink.write_failures(), 0);
    }
}
