//! `gateway`: serves a user's notifications to browsers (a page, Server-Sent
//! Events, a WebSocket). Run as many as you like, each on its own port.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use ytnotify::cli::{self, BrokerArgs, parse_duration};
use ytnotify_gateway::{DEFAULT_LISTEN, GatewayConfig};

/// Serve ytnotify in the browser: a page at /, each user's notifications as
/// Server-Sent Events (/api/users/<name>/events) and over a WebSocket
/// (/api/users/<name>/ws), and /healthz.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    /// The address to serve on (a port of its own for each gateway)
    #[arg(long, env = "YT_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDRESS")]
    listen: SocketAddr,
    #[command(flatten)]
    broker: BrokerArgs,
    /// How long to wait for youtube_server's answer (10s, 500ms, 1m)
    #[arg(long, env = "YT_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
    /// Each user logs in with the password of the user's account (youtube_server account add), and the gateway acts for the user through that account only
    #[arg(long, env = "YT_SECURE")]
    secure: bool,
    /// How often an idle event stream carries a keep-alive (for proxies that close silent connections)
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    keep_alive: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing("info");
    cli::exit("gateway", run(cli))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = ytnotify::client::ClientConfig {
        broker: cli.broker.endpoint(),
        timeout: cli.timeout,
    };
    let config = GatewayConfig {
        keep_alive: cli.keep_alive,
        secure: cli.secure,
        ..GatewayConfig::new(cli.listen, client)
    };
    ytnotify_gateway::run(config, cli::shutdown_signal()).await?;
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
