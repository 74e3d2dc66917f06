//! The gateway's client API (`CLIENT-API.md`): what a complete HTTP request asks for, and the
//! JSON answers the gateway writes, plus the body types `gatehouse connect` shares.
//!
//! Owns the endpoint table, body decoding and validation, the session-token wrapping
//! (`BROKER~TOKEN`) and the mapping of broker refusals to HTTP statuses. It does no I/O and
//! talks to no broker: the event loop calls [`route`] once the head and its body are in,
//! sends the broker request the [`ApiCall`] implies, and writes [`login_ok`],
//! [`resources_ok`], [`launched_ok`], [`health`] or an [`ApiError::response`].

use std::fmt;

use gatehouse_control::message::{
    LaunchMode, Launched, LoginOk, RefusalReason, Refused, ResourceInfo, Resources, Secret,
    MAX_PASSWORD_BYTES, MAX_RESOURCE_BYTES, MAX_SECOND_FACTOR_BYTES, MAX_SESSION_TOKEN_BYTES, MAX_USER_BYTES,
};
use gatehouse_control::ticket::MAX_TICKET_CHARS;
use serde::{Deserialize, Serialize};

use super::http::{json_response, json_response_with, RequestHead};

/// The `Upgrade` token of a tunnel request and its 101 answer.
pub const TUNNEL_UPGRADE: &str = "gatehouse-tunnel";
/// The prefix of every API endpoint but health.
pub const API_PREFIX: &str = "/api/v1/";
/// The health endpoint for the HALB's checks.
pub const HEALTH_PATH: &str = "/health";
/// Separates the broker name from the broker's token in an [`ApiToken`].
pub const TOKEN_SEPARATOR: char = '~';
/// Longest broker name that can be wrapped in an [`ApiToken`].
pub const MAX_BROKER_NAME_BYTES: usize = 255;

/// Whether the gateway answers `path` itself (`/health`, `/api/v1` and below). Other paths
/// are forwarded to the listener's web server or answered 404 by the caller.
pub fn is_api_path(path: &str) -> bool {
    path == HEALTH_PATH || path == "/api/v1" || path.starts_with(API_PREFIX)
}

/// The session token the client holds: the broker that checked the password (and keeps the
/// session) and that broker's own token, so any gateway of the site sends later requests
/// to the same broker. Wire form `BROKER~TOKEN`; opaque to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The broker's name as the gateways' configs know it (no `~`).
    pub broker: String,
    /// The broker's session token.
    pub token: String,
}

/// What a complete API request asks for, decoded and validated.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiCall {
    /// `POST /api/v1/login`: check credentials at a broker.
    Login {
        /// The user name as typed.
        user: String,
        /// The password.
        password: Secret,
        /// The second factor, when the client sent one.
        second_factor: Option<Secret>,
    },
    /// `GET /api/v1/resources`: the user's resources, from the token's broker.
    Resources {
        /// The client's session token.
        token: ApiToken,
    },
    /// `POST /api/v1/launch`: pick a host at the token's broker.
    Launch {
        /// The client's session token.
        token: ApiToken,
        /// The resource id.
        resource: String,
        /// Tunnel or direct.
        mode: LaunchMode,
    },
    /// `GET /api/v1/tunnel` with `Upgrade: gatehouse-tunnel`: verify and redeem the ticket,
    /// connect to the host it binds, then answer 101 and pipe.
    Tunnel {
        /// The launch ticket from the bearer header (a credential: never log it).
        ticket: String,
        /// The session token from `Gatehouse-Session`: the ticket must have been issued
        /// to this session's user (a ticket alone is not enough).
        session: ApiToken,
    },
    /// `GET /health`: answer with [`health`].
    Health,
    /// Not an API path: forward to the listener's web server, or 404 `not_found`.
    NotApi,
}

/// Seconds a `503` asks the client to wait before it asks this gateway again: the longest
/// pause between a broker link's reconnects.
pub const RETRY_AFTER_S: u64 = crate::broker_role::agent::MAX_BACKOFF.as_secs();

/// An error answer: status, stable code (CLIENT-API.md "Errors"), human text that never
/// holds a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The stable code.
    pub code: &'static str,
    /// Text for humans.
    pub message: String,
    /// The methods the path takes, for the `Allow` header of a 405 (RFC 9110 §15.5.6).
    pub allow: Option<&'static str>,
}

/// `POST /api/v1/login` body. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: Secret,
    /// The one-time code, when the farm asks for a second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_factor: Option<Secret>,
}

/// The 200 answer to login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The session token for `Authorization: Bearer` (opaque to clients).
    pub session_token: Secret,
    /// The resources the user may launch.
    pub resources: Vec<ResourceInfo>,
}

/// The 200 answer to `GET /api/v1/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesAnswer {
    /// The resources the user may launch.
    pub resources: Vec<ResourceInfo>,
}

/// `POST /api/v1/launch` body. Unknown fields are refused; the gateway reads `mode` as a
/// string first so that an unknown mode is `unsupported_mode`, not `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchBody {
    /// The resource id from the user's list.
    pub resource: String,
    /// `gateway` (tunnel through a gateway; also Gateway SSL) or `direct`.
    pub mode: LaunchMode,
}

/// The 200 answer to launch, tagged by `"mode"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum LaunchAnswer {
    /// Open `GET /api/v1/tunnel` with this ticket, on any gateway of the site, soon.
    Gateway {
        /// The one-time launch ticket.
        ticket: Secret,
    },
    /// Connect to this host yourself; it authenticates the user.
    Direct {
        /// The session host.
        host: String,
        /// Its RDP port.
        port: u16,
    },
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code.
    pub error: String,
    /// Text for humans.
    pub message: String,
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// `ok` or `no_broker`.
    pub status: String,
    /// The brokers this gateway has a connection to.
    pub brokers: Vec<String>,
}

impl ApiToken {
    /// A token, if `broker` is a valid broker name (see [`ApiToken::is_valid_broker_name`])
    /// and `token` is non-empty printable ASCII within the broker's token bound.
    pub fn new(broker: &str, token: &str) -> Option<Self> {
        if !Self::is_valid_broker_name(broker) || !valid_broker_token(token) {
            return None;
        }
        Some(Self {
            broker: broker.to_owned(),
            token: token.to_owned(),
        })
    }

    /// Parses the wire form `BROKER~TOKEN`, split at the first `~` (so a broker name can
    /// never hold one; the broker's token may).
    pub fn parse(wire: &str) -> Option<Self> {
        let (broker, token) = wire.split_once(TOKEN_SEPARATOR)?;
        Self::new(broker, token)
    }

    /// The wire form `BROKER~TOKEN`.
    pub fn encode(&self) -> String {
        format!("{}{TOKEN_SEPARATOR}{}", self.broker, self.token)
    }

    /// Broker names usable in tokens: 1 to 255 bytes of printable ASCII without `~`. The
    /// config check refuses other names for brokers that gateways log in through.
    pub fn is_valid_broker_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_BROKER_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != TOKEN_SEPARATOR as u8)
    }
}

impl fmt::Debug for ApiToken {
    /// Redacts the broker's token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ApiToken({}~<{} bytes redacted>)",
            self.broker,
            self.token.len()
        )
    }
}

impl fmt::Debug for ApiCall {
    /// Redacts every credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login {
                user,
                password,
                second_factor,
            } => f
                .debug_struct("Login")
                .field("user", user)
                .field("password", password)
                .field("second_factor", second_factor)
                .finish(),
            Self::Resources { token } => f.debug_struct("Resources").field("token", token).finish(),
            Self::Launch {
                token,
                resource,
                mode,
            } => f
                .debug_struct("Launch")
                .field("token", token)
                .field("resource", resource)
                .field("mode", mode)
                .finish(),
            Self::Tunnel { ticket, session } => write!(
                f,
                "Tunnel {{ ticket: <{} bytes redacted>, session: {session:?} }}",
                ticket.len()
            ),
            Self::Health => f.write_str("Health"),
            Self::NotApi => f.write_str("NotApi"),
        }
    }
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// The whole answer: `{"error":CODE,"message":TEXT}` with `Connection: close`, and the
    /// header a status requires: `Allow` with a 405, `WWW-Authenticate` with a 401 (RFC
    /// 9110 §15.5.2; the Bearer scheme of RFC 6750 §3, `invalid_token` for a token that was
    /// sent and refused), and `Retry-After` with a 503.
    pub fn response(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message.clone(),
        };
        let extra = match (self.status, self.allow) {
            (405, Some(methods)) => format!("Allow: {methods}\r\n"),
            // A token was sent and refused; a login's 401 (wrong password) sent none.
            (401, _) if self.code == "session_invalid" => {
                "WWW-Authenticate: Bearer realm=\"gatehouse\", error=\"invalid_token\"\r\n".to_string()
            }
            (401, _) => "WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n".to_string(),
            // Every 503 is passing (no broker link yet, a draining or busy broker); a broker
            // link retries at least this often (RFC 9110 §10.2.3).
            (503, _) => format!("Retry-After: {RETRY_AFTER_S}\r\n"),
            _ => String::new(),
        };
        json_response_with(self.status, &to_value(&body), true, &extra)
    }
}

impl From<&super::http::HttpError> for ApiError {
    fn from(e: &super::http::HttpError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Decides what a complete request (head plus exactly `content_length` body bytes) asks for.
/// Paths outside `/api/v1/*` and `/health` are [`ApiCall::NotApi`]. Checks run in the order
/// method (405), credentials (401 `missing_token` / `session_invalid`), then body (400).
pub fn route(head: &RequestHead, body: &[u8]) -> Result<ApiCall, ApiError> {
    let path = head.path.as_str();
    if !is_api_path(path) {
        return Ok(ApiCall::NotApi);
    }
    match path {
        HEALTH_PATH => {
            // HEAD too: some load balancers check with it (the answer has no body).
            if head.method != "HEAD" {
                require_method(head, "GET")?;
            }
            Ok(ApiCall::Health)
        }
        "/api/v1/login" => {
            require_method(head, "POST")?;
            let LoginBody {
                user,
                password,
                second_factor,
            } = json_body(head, body)?;
            check_text("user", &user, MAX_USER_BYTES)?;
            check_secret("password", &password, MAX_PASSWORD_BYTES)?;
            if let Some(code) = &second_factor {
                check_secret("second_factor", code, MAX_SECOND_FACTOR_BYTES)?;
            }
            Ok(ApiCall::Login {
                user,
                password,
                second_factor,
            })
        }
        "/api/v1/resources" => {
            require_method(head, "GET")?;
            Ok(ApiCall::Resources {
                token: session_token(head)?,
            })
        }
        "/api/v1/launch" => {
            require_method(head, "POST")?;
            let token = session_token(head)?;
            let raw: RawLaunchBody = json_body(head, body)?;
            check_text("resource", &raw.resource, MAX_RESOURCE_BYTES)?;
            if !raw.resource.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad_request("field resource: bad character"));
            }
            let mode = match raw.mode.as_str() {
                "gateway" => LaunchMode::Gateway,
                "direct" => LaunchMode::Direct,
                _ => {
                    return Err(ApiError::new(
                        400,
                        "unsupported_mode",
                        "mode must be \"gateway\" or \"direct\"",
                    ))
                }
            };
            Ok(ApiCall::Launch {
                token,
                resource: raw.resource,
                mode,
            })
        }
        "/api/v1/tunnel" => {
            require_method(head, "GET")?;
            let upgrading = head
                .upgrade
                .as_deref()
                .is_some_and(|u| u.split(',').any(|t| t.trim() == TUNNEL_UPGRADE));
            if !upgrading {
                return Err(bad_request(format!(
                    "a tunnel needs Connection: Upgrade and Upgrade: {TUNNEL_UPGRADE}"
                )));
            }
            if head.content_length != 0 || head.chunked {
                return Err(bad_request("a tunnel request has no body"));
            }
            let ticket = head.bearer.as_deref().ok_or_else(|| {
                ApiError::new(401, "missing_token", "Authorization: Bearer TICKET is required")
            })?;
            if ticket.len() > MAX_TICKET_CHARS {
                return Err(ApiError::new(403, "ticket_malformed", "the ticket is too long"));
            }
            let session = head.session.as_deref().ok_or_else(|| {
                ApiError::new(
                    401,
                    "missing_token",
                    "Gatehouse-Session: TOKEN is required with the ticket",
                )
            })?;
            let session = ApiToken::parse(session)
                .ok_or_else(|| ApiError::new(401, "session_invalid", "the session token is not valid"))?;
            Ok(ApiCall::Tunnel {
                ticket: ticket.to_owned(),
                session,
            })
        }
        _ => Err(ApiError::new(404, "not_found", "no such API endpoint")),
    }
}

/// The HTTP status for a broker refusal (CLIENT-API.md "Errors").
pub fn refusal_status(reason: RefusalReason) -> u16 {
    use RefusalReason as R;
    match reason {
        R::BadRequest => 400,
        R::UnknownUser
        | R::WrongPassword
        | R::SecondFactorRequired
        | R::SecondFactorWrong
        | R::SessionInvalid => 401,
        R::UserLocked
        | R::UserDisabled
        | R::NotPermitted
        | R::WrongSite
        | R::TicketMalformed
        | R::TicketForged
        | R::TicketUnknownKey
        | R::TicketExpired
        | R::TicketReplayed
        | R::TicketBindingMismatch
        | R::TicketWrongIssuer
        | R::Unrecognized => 403,
        R::UnknownResource => 404,
        R::AddressThrottled => 429,
        R::NoHostAvailable | R::DirectoryUnavailable | R::Draining | R::Internal | R::UnknownHost => 503,
    }
}

/// The client's answer to a broker refusal. The message is fixed per reason: the broker's
/// `detail` is for logs only (it may name users, hosts or addresses) and is not copied.
/// `unknown_user` is answered exactly like `wrong_password`, so user names cannot be probed
/// (the audit log keeps the difference).
pub fn refusal_error(refused: &Refused) -> ApiError {
    use RefusalReason as R;
    let reason = refused.reason;
    let (code, message) = match reason {
        R::UnknownUser | R::WrongPassword => (R::WrongPassword.as_str(), "wrong user name or password"),
        R::SecondFactorRequired => (reason.as_str(), "a second factor is required"),
        R::SecondFactorWrong => (reason.as_str(), "the second factor is wrong"),
        R::UserLocked => (
            reason.as_str(),
            "the account is locked for a while after too many failures",
        ),
        R::UserDisabled => (reason.as_str(), "the account is disabled"),
        R::AddressThrottled => (
            reason.as_str(),
            "too many failures from this address; try again later",
        ),
        R::DirectoryUnavailable => (
            reason.as_str(),
            "the user directory is unavailable; try again later",
        ),
        R::SessionInvalid => (reason.as_str(), "the session is unknown or expired; log in again"),
        R::UnknownResource => (reason.as_str(), "no such resource"),
        R::NotPermitted => (reason.as_str(), "this user may not launch this resource"),
        R::NoHostAvailable => (reason.as_str(), "no session host is available; try again later"),
        R::WrongSite => (reason.as_str(), "this gateway does not serve that site"),
        R::TicketMalformed
        | R::TicketForged
        | R::TicketUnknownKey
        | R::TicketExpired
        | R::TicketReplayed
        | R::TicketBindingMismatch
        | R::TicketWrongIssuer => (
            reason.as_str(),
            "the launch ticket is not valid here; launch again",
        ),
        R::BadRequest => (reason.as_str(), "the broker refused the request as malformed"),
        R::Draining | R::Internal | R::UnknownHost => {
            ("broker_busy", "the broker cannot serve now; try again")
        }
        R::Unrecognized => ("forbidden", "the broker refused the request"),
    };
    ApiError::new(refusal_status(reason), code, message)
}

/// The 200 answer to login: the broker's token wrapped with the broker's name.
pub fn login_ok(broker: &str, ok: &LoginOk, keep_alive: bool) -> Vec<u8> {
    let token = ApiToken {
        broker: broker.to_owned(),
        token: ok.session_token.expose().to_owned(),
    };
    let answer = LoginAnswer {
        session_token: Secret::new(token.encode()),
        resources: ok.resources.clone(),
    };
    json_response(200, &to_value(&answer), !keep_alive)
}

/// The 200 answer to `GET /api/v1/resources`.
pub fn resources_ok(r: &Resources, keep_alive: bool) -> Vec<u8> {
    let answer = ResourcesAnswer {
        resources: r.resources.clone(),
    };
    json_response(200, &to_value(&answer), !keep_alive)
}

/// The 200 answer to launch: the ticket in gateway mode, the host and port in direct mode
/// (a ticket the broker may have added is not passed on). A gateway-mode answer without a
/// ticket is a broker fault: it becomes a 503 `broker_busy` error answer.
pub fn launched_ok(mode: LaunchMode, l: &Launched, keep_alive: bool) -> Vec<u8> {
    let answer = match mode {
        LaunchMode::Gateway => match &l.ticket {
            Some(ticket) => LaunchAnswer::Gateway {
                ticket: ticket.clone(),
            },
            None => {
                return ApiError::new(503, "broker_busy", "the broker's launch answer had no ticket")
                    .response();
            }
        },
        LaunchMode::Direct => LaunchAnswer::Direct {
            host: l.host.clone(),
            port: l.port,
        },
    };
    json_response(200, &to_value(&answer), !keep_alive)
}

/// The answer to `GET /health`: 200 `ok` with the connected brokers, or 503 `no_broker`
/// when there is none. Always `Connection: close` (one check per connection).
pub fn health(brokers: &[String]) -> Vec<u8> {
    let (status, text) = if brokers.is_empty() {
        (503, "no_broker")
    } else {
        (200, "ok")
    };
    let answer = HealthAnswer {
        status: text.to_owned(),
        brokers: brokers.to_vec(),
    };
    json_response(status, &to_value(&answer), true)
}

/// The launch body as decoded on the gateway: `mode` as text, to tell an unknown mode from
/// a malformed body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLaunchBody {
    resource: String,
    mode: String,
}

/// Serializes an answer type; these types only hold strings, numbers and lists.
fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|_| serde_json::json!({}))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", message)
}

fn require_method(head: &RequestHead, method: &'static str) -> Result<(), ApiError> {
    if head.method == method {
        return Ok(());
    }
    let mut err = ApiError::new(405, "method_not_allowed", format!("{} takes {method}", head.path));
    err.allow = Some(match head.path.as_str() {
        HEALTH_PATH => "GET, HEAD",
        _ => method,
    });
    Err(err)
}

/// The bearer session token, wrapped as `BROKER~TOKEN`.
fn session_token(head: &RequestHead) -> Result<ApiToken, ApiError> {
    let bearer = head
        .bearer
        .as_deref()
        .ok_or_else(|| ApiError::new(401, "missing_token", "Authorization: Bearer TOKEN is required"))?;
    ApiToken::parse(bearer)
        .ok_or_else(|| ApiError::new(401, "session_invalid", "the session token is not valid"))
}

/// Decodes a JSON body. Error messages name at most a field, never a value: serde's
/// "invalid type" errors quote the value, which may be a password.
fn json_body<T: for<'de> Deserialize<'de>>(head: &RequestHead, body: &[u8]) -> Result<T, ApiError> {
    let json = head.content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "the body must be Content-Type: application/json",
        ));
    }
    if !head.chunked && body.len() != head.content_length {
        return Err(bad_request("the body length does not match Content-Length"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        // "missing field `x`" and "duplicate field `x`" name one of our fields; "unknown
        // field `...`, expected ..." names the client's key, which may be a misplaced
        // password: only what was expected is said.
        let ours = ["missing field", "duplicate field"]
            .iter()
            .any(|p| text.starts_with(p));
        if ours {
            bad_request(format!("invalid JSON body: {text}"))
        } else if text.starts_with("unknown field") {
            // Our field list is at the end: search from there, so a key that contains
            // ", expected" itself is not taken for it.
            let text = text.rfind(" at line").map_or(text.as_str(), |at| &text[..at]);
            let expected = text.rfind(", expected").map_or("", |at| &text[at + 2..]);
            bad_request(format!("invalid JSON body: unknown field; {expected}"))
        } else {
            bad_request(format!(
                "invalid JSON body at line {} column {}",
                e.line(),
                e.column()
            ))
        }
    })
}

/// Free text: non-empty, bounded, no control characters (as the broker checks it).
fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(bad_request(format!("field {field}: empty")));
    }
    if value.len() > max_bytes {
        return Err(bad_request(format!("field {field}: over {max_bytes} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad_request(format!("field {field}: control character")));
    }
    Ok(())
}

/// Credentials: non-empty and bounded.
fn check_secret(field: &str, value: &Secret, max_bytes: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(bad_request(format!("field {field}: empty")));
    }
    if value.len() > max_bytes {
        return Err(bad_request(format!("field {field}: over {max_bytes} bytes")));
    }
    Ok(())
}

fn valid_broker_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_SESSION_TOKEN_BYTES && token.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use gatehouse_control::message::ResourceKind;

    use super::super::http::{parse_head, read_body, BodyRead, HeadParse};
    use super::*;

    /// Parses a whole request (head + body) the way the event loop would, then routes it.
    fn call(raw: &str) -> Result<ApiCall, ApiError> {
        let HeadParse::Complete(head) = parse_head(raw.as_bytes()) else {
            panic!("head of {raw:?} does not parse");
        };
        let after_head = &raw.as_bytes()[head.head_len..];
        let BodyRead::Complete { body, taken } = read_body(&head, after_head) else {
            panic!("body of {raw:?} is not whole");
        };
        assert_eq!(taken, after_head.len(), "test request body length");
        route(&head, &body)
    }

    fn post(path: &str, extra: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn get(path: &str, extra: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n")
    }

    fn err(raw: &str) -> (u16, &'static str) {
        match call(raw) {
            Err(e) => (e.status, e.code),
            Ok(c) => panic!("expected an error for {raw:?}, got {c:?}"),
        }
    }

    const BEARER: &str = "Authorization: Bearer broker-1~tok.EN~x\r\n";

    #[test]
    fn an_unknown_json_key_is_not_repeated() {
        let body = r#"{"user":"d","password":"x","MyS3cret\u202e<b>":1}"#;
        let e = call(&post("/api/v1/login", "", body)).unwrap_err();
        assert_eq!((e.status, e.code), (400, "bad_request"));
        assert!(!e.message.contains("MyS3cret"), "{}", e.message);
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert!(e.message.contains("expected"), "{}", e.message);
        assert!(e.message.contains("`password`"), "{}", e.message);
        // A key that looks like serde's own words is not taken for them.
        let body = r#"{"user":"d","password":"x","pw, expected hunter2":1}"#;
        let e = call(&post("/api/v1/login", "", body)).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        // A missing field names ours.
        let e = call(&post("/api/v1/login", "", r#"{"user":"d"}"#)).unwrap_err();
        assert!(e.message.contains("missing field `password`"), "{}", e.message);
    }

    fn token() -> ApiToken {
        ApiToken::new("broker-1", "tok.EN~x").expect("valid test token")
    }

    /// Splits a response into status, header lines and JSON body.
    fn answer(resp: &[u8]) -> (u16, Vec<String>, serde_json::Value) {
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("head end");
        let head = std::str::from_utf8(&resp[..end]).expect("ascii head");
        let lines: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
        let status = lines[0][9..12].parse().expect("status");
        let body = serde_json::from_slice(&resp[end + 4..]).expect("json body");
        (status, lines, body)
    }

    #[test]
    fn login_decodes() {
        let raw = post(
            "/api/v1/login",
            "",
            r#"{"user":"alice","password":"pw","second_factor":"123456"}"#,
        );
        let ApiCall::Login {
            user,
            password,
            second_factor,
        } = call(&raw).unwrap()
        else {
            panic!("not a login");
        };
        assert_eq!((user.as_str(), password.expose()), ("alice", "pw"));
        assert_eq!(
            second_factor.map(|s| s.expose().to_owned()).as_deref(),
            Some("123456")
        );
        let raw = post("/api/v1/login", "", r#"{"user":"alice","password":"pw"}"#);
        assert!(matches!(
            call(&raw),
            Ok(ApiCall::Login {
                second_factor: None,
                ..
            })
        ));
        // charset parameter allowed.
        let raw = raw.replace("application/json", "Application/JSON; charset=utf-8");
        assert!(matches!(call(&raw), Ok(ApiCall::Login { .. })));
        // A chunked body (RFC 9112 §7.1) decodes like the same bytes with a length.
        let chunked = "POST /api/v1/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
                       Transfer-Encoding: chunked\r\n\r\n9\r\n{\"user\":\"\r\n17;x=y\r\n\
                       alice\",\"password\":\"pw\"}\r\n0\r\n\r\n";
        let ApiCall::Login { user, password, .. } = call(chunked).unwrap() else {
            panic!("not a login");
        };
        assert_eq!((user.as_str(), password.expose()), ("alice", "pw"));
    }

    #[test]
    fn login_refusals() {
        let bad = |body: &str| err(&post("/api/v1/login", "", body));
        assert_eq!(
            bad(r#"{"user":"a","password":"p","extra":1}"#),
            (400, "bad_request")
        );
        assert_eq!(bad(r#"{"user":"a"}"#), (400, "bad_request"));
        assert_eq!(bad(r#"{"user":"","password":"p"}"#), (400, "bad_request"));
        assert_eq!(bad(r#"{"user":"a","password":""}"#), (400, "bad_request"));
        assert_eq!(bad(r#"{"user":"a\u0007","password":"p"}"#), (400, "bad_request"));
        assert_eq!(
            bad(r#"{"user":"a","password":"p","second_factor":""}"#),
            (400, "bad_request")
        );
        assert_eq!(bad("not json"), (400, "bad_request"));
        assert_eq!(bad(""), (400, "bad_request"));
        let long_user = format!(
            r#"{{"user":"{}","password":"p"}}"#,
            "u".repeat(MAX_USER_BYTES + 1)
        );
        assert_eq!(bad(&long_user), (400, "bad_request"));
        let long_pw = format!(
            r#"{{"user":"a","password":"{}"}}"#,
            "p".repeat(MAX_PASSWORD_BYTES + 1)
        );
        assert_eq!(bad(&long_pw), (400, "bad_request"));
        // Wrong content type, wrong method.
        let raw = post("/api/v1/login", "", r#"{"user":"a","password":"p"}"#)
            .replace("application/json", "text/plain");
        assert_eq!(err(&raw), (415, "unsupported_media_type"));
        assert_eq!(err(&get("/api/v1/login", "")), (405, "method_not_allowed"));
    }

    #[test]
    fn answers_carry_the_headers_their_status_requires() {
        let text = |e: ApiError| String::from_utf8(e.response()).unwrap();
        // 405: Allow (RFC 9110 §15.5.6).
        let e = call(&get("/api/v1/login", "")).unwrap_err();
        assert!(text(e).contains("\r\nAllow: POST\r\n"));
        let e = call(&post("/health", "", "{}")).unwrap_err();
        assert!(text(e).contains("\r\nAllow: GET, HEAD\r\n"));
        // 401: WWW-Authenticate, invalid_token when a token was sent (RFC 6750 §3).
        let e = call(&get("/api/v1/resources", "")).unwrap_err();
        let t = text(e);
        assert!(
            t.contains("\r\nWWW-Authenticate: Bearer realm=\"gatehouse\"\r\n"),
            "{t}"
        );
        let e = call(&get("/api/v1/resources", "Authorization: Bearer nonsense\r\n")).unwrap_err();
        assert!(text(e).contains("error=\"invalid_token\""));
        // A login refused by the broker sent no token: the challenge alone.
        let wrong = ApiError::new(401, "wrong_password", "wrong user or password");
        let t = text(wrong);
        assert!(
            t.contains("WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n"),
            "{t}"
        );
        assert!(!t.contains("invalid_token"), "{t}");
        // A 503 says when to ask again; other errors do not.
        let t = text(ApiError::new(503, "no_broker", "no broker is reachable"));
        assert!(
            t.contains(&format!("\r\nRetry-After: {RETRY_AFTER_S}\r\n")),
            "{t}"
        );
        assert_eq!(RETRY_AFTER_S, 5);
        let t = text(ApiError::new(504, "broker_timeout", "the broker did not answer"));
        assert!(!t.contains("Retry-After"), "{t}");
        // Every answer has a Date (RFC 9110 §6.6.1).
        let e = call(&get("/api/v1/login", "")).unwrap_err();
        assert!(text(e).contains(" GMT\r\n"));
        // HEAD is a GET without a body for /health.
        assert_eq!(
            call(&get("/health", "").replacen("GET", "HEAD", 1)).unwrap(),
            ApiCall::Health
        );
    }

    #[test]
    fn json_errors_never_echo_values() {
        // serde would quote the value in "invalid type" errors: a password must not appear.
        for body in [
            r#"{"user":"a","password":12345678}"#,
            r#"{"user":"a","password":["hunter2"]}"#,
            r#"{"user":"a","password":"hunter2","second_factor":87654321}"#,
            r#"{"user":"a","password":"hunter2""#,
        ] {
            let e = call(&post("/api/v1/login", "", body)).unwrap_err();
            for secret in ["12345678", "hunter2", "87654321"] {
                assert!(!e.message.contains(secret), "{body}: {}", e.message);
            }
        }
        // Our field names are fine to show; the client's unknown key is not (it is any
        // text the client chose: see an_unknown_json_key_is_not_repeated).
        let e = call(&post(
            "/api/v1/login",
            "",
            r#"{"user":"a","password":"p","passwd":"x"}"#,
        ))
        .unwrap_err();
        assert!(!e.message.contains("passwd"), "{}", e.message);
        assert!(e.message.contains("`second_factor`"), "{}", e.message);
    }

    #[test]
    fn resources_and_tokens() {
        assert_eq!(
            call(&get("/api/v1/resources", BEARER)).unwrap(),
            ApiCall::Resources { token: token() }
        );
        assert_eq!(err(&get("/api/v1/resources", "")), (401, "missing_token"));
        assert_eq!(
            err(&get("/api/v1/resources", "Authorization: Basic YTpi\r\n")),
            (401, "missing_token")
        );
        for bad in ["notilde", "~tok", "broker~", "b~\u{e9}"] {
            let raw = get("/api/v1/resources", &format!("Authorization: Bearer {bad}\r\n"));
            if let HeadParse::Complete(_) = parse_head(raw.as_bytes()) {
                assert_eq!(err(&raw), (401, "session_invalid"), "{bad}");
            }
        }
        assert_eq!(
            err(&post("/api/v1/resources", BEARER, "{}")),
            (405, "method_not_allowed")
        );
    }

    #[test]
    fn launch_decodes() {
        for (mode, want) in [("gateway", LaunchMode::Gateway), ("direct", LaunchMode::Direct)] {
            let raw = post(
                "/api/v1/launch",
                BEARER,
                &format!(r#"{{"resource":"desktop-a","mode":"{mode}"}}"#),
            );
            assert_eq!(
                call(&raw).unwrap(),
                ApiCall::Launch {
                    token: token(),
                    resource: "desktop-a".into(),
                    mode: want
                }
            );
        }
        let launch = |extra: &str, body: &str| err(&post("/api/v1/launch", extra, body));
        assert_eq!(
            launch(BEARER, r#"{"resource":"d","mode":"gateway-ssl"}"#),
            (400, "unsupported_mode")
        );
        assert_eq!(
            launch(BEARER, r#"{"resource":"d","mode":"GATEWAY"}"#),
            (400, "unsupported_mode")
        );
        assert_eq!(
            launch(BEARER, r#"{"resource":"d","mode":1}"#),
            (400, "bad_request")
        );
        assert_eq!(launch(BEARER, r#"{"resource":"d"}"#), (400, "bad_request"));
        assert_eq!(
            launch(BEARER, r#"{"resource":"d","mode":"direct","host":"10.0.0.9"}"#),
            (400, "bad_request")
        );
        assert_eq!(
            launch(BEARER, r#"{"resource":"a b","mode":"direct"}"#),
            (400, "bad_request")
        );
        assert_eq!(
            launch(BEARER, r#"{"resource":"","mode":"direct"}"#),
            (400, "bad_request")
        );
        // The token is checked before the body.
        assert_eq!(launch("", "garbage"), (401, "missing_token"));
        assert_eq!(err(&get("/api/v1/launch", BEARER)), (405, "method_not_allowed"));
    }

    #[test]
    fn tunnel_requests() {
        let upgrade = "Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\n";
        let raw = get(
            "/api/v1/tunnel",
            &format!("{upgrade}Authorization: Bearer T.1-x\r\nGatehouse-Session: broker-1~tok.EN~x\r\n"),
        );
        assert_eq!(
            call(&raw).unwrap(),
            ApiCall::Tunnel {
                ticket: "T.1-x".into(),
                session: token(),
            }
        );
        let no_session = get(
            "/api/v1/tunnel",
            &format!("{upgrade}Authorization: Bearer T.1-x\r\n"),
        );
        assert_eq!(err(&no_session), (401, "missing_token"));
        assert_eq!(
            err(&get("/api/v1/tunnel", "Authorization: Bearer T\r\n")),
            (400, "bad_request")
        );
        let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer T\r\n";
        assert_eq!(err(&get("/api/v1/tunnel", ws)), (400, "bad_request"));
        assert_eq!(err(&get("/api/v1/tunnel", upgrade)), (401, "missing_token"));
        let long = format!(
            "{upgrade}Authorization: Bearer {}\r\n",
            "t".repeat(MAX_TICKET_CHARS + 1)
        );
        assert_eq!(err(&get("/api/v1/tunnel", &long)), (403, "ticket_malformed"));
        let with_body = format!("{upgrade}Authorization: Bearer T\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(
            err(&format!("GET /api/v1/tunnel HTTP/1.1\r\nHost: gw\r\n{with_body}")),
            (400, "bad_request")
        );
        // Nor a chunked one, even empty: tunnel bytes start after the head.
        let chunked =
            format!("{upgrade}Authorization: Bearer T\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(
            err(&format!("GET /api/v1/tunnel HTTP/1.1\r\nHost: gw\r\n{chunked}")),
            (400, "bad_request")
        );
        let raw = format!("POST /api/v1/tunnel HTTP/1.1\r\nHost: gw\r\n{upgrade}Content-Length: 0\r\n\r\n");
        assert_eq!(err(&raw), (405, "method_not_allowed"));
    }

    #[test]
    fn health_and_other_paths() {
        assert_eq!(call(&get("/health", "")).unwrap(), ApiCall::Health);
        assert_eq!(call(&get("/health?verbose=1", "")).unwrap(), ApiCall::Health);
        assert_eq!(err(&post("/health", "", "{}")), (405, "method_not_allowed"));
        for path in [
            "/",
            "/index.html",
            "/api",
            "/api/v2/login",
            "/healthz",
            "/remoteDesktopGateway/",
            "//api/v1/login",
        ] {
            assert_eq!(call(&get(path, "")).unwrap(), ApiCall::NotApi, "{path}");
        }
        for path in [
            "/api/v1",
            "/api/v1/",
            "/api/v1/logout",
            "/api/v1/login/",
            "/api/v1/%6cogin",
        ] {
            assert_eq!(err(&get(path, "")), (404, "not_found"), "{path}");
        }
    }

    #[test]
    fn body_length_mismatch_is_refused() {
        let raw = post("/api/v1/login", "", r#"{"user":"a","password":"p"}"#);
        let HeadParse::Complete(head) = parse_head(raw.as_bytes()) else {
            panic!("head")
        };
        let body = &raw.as_bytes()[head.head_len..];
        assert!(route(&head, &body[..body.len() - 1]).is_err());
    }

    #[test]
    fn api_token_round_trip() {
        let t = ApiToken::new("broker-1", "abc~def").unwrap();
        assert_eq!(t.encode(), "broker-1~abc~def");
        assert_eq!(ApiToken::parse(&t.encode()), Some(t.clone()));
        // '~' in a broker name is refused by design: the wire form could not be split back.
        assert_eq!(ApiToken::new("bro~ker", "abc"), None);
        assert!(!ApiToken::is_valid_broker_name("bro~ker"));
        let forged = ApiToken {
            broker: "bro~ker".into(),
            token: "abc".into(),
        };
        assert_ne!(ApiToken::parse(&forged.encode()), Some(forged));
        for bad in ["", "~", "a~", "~a", "a b~c", "a~b c", "noseparator"] {
            assert_eq!(ApiToken::parse(bad), None, "{bad:?}");
        }
        let max = format!("b~{}", "t".repeat(MAX_SESSION_TOKEN_BYTES));
        assert!(ApiToken::parse(&max).is_some());
        assert!(ApiToken::parse(&format!("{max}t")).is_none());
        assert!(!ApiToken::is_valid_broker_name(
            &"b".repeat(MAX_BROKER_NAME_BYTES + 1)
        ));
        assert!(!format!("{t:?}").contains("abc"), "{t:?}");
    }

    #[test]
    fn debug_redacts_credentials() {
        let login = ApiCall::Login {
            user: "alice".into(),
            password: Secret::new("hunter2"),
            second_factor: Some(Secret::new("987654")),
        };
        let tunnel = ApiCall::Tunnel {
            ticket: "TICKETSECRET".into(),
            session: token(),
        };
        let launch = ApiCall::Launch {
            token: token(),
            resource: "d".into(),
            mode: LaunchMode::Direct,
        };
        let text = format!("{login:?} {tunnel:?} {launch:?}");
        for secret in ["hunter2", "987654", "TICKETSECRET", "tok.EN"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("alice") && text.contains("broker-1"), "{text}");
    }

    #[test]
    fn refusal_mapping_follows_the_table() {
        use RefusalReason as R;
        let table: [(u16, &[RefusalReason]); 7] = [
            (400, &[R::BadRequest]),
            (
                401,
                &[
                    R::UnknownUser,
                    R::WrongPassword,
                    R::SecondFactorRequired,
                    R::SecondFactorWrong,
                    R::SessionInvalid,
                ],
            ),
            (
                403,
                &[
                    R::UserLocked,
                    R::UserDisabled,
                    R::NotPermitted,
                    R::WrongSite,
                    R::TicketMalformed,
                    R::TicketForged,
                    R::TicketUnknownKey,
                    R::TicketExpired,
                    R::TicketReplayed,
                    R::TicketBindingMismatch,
                    R::TicketWrongIssuer,
                    R::Unrecognized,
                ],
            ),
            (404, &[R::UnknownResource]),
            (429, &[R::AddressThrottled]),
            (
                503,
                &[
                    R::NoHostAvailable,
                    R::DirectoryUnavailable,
                    R::Draining,
                    R::Internal,
                    R::UnknownHost,
                ],
            ),
            (504, &[]),
        ];
        let mut seen = 0;
        for (status, reasons) in table {
            for &r in reasons {
                assert_eq!(refusal_status(r), status, "{r}");
                let e = refusal_error(&Refused::new(r));
                assert_eq!(e.status, status, "{r}");
                assert!(!e.message.is_empty());
                seen += 1;
            }
        }
        assert_eq!(seen, RefusalReason::ALL.len(), "every reason is in the table");
        // Codes are the broker's strings, except the ones the client must not tell apart
        // and those that are the gateway's own.
        assert_eq!(
            refusal_error(&Refused::new(R::TicketReplayed)).code,
            "ticket_replayed"
        );
        assert_eq!(
            refusal_error(&Refused::new(R::NoHostAvailable)).code,
            "no_host_available"
        );
        assert_eq!(refusal_error(&Refused::new(R::Draining)).code, "broker_busy");
        assert_eq!(refusal_error(&Refused::new(R::Unrecognized)).code, "forbidden");
        let unknown = refusal_error(&Refused::new(R::UnknownUser));
        let wrong = refusal_error(&Refused::new(R::WrongPassword));
        assert_eq!(unknown, wrong, "user names must not be probeable");
    }

    #[test]
    fn refusal_detail_is_not_shown() {
        let refused = Refused::with_detail(R_WRONG, "user alice password hunter2 from 10.1.2.3");
        let e = refusal_error(&refused);
        let resp = String::from_utf8(e.response()).unwrap();
        for leak in ["alice", "hunter2", "10.1.2.3"] {
            assert!(!resp.contains(leak), "{resp}");
        }
        let (status, lines, body) = answer(&e.response());
        assert_eq!(status, 401);
        assert!(lines.contains(&"Connection: close".to_owned()));
        let body: ErrorBody = serde_json::from_value(body).unwrap();
        assert_eq!(body.error, "wrong_password");
    }

    const R_WRONG: RefusalReason = RefusalReason::WrongPassword;

    fn resources() -> Vec<ResourceInfo> {
        vec![ResourceInfo {
            id: "desktop-a".into(),
            name: "Office desktop".into(),
            kind: ResourceKind::Desktop,
        }]
    }

    #[test]
    fn login_answer_wraps_the_broker_token() {
        let ok = LoginOk {
            session_token: Secret::new("S3SS10N"),
            resources: resources(),
        };
        let (status, lines, body) = answer(&login_ok("broker-2", &ok, true));
        assert_eq!(status, 200);
        assert!(lines.contains(&"Connection: keep-alive".to_owned()));
        assert_eq!(body["resources"][0]["kind"], "desktop");
        let parsed: LoginAnswer = serde_json::from_value(body).unwrap();
        let token = ApiToken::parse(parsed.session_token.expose()).unwrap();
        assert_eq!(
            (token.broker.as_str(), token.token.as_str()),
            ("broker-2", "S3SS10N")
        );
        assert_eq!(parsed.resources, resources());
        let (_, lines, _) = answer(&login_ok("broker-2", &ok, false));
        assert!(lines.contains(&"Connection: close".to_owned()));
    }

    #[test]
    fn resources_answer() {
        let (status, _, body) = answer(&resources_ok(
            &Resources {
                resources: resources(),
            },
            true,
        ));
        assert_eq!(status, 200);
        let parsed: ResourcesAnswer = serde_json::from_value(body).unwrap();
        assert_eq!(parsed.resources, resources());
    }

    #[test]
    fn launch_answers() {
        let l = Launched {
            host: "10.0.0.5".into(),
            port: 3389,
            ticket: Some(Secret::new("TKT")),
        };
        let (status, _, body) = answer(&launched_ok(LaunchMode::Gateway, &l, true));
        assert_eq!(
            (status, body.clone()),
            (200, serde_json::json!({"mode": "gateway", "ticket": "TKT"}))
        );
        assert_eq!(
            serde_json::from_value::<LaunchAnswer>(body).unwrap(),
            LaunchAnswer::Gateway {
                ticket: Secret::new("TKT")
            }
        );
        let (status, _, body) = answer(&launched_ok(LaunchMode::Direct, &l, true));
        assert_eq!(
            (status, body.clone()),
            (
                200,
                serde_json::json!({"mode": "direct", "host": "10.0.0.5", "port": 3389})
            )
        );
        assert_eq!(
            serde_json::from_value::<LaunchAnswer>(body).unwrap(),
            LaunchAnswer::Direct {
                host: "10.0.0.5".into(),
                port: 3389
            }
        );
        let no_ticket = Launched { ticket: None, ..l };
        let (status, lines, body) = answer(&launched_ok(LaunchMode::Gateway, &no_ticket, true));
        assert_eq!((status, body["error"].as_str()), (503, Some("broker_busy")));
        assert!(lines.contains(&"Connection: close".to_owned()));
    }

    #[test]
    fn health_answers() {
        let (status, _, body) = answer(&health(&["broker-1".into()]));
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "ok", "brokers": ["broker-1"]}))
        );
        let (status, _, body) = answer(&health(&[]));
        assert_eq!(
            (status, body),
            (503, serde_json::json!({"status": "no_broker", "brokers": []}))
        );
    }

    #[test]
    fn client_bodies_round_trip() {
        let login = LoginBody {
            user: "alice".into(),
            password: Secret::new("pw"),
            second_factor: None,
        };
        let json = serde_json::to_string(&login).unwrap();
        assert_eq!(json, r#"{"user":"alice","password":"pw"}"#);
        assert_eq!(serde_json::from_str::<LoginBody>(&json).unwrap(), login);
        let launch = LaunchBody {
            resource: "desktop-a".into(),
            mode: LaunchMode::Gateway,
        };
        let json = serde_json::to_string(&launch).unwrap();
        assert_eq!(json, r#"{"resource":"desktop-a","mode":"gateway"}"#);
        // What the client sends is what the gateway accepts.
        assert!(matches!(
            call(&post("/api/v1/launch", BEARER, &json)),
            Ok(ApiCall::Launch { .. })
        ));
        let e: ErrorBody = serde_json::from_str(r#"{"error":"not_found","message":"m"}"#).unwrap();
        assert_eq!(e.error, "not_found");
    }
}
