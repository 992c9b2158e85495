//! The rules for the ids a shim sends: the agent id, the agent-server id and
//! the boot id. The shim checks them at start and the gateway at every
//! stream, with these same functions, so an id the shim starts with is never
//! refused by the gateway.
//!
//! Ids become queue keys and vendor fields (log group names, hosts), hence
//! the narrow alphabet. This module must not know where an id came from.

/// Longest agent id accepted.
pub const MAX_AGENT_ID: usize = 128;
/// Longest agent-server id accepted.
pub const MAX_AGENT_SERVER_ID: usize = 255;
/// Longest boot id accepted (the shim sends 32 hex digits).
pub const MAX_BOOT_ID: usize = 64;
/// The characters an agent or agent-server id may hold.
pub const ID_CHARACTERS: &str = "A-Z a-z 0-9 . _ -";

/// An id the gateway refuses. Each message names the rule and the allowed
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the {what} is empty; {}", rule(what, *max))]
    Empty { what: &'static str, max: usize },
    #[error("the {what} is {len} bytes long; {}", rule(what, *max))]
    TooLong {
        what: &'static str,
        max: usize,
        len: usize,
    },
    #[error("the {what} {id:?} contains {bad:?}; {}", rule(what, *max))]
    Character {
        what: &'static str,
        max: usize,
        id: String,
        bad: char,
    },
    #[error("the {what} {id:?} starts with '.'; {}", rule(what, *max))]
    LeadingDot {
        what: &'static str,
        max: usize,
        id: String,
    },
    #[error(
        "the boot id must be 1 to {MAX_BOOT_ID} letters or digits (the shim sends 32 hex digits)"
    )]
    BootId,
}

fn rule(what: &str, max: usize) -> String {
    format!("an {what} is 1 to {max} characters of {ID_CHARACTERS}, not starting with '.'")
}

/// Checks an agent id: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.`.
pub fn check_agent_id(id: &str) -> Result<(), IdError> {
    check("agent id", id, MAX_AGENT_ID)
}

/// Checks an agent-server id: 1 to 255 characters of `A-Z a-z 0-9 . _ -`,
/// not starting with `.`.
pub fn check_agent_server_id(id: &str) -> Result<(), IdError> {
    check("agent-server id", id, MAX_AGENT_SERVER_ID)
}

/// Checks a boot id: 1 to 64 ASCII letters or digits.
pub fn check_boot_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_BOOT_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(IdError::BootId);
    }
    Ok(())
}

fn check(what: &'static str, id: &str, max: usize) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { what, max });
    }
    if id.len() > max {
        let len = id.len();
        return Err(IdError::TooLong { what, max, len });
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let id = id.to_string();
        return Err(IdError::Character { what, max, id, bad });
    }
    if id.starts_with('.') {
        let id = id.to_string();
        return Err(IdError::LeadingDot { what, max, id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_accepted() {
        assert_eq!(check_agent_id("CA_1x2y-3.z"), Ok(()));
        assert_eq!(check_agent_server_id("ip-10-0-0-1.ec2.internal"), Ok(()));
        assert_eq!(check_agent_id(&"a".repeat(MAX_AGENT_ID)), Ok(()));
        assert_eq!(check_boot_id(&"f".repeat(32)), Ok(()));
    }

    #[test]
    fn slashes_dots_spaces_and_non_ascii_are_refused_naming_the_allowed_characters() {
        for bad in [
            "a/b", "..", "../etc", "a\nb", "a\u{0}b", "", "ü", "café", "my agent",
        ] {
            let err = check_agent_id(bad).unwrap_err().to_string();
            assert!(err.contains(ID_CHARACTERS), "{bad:?}: {err}");
        }
    }

    #[test]
    fn over_long_ids_are_refused_naming_the_limit_not_the_id() {
        let err = check_agent_id(&"a".repeat(MAX_AGENT_ID + 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("129 bytes") && err.contains("1 to 128"),
            "{err}"
        );
        assert!(!err.contains("aaaa"), "{err}");
        assert!(check_agent_server_id(&"a".repeat(256)).is_err());
    }

    #[test]
    fn boot_ids_are_letters_or_digits() {
        for bad in ["", "a-b", &"a".repeat(65)] {
            assert_eq!(check_boot_id(bad), Err(IdError::BootId), "{bad:?}");
        }
    }
}
