//! `agent-shim [OPTIONS] -- COMMAND [ARGS...]`: parses the configuration and
//! runs the library. Exits with the agent's code (128+N for signal N), 127
//! or 126 when it cannot be started, 2 for a configuration error, 77 when
//! the agent exited 0 but every gateway refused the shim for good; with
//! `--check`, 0 when the configuration is usable and 1 when it is not.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let config = agent_shim::Config::parse();
    let code = match agent_shim::run(config) {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            eprintln!("agent-shim: {:#}", anyhow::Error::new(err));
            code
        }
    };
    std::process::exit(code);
}
