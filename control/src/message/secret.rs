//! A string that must not reach logs: passwords, second factors, session tokens, tickets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A credential carried in a message. It serializes as a plain JSON string, but its `Debug`
/// form is redacted so that logging a whole request (`{request:?}`) leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the code that checks or forwards it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes, for validation without exposing the value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the credential is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_json_is_plain() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<7 bytes redacted>)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
