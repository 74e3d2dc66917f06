//! Response and event bodies: what the broker answers and pushes (PROTOCOL.md §6.7-§6.9).

use serde::{Deserialize, Serialize};

use super::refusal::RefusalReason;
use super::secret::Secret;
use super::validate::{check_list, check_name, check_secret, check_text, Invalid};
use super::{
    MAX_DETAIL_BYTES, MAX_HOST_BYTES, MAX_RESOURCES, MAX_RESOURCE_BYTES, MAX_SESSION_TOKEN_BYTES,
    MAX_SITE_BYTES, MAX_USER_BYTES,
};
use crate::ticket::MAX_TICKET_CHARS;

/// The body of a `Response` frame, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `login` succeeded.
    LoginOk(LoginOk),
    /// The answer to `list_resources`.
    Resources(Resources),
    /// `launch` succeeded.
    Launched(Launched),
    /// `redeem_ticket` succeeded: the ticket was valid and unused, and is now spent.
    Redeemed(Redeemed),
    /// `host_report` was recorded.
    ReportAccepted,
    /// `choose_host` picked a host.
    HostChosen(HostChosen),
    /// The request was refused; valid as the answer to any request.
    Refused(Refused),
}

/// Whether a resource is a published application or a full desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A published application (RemoteApp).
    Application,
    /// A full desktop.
    Desktop,
}

/// One resource a user may launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// Stable id, used in `launch`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Application or desktop.
    pub kind: ResourceKind,
}

/// `login_ok`: the user is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOk {
    /// Opaque token for `list_resources` and `launch`, issued by this broker.
    pub session_token: Secret,
    /// The resources the user may launch.
    pub resources: Vec<ResourceInfo>,
}

/// `resources`: the resources the user may launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// The resources the user may launch.
    pub resources: Vec<ResourceInfo>,
}

/// `launched`: the host chosen for the launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// The session host (name or address) the tunnel or client connects to.
    pub host: String,
    /// Its RDP port.
    pub port: u16,
    /// The launch ticket for gateway mode; absent in direct mode, where the session host
    /// authenticates the user itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Secret>,
}

/// `redeemed`: what the spent ticket bound, as the issuer verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// The user the ticket was issued to.
    pub user: String,
    /// The host it binds.
    pub host: String,
    /// The port it binds.
    pub port: u16,
    /// The site it binds.
    pub site: String,
}

/// `host_chosen`: the host for a plain-RDP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChosen {
    /// The session host.
    pub host: String,
    /// Its RDP port.
    pub port: u16,
}

/// `refused`: why the request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The reason, one of the stable strings.
    pub reason: RefusalReason,
    /// Human-readable detail for logs (never shown to end users verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Refused {
    /// A refusal without detail.
    pub fn new(reason: RefusalReason) -> Self {
        Self { reason, detail: None }
    }

    /// A refusal with detail for the logs, cut to the detail bound on a character boundary.
    pub fn with_detail(reason: RefusalReason, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_BYTES {
            let mut cut = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Self {
            reason,
            detail: Some(detail),
        }
    }
}

/// The body of an `Event` frame (a push from the broker), tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The broker is shutting down: it answers the requests it already has, refuses new ones
    /// with `draining`, and the client moves to its next broker now rather than on timeout.
    Draining,
}

impl Reply {
    /// The reply's `"type"` string, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LoginOk(_) => "login_ok",
            Self::Resources(_) => "resources",
            Self::Launched(_) => "launched",
            Self::Redeemed(_) => "redeemed",
            Self::ReportAccepted => "report_accepted",
            Self::HostChosen(_) => "host_chosen",
            Self::Refused(_) => "refused",
        }
    }

    /// Checks field bounds; the gateway client runs it on every answer from a broker.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::LoginOk(r) => {
                check_secret("session_token", &r.session_token, MAX_SESSION_TOKEN_BYTES)?;
                check_resources(&r.resources)
            }
            Self::Resources(r) => check_resources(&r.resources),
            Self::Launched(r) => {
                check_host_port(&r.host, r.port)?;
                if let Some(ticket) = &r.ticket {
                    check_secret("ticket", ticket, MAX_TICKET_CHARS)?;
                }
                Ok(())
            }
            Self::Redeemed(r) => {
                check_text("user", &r.user, MAX_USER_BYTES)?;
                check_host_port(&r.host, r.port)?;
                check_name("site", &r.site, MAX_SITE_BYTES)
            }
            Self::ReportAccepted => Ok(()),
            Self::HostChosen(r) => check_host_port(&r.host, r.port),
            Self::Refused(r) => match &r.detail {
                Some(detail) if detail.len() > MAX_DETAIL_BYTES => Err(Invalid::new("detail", "too long")),
                _ => Ok(()),
            },
        }
    }
}

fn check_host_port(host: &str, port: u16) -> Result<(), Invalid> {
    check_name("host", host, MAX_HOST_BYTES)?;
    if port == 0 {
        return Err(Invalid::new("port", "zero"));
    }
    Ok(())
}

fn check_resources(resources: &[ResourceInfo]) -> Result<(), Invalid> {
    check_list("resources", resources.len(), MAX_RESOURCES)?;
    for r in resources {
        check_name("resources.id", &r.id, MAX_RESOURCE_BYTES)?;
        check_text("resources.name", &r.name, MAX_RESOURCE_BYTES)?;
    }
    Ok(())
}
