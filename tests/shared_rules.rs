//! The shim and the gateway give the same answers: a generated set of ids,
//! sizes and durations goes through each binary's real configuration
//! parsing (and the gateway's check of a stream's opening), and every value
//! one of them accepts, the other accepts too, with the same meaning. The
//! client commands (the shim, `tail`, `status`, `test-send`) name the same
//! thing with the same option and variable.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shim's settings for `--agent-id=id --agent-server-id=server` (the
/// `=` form, so an id may start with `-`).
fn shim_ids(id: &str, server: &str) -> Result<(), String> {
    agent_shim::Config::try_parse_from([
        "agent-shim",
        "--gateway",
        "http://127.0.0.1:1",
        "--token",
        "tok",
        &format!("--agent-id={id}"),
        &format!("--agent-server-id={server}"),
        "--",
        "true",
    ])
    .map_err(|e| e.to_string())?
    .validate_with_hostname(|| Ok("unused".into()))
    .map(drop)
    .map_err(|e| e.to_string())
}

/// The gateway's check of a stream's opening with these ids.
fn gateway_ids(id: &str, server: &str) -> Result<(), String> {
    logdrain_gateway::ingest::validate::check_identity(logdrain::PROTOCOL_VERSION, id, server)
        .map_err(|status| status.message().to_string())
}

/// Ids of every kind: valid ones, and ones that break each part of a rule.
fn generated_ids() -> Vec<String> {
    let alphabet: Vec<char> = "aZ09._-/ :@\\\t\n\u{0}é😀".chars().collect();
    let mut rng = StdRng::seed_from_u64(17);
    let mut ids: Vec<String> = ["", ".", "..", "-a", "_a", "a.", "A", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for len in [127, 128, 129, 254, 255, 256, 300] {
        ids.push("a".repeat(len));
    }
    for _ in 0..3000 {
        let len = rng.random_range(1..12);
        ids.push(
            (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect(),
        );
    }
    ids
}

#[test]
fn every_id_one_binary_accepts_the_other_accepts_too() {
    let ids = generated_ids();
    let mut accepted = 0;
    for id in &ids {
        let shim = shim_ids(id, "replica-1");
        let gateway = gateway_ids(id, "replica-1");
        assert_eq!(
            shim.is_ok(),
            gateway.is_ok(),
            "agent id {id:?}: shim {shim:?}, gateway {gateway:?}"
        );
        let shim = shim_ids("agent-1", id);
        let gateway = gateway_ids("agent-1", id);
        assert_eq!(
            shim.is_ok(),
            gateway.is_ok(),
            "agent-server id {id:?}: shim {shim:?}, gateway {gateway:?}"
        );
        accepted += usize::from(gateway.is_ok());
    }
    // The corpus holds both kinds in number.
    assert!(accepted > 100 && accepted < ids.len() - 100, "{accepted}");
}

/// Sizes and durations written every way an operator might.
fn generated_values(numbers: &[&str], units: &[&str]) -> Vec<String> {
    let mut values = vec![String::new(), " ".into(), "-1".into(), "1,5".into()];
    for number in numbers {
        for unit in units {
            values.push(format!("{number}{unit}"));
            values.push(format!("{number} {unit}"));
            values.push(format!("{number}{}", unit.to_uppercase()));
        }
    }
    values
}

fn shim_size(value: &str) -> Option<u64> {
    agent_shim::Config::try_parse_from([
        "agent-shim",
        &format!("--buffer-bytes={value}"),
        "--",
        "true",
    ])
    .ok()
    .map(|config| config.buffer_bytes as u64)
}

fn gateway_size(value: &str) -> Option<u64> {
    let parsed = logdrain_gateway::config::Config::try_parse_from([
        "logdrain-gateway",
        "serve",
        &format!("--queue-cache-bytes={value}"),
    ])
    .ok()?;
    match parsed.command {
        logdrain_gateway::config::Command::Serve(serve) => Some(serve.queue_cache_bytes),
        _ => None,
    }
}

#[test]
fn every_size_one_binary_accepts_the_other_reads_the_same() {
    let values = generated_values(
        &["0", "1", "64", "1.5", "18446744073709551615", "99999999999"],
        &[
            "", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib", "x",
            "xb", "bytes",
        ],
    );
    let mut accepted = 0;
    for value in &values {
        let (shim, gateway) = (shim_size(value), gateway_size(value));
        assert_eq!(shim, gateway, "size {value:?}");
        accepted += usize::from(shim.is_some());
    }
    assert!(accepted > 50 && accepted < values.len() - 50, "{accepted}");
    assert_eq!(gateway_size("64m"), Some(64 << 20));
}

fn shim_duration(value: &str) -> Option<Duration> {
    agent_shim::Config::try_parse_from([
        "agent-shim",
        &format!("--drain-timeout={value}"),
        "--",
        "true",
    ])
    .ok()
    .map(|config| config.drain_timeout)
}

fn gateway_duration(value: &str) -> Option<Duration> {
    let parsed = logdrain_gateway::config::Config::try_parse_from([
        "logdrain-gateway",
        "serve",
        &format!("--shutdown-grace={value}"),
    ])
    .ok()?;
    match parsed.command {
        logdrain_gateway::config::Command::Serve(serve) => Some(serve.shutdown_grace),
        _ => None,
    }
}

#[test]
fn every_duration_one_binary_accepts_the_other_reads_the_same() {
    let values = generated_values(
        &["0", "1", "10", "1.5", ".5", "5.", "1e3", "-2"],
        &[
            "", "ms", "s", "sec", "m", "min", "h", "d", "us", "ns", "x", "sm", "1m",
        ],
    );
    let mut accepted = 0;
    for value in &values {
        let (shim, gateway) = (shim_duration(value), gateway_duration(value));
        assert_eq!(shim, gateway, "duration {value:?}");
        accepted += usize::from(shim.is_some());
    }
    assert!(accepted > 50 && accepted < values.len() - 50, "{accepted}");
    assert_eq!(gateway_duration("10"), Some(Duration::from_secs(10)));
}

/// Long option name → environment variable, of one command.
fn options(command: &clap::Command) -> BTreeMap<String, Option<String>> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((arg.get_long()?.to_string(), env))
        })
        .collect()
}

#[test]
fn client_commands_name_the_same_thing_with_the_same_option_and_variable() {
    let gateway = logdrain_gateway::config::Config::command();
    let subcommand = |name: &str| {
        let found = gateway.find_subcommand(name);
        options(found.unwrap_or_else(|| panic!("no `{name}` subcommand")))
    };
    let commands = [
        ("agent-shim", options(&agent_shim::Config::command())),
        ("tail", subcommand("tail")),
        ("status", subcommand("status")),
        ("test-send", subcommand("test-send")),
    ];
    // What every client has, and what every gRPC client (shim, tail) has.
    let everywhere = ["agent-id", "token", "token-file", "gateway-ca-file"];
    let grpc = ["gateway", "client-cert", "client-key"];
    let http = ["gateway-http", "admin-token", "timeout"];
    for (name, options) in &commands {
        let mut wanted: Vec<&str> = everywhere.to_vec();
        match *name {
            "agent-shim" | "tail" => wanted.extend(grpc),
            _ => wanted.extend(http),
        }
        for option in wanted {
            assert!(options.contains_key(option), "{name} lacks --{option}");
        }
    }
    // One meaning, one variable: a long option shared by two commands reads
    // the same environment variable in both.
    for (name, options) in &commands {
        for (other, other_options) in &commands {
            for (option, env) in options {
                if let Some(other_env) = other_options.get(option) {
                    assert_eq!(env, other_env, "--{option} of {name} and {other}");
                }
            }
        }
    }
}
