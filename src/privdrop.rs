//! Dropping root after binding.
//!
//! Owns the switch to an unprivileged user and group; called once, after every listener is
//! bound and before any thread serves traffic.

use nix::unistd::{setgid, setgroups, setuid, Group, User};

/// Switches to `user` (and `group`, default the user's primary group). No-op when `user`
/// is `None`. Fails when the user does not exist or the switch is refused.
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<(), String> {
    let Some(user) = user else { return Ok(()) };
    let u = User::from_name(user)
        .map_err(|e| format!("node.user {user:?}: {e}"))?
        .ok_or_else(|| format!("node.user {user:?}: no such user"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("node.group {g:?}: {e}"))?
                .ok_or_else(|| format!("node.group {g:?}: no such group"))?
                .gid
        }
        None => u.gid,
    };
    if nix::unistd::geteuid() == u.uid {
        return Ok(());
    }
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(u.uid).map_err(|e| format!("setuid({}): {e}", u.uid))?;
    tracing::info!(
        user,
        uid = u.uid.as_raw(),
        gid = gid.as_raw(),
        "dropped privileges"
    );
    Ok(())
}
