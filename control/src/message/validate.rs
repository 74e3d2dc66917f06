//! Field checks shared by requests and replies: bounds and allowed characters.

use std::fmt;

use super::secret::Secret;

/// A field that failed validation: which one and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// The JSON field name.
    pub field: &'static str,
    /// What is wrong: `empty`, `too long`, `control character`, `bad character`, ...
    pub problem: &'static str,
}

impl Invalid {
    /// A validation failure of `field`.
    pub fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {}: {}", self.field, self.problem)
    }
}

/// Free text (user names, display names): non-empty, bounded, no control characters.
pub(crate) fn check_text(field: &'static str, value: &str, max_bytes: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "empty"));
    }
    if value.len() > max_bytes {
        return Err(Invalid::new(field, "too long"));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(field, "control character"));
    }
    Ok(())
}

/// Identifiers (hosts, sites, resource ids): non-empty, bounded, printable ASCII without
/// spaces, so they are safe in logs, metrics labels and tickets.
pub(crate) fn check_name(field: &'static str, value: &str, max_bytes: usize) -> Result<(), Invalid> {
    check_text(field, value, max_bytes)?;
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(field, "bad character"));
    }
    Ok(())
}

/// Credentials: non-empty and bounded; any content.
pub(crate) fn check_secret(field: &'static str, value: &Secret, max_bytes: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "empty"));
    }
    if value.len() > max_bytes {
        return Err(Invalid::new(field, "too long"));
    }
    Ok(())
}

/// Lists: bounded length.
pub(crate) fn check_list(field: &'static str, len: usize, max_len: usize) -> Result<(), Invalid> {
    if len > max_len {
        return Err(Invalid::new(field, "too many entries"));
    }
    Ok(())
}
