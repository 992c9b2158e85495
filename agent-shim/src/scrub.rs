//! Keeps the ingest token from the agent, which runs as the same user and
//! could otherwise read it in `/proc/<shim pid>/environ` or
//! `/proc/<shim pid>/cmdline`.
//!
//! Once the configuration is read, [`hide_token`] overwrites the token's
//! value in the shim's original argument and environment strings (the
//! memory those files show) with NUL bytes, through `/proc/self/mem`, and
//! makes the shim not dumpable, so its memory and environment are closed to
//! other processes of its user. The token file (`LOGDRAIN_TOKEN_FILE`)
//! keeps it out of both in the first place.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The option and variable whose values are overwritten.
const TOKEN_OPTION: &[u8] = b"--token";
const TOKEN_VAR: &[u8] = b"LOGDRAIN_TOKEN=";

/// Hides the token from other processes of the same user. Best effort: an
/// error says what could not be done; the shim warns and goes on.
pub fn hide_token() -> io::Result<()> {
    let scrubbed = scrub_own_memory();
    let dumpable = crate::sys::set_not_dumpable();
    scrubbed.and(dumpable)
}

fn scrub_own_memory() -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let [arg_start, arg_end, env_start, env_end] = memory_layout(&stat)
        .ok_or_else(|| io::Error::other("/proc/self/stat has no argument and environment range"))?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    scrub_region(&mem, arg_start..arg_end, argument_values)?;
    scrub_region(&mem, env_start..env_end, environment_values)
}

/// Overwrites with NUL bytes the ranges `find` picks in the memory
/// `region`.
fn scrub_region(
    mem: &File,
    region: Range<u64>,
    find: fn(&[u8]) -> Vec<Range<usize>>,
) -> io::Result<()> {
    let len = usize::try_from(region.end.saturating_sub(region.start))
        .map_err(|_| io::Error::other("argument area too large"))?;
    let mut bytes = vec![0u8; len];
    mem.read_exact_at(&mut bytes, region.start)?;
    for range in find(&bytes) {
        let zeros = vec![0u8; range.len()];
        mem.write_all_at(&zeros, region.start + range.start as u64)?;
    }
    Ok(())
}

/// `arg_start`, `arg_end`, `env_start`, `env_end` of `/proc/self/stat`
/// (fields 48 to 51, after the command name in parentheses).
fn memory_layout(stat: &str) -> Option<[u64; 4]> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 (the state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some([field(48)?, field(49)?, field(50)?, field(51)?])
}

/// The value bytes of `--token VALUE` and `--token=VALUE` in NUL-separated
/// arguments, before `--` (the agent's command is not the shim's).
fn argument_values(args: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut value_next = false;
    for (start, arg) in split_nul(args) {
        if value_next {
            ranges.push(start..start + arg.len());
            value_next = false;
        } else if arg == b"--" {
            break;
        } else if arg == TOKEN_OPTION {
            value_next = true;
        } else if let Some(value) = arg
            .strip_prefix(TOKEN_OPTION)
            .and_then(|rest| rest.strip_prefix(b"="))
        {
            ranges.push(start + arg.len() - value.len()..start + arg.len());
        }
    }
    ranges
}

/// The value bytes of `LOGDRAIN_TOKEN=VALUE` in NUL-separated variables.
fn environment_values(env: &[u8]) -> Vec<Range<usize>> {
    split_nul(env)
        .filter(|(_, var)| var.starts_with(TOKEN_VAR))
        .map(|(start, var)| start + TOKEN_VAR.len()..start + var.len())
        .collect()
}

/// The NUL-terminated strings of `bytes`, each with its offset.
fn split_nul(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut offset = 0;
    bytes.split(|&b| b == 0).map(move |part| {
        let start = offset;
        offset += part.len() + 1;
        (start, part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(bytes: &[u8], find: fn(&[u8]) -> Vec<Range<usize>>) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for range in find(bytes) {
            out[range].fill(0);
        }
        out
    }

    #[test]
    fn token_option_values_are_found_before_the_agents_command_only() {
        let args =
            b"agent-shim\0--token\0s3cr3t\0--token=t0k3n\0--agent-id\0a\0--\0sh\0--token\0mine\0";
        assert_eq!(
            scrubbed(args, argument_values),
            b"agent-shim\0--token\0\0\0\0\0\0\0\0--token=\0\0\0\0\0\0--agent-id\0a\0--\0sh\0--token\0mine\0"
        );
    }

    #[test]
    fn only_the_token_variables_value_is_found() {
        let env = b"PATH=/bin\0LOGDRAIN_TOKEN=s3cr3t\0LOGDRAIN_TOKEN_FILE=/t\0";
        assert_eq!(
            scrubbed(env, environment_values),
            b"PATH=/bin\0LOGDRAIN_TOKEN=\0\0\0\0\0\0\0LOGDRAIN_TOKEN_FILE=/t\0"
        );
    }

    #[test]
    fn the_memory_layout_is_read_after_a_name_with_spaces_and_parentheses() {
        let mut stat = String::from("42 (a) b) S");
        for n in 4..=52 {
            stat.push_str(&format!(" {n}"));
        }
        assert_eq!(memory_layout(&stat), Some([48, 49, 50, 51]));
        assert_eq!(memory_layout("42 (a) S 1 2"), None);
    }
}
