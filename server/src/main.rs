//! `logdrain-gateway`: parses the configuration and runs a subcommand.
//! Everything else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logdrain_gateway::config::{Command, Config};
use logdrain_gateway::{auth, logging, metrics, serve, shutdown, status, tail_client};

fn main() -> ExitCode {
    let config = Config::parse();
    logging::init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logdrain-gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match config.command {
        Command::Serve(serve_config) => runtime.block_on(async {
            let handle = metrics::install().context("cannot install the metrics recorder")?;
            serve::run(serve_config, handle, async {
                match shutdown::signal().await {
                    Ok(name) => tracing::info!(signal = name, "received signal"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
                        std::future::pending::<()>().await
                    }
                }
            })
            .await?;
            Ok(())
        }),
        Command::Token(token_config) => {
            logdrain::ids::check_agent_id(&token_config.agent_id)?;
            let key = auth::SigningKey::load(
                token_config.key.signing_key.as_deref(),
                &token_config.key.data_dir,
            )?;
            println!("{}", key.token(&token_config.agent_id));
            Ok(())
        }
        Command::Recover(recover_config) => {
            let data_dir = &recover_config.key.data_dir;
            let key = auth::SigningKey::load(recover_config.key.signing_key.as_deref(), data_dir)?;
            let dir = recover_config
                .queue
                .unwrap_or_else(|| data_dir.join("queue"));
            let (report, aside) = logdrain_gateway::queue::recover(&dir, key.seal_key())?;
            match aside {
                None => println!(
                    "logdrain-gateway: the queue in {} opens; nothing to recover ({} lines queued)",
                    dir.display(),
                    report.lines
                ),
                Some(aside) => println!(
                    "logdrain-gateway: recovered the queue in {}: {} lines in {} segments are \
                     queued again and are delivered at the next start; sled's files were set \
                     aside in {}",
                    dir.display(),
                    report.lines,
                    report.segments,
                    aside.display()
                ),
            }
            Ok(())
        }
        Command::Handoff(handoff_config) => runtime.block_on(async {
            let mut stdout = std::io::stdout();
            logdrain_gateway::handoff::run(&handoff_config, &mut stdout).await?;
            Ok(())
        }),
        Command::Status(status_config) => {
            let text = runtime.block_on(status::client::status(&status_config))?;
            print!("{text}");
            Ok(())
        }
        Command::TestSend(send_config) => {
            let text = runtime.block_on(status::client::test_send(&send_config))?;
            print!("{text}");
            Ok(())
        }
        Command::Tail(tail_config) => runtime.block_on(async {
            let mut stdout = std::io::stdout();
            tail_client::run(tail_config, &mut stdout, async {
                if shutdown::signal().await.is_err() {
                    std::future::pending::<()>().await
                }
            })
            .await?;
            Ok(())
        }),
    }
}
