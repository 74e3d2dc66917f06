//! The gateway's sans-IO cores (issue 5): what the first bytes of a connection are
//! (`sniff`), the RDP Connection Request and its cookie (`x224`), HTTP request heads and
//! answers (`http`), the client API's routes and bodies (`api`, specified in
//! `CLIENT-API.md`), and the forwarding chain's gateway path (`path`). They take bytes and
//! return decisions; the engine's gateway front (`engine/session_gateway.rs`) and the role
//! (`gateway_role`) do the I/O.

pub mod api;
pub mod http;
pub mod path;
pub mod sniff;
pub mod x224;
