//! Request bodies: what gateways (20002) and host agents (20003) ask of the broker
//! (PROTOCOL.md §6.1-§6.6). Each carries its own field bounds in `validate`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::reply::Reply;
use super::secret::Secret;
use super::validate::{check_list, check_name, check_secret, check_text, Invalid};
use super::{
    MAX_HOST_BYTES, MAX_PASSWORD_BYTES, MAX_RESOURCE_BYTES, MAX_SECOND_FACTOR_BYTES, MAX_SESSIONS_PER_REPORT,
    MAX_SESSION_TOKEN_BYTES, MAX_SITE_BYTES, MAX_USER_BYTES,
};
use crate::ticket::MAX_TICKET_CHARS;

/// The body of a `Request` frame, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Gateway: check a user's credentials; answered by `login_ok` or `refused`.
    Login(Login),
    /// Gateway: what a logged-in user may launch; answered by `resources` or `refused`.
    ListResources(ListResources),
    /// Gateway: pick a host for a resource; answered by `launched` or `refused`.
    Launch(Launch),
    /// Gateway: spend a launch ticket at its issuer; answered by `redeemed` or `refused`.
    RedeemTicket(RedeemTicket),
    /// Host agent: the host's current load and sessions; answered by `report_accepted` or
    /// `refused`.
    HostReport(HostReport),
    /// Gateway, plain RDP on 3389: pick a host of the site; answered by `host_chosen` or
    /// `refused`.
    ChooseHost(ChooseHost),
}

/// How the client will reach the session host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchMode {
    /// Through a gateway tunnel; the answer carries a launch ticket.
    Gateway,
    /// Straight to the host; the answer carries the host and port only.
    Direct,
}

/// `login`: a user's credentials, as the gateway received them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The user name as typed.
    pub user: String,
    /// The password.
    pub password: Secret,
    /// The second factor (one-time code), when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_factor: Option<Secret>,
    /// The client's address as the gateway saw it (from PROXY v2 behind a forwarding
    /// gateway), for throttling and the audit log.
    pub client_addr: SocketAddr,
    /// How long the gateway waits for the answer, in milliseconds. A broker whose password
    /// checks are queued so deep that this one would start later skips it: the gateway has
    /// answered its client already, and the check would only delay the next ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u32>,
}

/// `list_resources`: the resources of a logged-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResources {
    /// The token from `login_ok`.
    pub session_token: Secret,
}

/// `launch`: start a resource for a logged-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The token from `login_ok`.
    pub session_token: Secret,
    /// The resource id from the user's resource list.
    pub resource: String,
    /// Tunnel through a gateway or connect directly.
    pub mode: LaunchMode,
    /// The client's address, for the audit log.
    pub client_addr: SocketAddr,
}

/// `redeem_ticket`: the gateway opening a tunnel spends the ticket at the broker that
/// issued it, which accepts each ticket once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemTicket {
    /// The ticket as the client presented it.
    pub ticket: Secret,
    /// The session token the client presented with it: the issuer checks that the session
    /// is live and belongs to the ticket's user (a ticket alone opens nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
}

/// `host_report`: a host agent's periodic report (every few seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The host's name as the broker's pools know it.
    pub host: String,
    /// The users with a session on the host (one entry per session), for affinity.
    pub sessions: Vec<String>,
    /// CPU load, 0 to 100.
    pub cpu_percent: u8,
    /// Memory in use, 0 to 100.
    pub mem_percent: u8,
    /// Whether the host's RDP port accepted a connection at the last probe.
    pub rdp_up: bool,
}

/// `choose_host`: the plain-RDP balancing path, where a gateway only has the user hint
/// from an X.224 cookie; the hint steers affinity and is never an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChooseHost {
    /// The resource (pool) the 3389 listener balances, if configured; else the site's
    /// default desktop pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The gateway's site.
    pub site: String,
    /// The user from `Cookie: mstshash=`, possibly truncated by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_hint: Option<String>,
    /// The host named by a `Cookie: msts=` routing token: honoured only when it is a host of
    /// the resource's pool (and up); never an address to connect to otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_token: Option<SocketAddr>,
}

impl Request {
    /// The request's `"type"` string, for logs and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Login(_) => "login",
            Self::ListResources(_) => "list_resources",
            Self::Launch(_) => "launch",
            Self::RedeemTicket(_) => "redeem_ticket",
            Self::HostReport(_) => "host_report",
            Self::ChooseHost(_) => "choose_host",
        }
    }

    /// Whether the gateway client may send this request to another broker when the link it
    /// went out on died before an answer (PROTOCOL.md §4). The first broker may have carried
    /// it out, so only a request whose repetition harms nobody, and that any broker can
    /// answer: a host choice for plain RDP (every broker has the host agents' reports; a
    /// choice the lost broker made reaches nobody). Not a login (a wrong password would count
    /// twice towards a lock-out), nor what only the session's or the ticket's broker can
    /// answer (resources, launch, redemption), nor a host report (the next one repeats it).
    pub fn safe_to_repeat(&self) -> bool {
        matches!(self, Self::ChooseHost(_))
    }

    /// Whether `reply` is a legal answer to this request: its own success type or `refused`.
    /// The gateway client fails a request whose answer does not fit.
    pub fn accepts(&self, reply: &Reply) -> bool {
        matches!(
            (self, reply),
            (_, Reply::Refused(_))
                | (Self::Login(_), Reply::LoginOk(_))
                | (Self::ListResources(_), Reply::Resources(_))
                | (Self::Launch(_), Reply::Launched(_))
                | (Self::RedeemTicket(_), Reply::Redeemed(_))
                | (Self::HostReport(_), Reply::ReportAccepted)
                | (Self::ChooseHost(_), Reply::HostChosen(_))
        )
    }

    /// Checks field bounds and contents beyond what JSON decoding enforces.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Login(r) => {
                check_text("user", &r.user, MAX_USER_BYTES)?;
                check_secret("password", &r.password, MAX_PASSWORD_BYTES)?;
                if let Some(code) = &r.second_factor {
                    check_secret("second_factor", code, MAX_SECOND_FACTOR_BYTES)?;
                }
                Ok(())
            }
            Self::ListResources(r) => {
                check_secret("session_token", &r.session_token, MAX_SESSION_TOKEN_BYTES)
            }
            Self::Launch(r) => {
                check_secret("session_token", &r.session_token, MAX_SESSION_TOKEN_BYTES)?;
                check_name("resource", &r.resource, MAX_RESOURCE_BYTES)
            }
            Self::RedeemTicket(r) => {
                check_secret("ticket", &r.ticket, MAX_TICKET_CHARS)?;
                match &r.session_token {
                    Some(t) => check_secret("session_token", t, MAX_SESSION_TOKEN_BYTES),
                    None => Ok(()),
                }
            }
            Self::HostReport(r) => {
                check_name("host", &r.host, MAX_HOST_BYTES)?;
                check_list("sessions", r.sessions.len(), MAX_SESSIONS_PER_REPORT)?;
                for user in &r.sessions {
                    check_text("sessions", user, MAX_USER_BYTES)?;
                }
                if r.cpu_percent > 100 {
                    return Err(Invalid::new("cpu_percent", "over 100"));
                }
                if r.mem_percent > 100 {
                    return Err(Invalid::new("mem_percent", "over 100"));
                }
                Ok(())
            }
            Self::ChooseHost(r) => {
                if let Some(resource) = &r.resource {
                    check_name("resource", resource, MAX_RESOURCE_BYTES)?;
                }
                check_name("site", &r.site, MAX_SITE_BYTES)?;
                if let Some(user) = &r.user_hint {
                    check_text("user_hint", user, MAX_USER_BYTES)?;
                }
                Ok(())
            }
        }
    }
}
