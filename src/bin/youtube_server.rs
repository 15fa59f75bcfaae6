//! `youtube_server`: applies requests from users and YouTubers and notifies subscribers.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use ytnotify::{
    cli::{self, BrokerArgs},
    server::{self, ServerConfig, YoutubeServer},
};

/// The YouTube server: stores users, subscriptions, YouTubers and videos, and
/// notifies every subscriber of each upload. Prints one line per event.
#[derive(Debug, Parser)]
#[command(name = "youtube_server", version)]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    /// SQLite database file [default: one per vhost in the user's data directory]
    #[arg(long, env = "YT_DB", value_name = "PATH")]
    db: Option<PathBuf>,
    /// The most notifications a new user's inbox keeps while the user is away; past it the
    /// oldest is dropped and the user told at the next login (0: no bound). Existing inboxes
    /// keep the bound they were created with
    #[arg(long, env = "YT_INBOX_BOUND", value_name = "N", default_value_t = ytnotify::store::DEFAULT_INBOX_BOUND)]
    inbox_bound: u32,
    /// Show a live dashboard (users online, YouTubers, events, rates) instead of event lines
    #[arg(long)]
    tui: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.tui && cfg!(feature = "tui") {
        cli::init_tracing_to_file("info", &log_file());
    } else {
        cli::init_tracing("info");
    }
    cli::exit("youtube_server", run(cli))
}

fn log_file() -> PathBuf {
    #[cfg(feature = "tui")]
    return ytnotify::dashboard::log_file("youtube_server");
    #[cfg(not(feature = "tui"))]
    return PathBuf::new();
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = cli::shutdown_signal();
    let db_path = cli
        .db
        .unwrap_or_else(|| server::default_db_path(&cli.broker.amqp_url));
    let mut config = ServerConfig::new(cli.broker.amqp_url.clone(), db_path);
    config.inbox_bound = (cli.inbox_bound > 0).then_some(cli.inbox_bound);
    if !cli.tui {
        return server::run(config, shutdown)
            .await
            .context("youtube_server stopped");
    }
    if !cfg!(feature = "tui") {
        anyhow::bail!("this youtube_server was built without the dashboard (cargo feature `tui`)");
    }
    config.print_events = false;
    let server = YoutubeServer::start(config).await?;
    #[cfg(feature = "tui")]
    ytnotify::dashboard::server::run(
        server,
        &cli.broker.amqp_url,
        &log_file().display().to_string(),
        shutdown,
    )
    .await
    .context("youtube_server stopped")?;
    #[cfg(not(feature = "tui"))]
    drop((server, shutdown));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn flags_are_well_formed() {
        super::Cli::command().debug_assert();
    }
}
