//! Wire formats shared by the scenarios (clients) and the stand-ins (hosts). No I/O.

pub mod rdp;
pub mod source;
