//! `youtuber`: uploads a video and prints SUCCESS once the server has it;
//! shows what users make of the YouTuber's videos.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use ytnotify::{
    accounts::Account,
    cli::{self, ClientArgs},
    client::{
        Client,
        creator::{self, CreatorFeed},
        youtuber::{publish_video, stats},
    },
    names,
};

/// Upload a video as a YouTuber: `youtuber <name> <video words...>`.
/// Prints SUCCESS once the server has stored the video and notified every subscriber.
/// `youtuber watch <name>` shows likes, comments and subscribers as they come.
#[derive(Debug, Parser)]
#[command(name = "youtuber", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The YouTuber's name (letters, digits, '_', '-', '.')
    name: Option<String>,
    /// The video's name: the rest of the words, joined with spaces
    video: Vec<String>,
    /// Show the feed in the full-screen dashboard (the default for `watch` in a terminal)
    #[arg(long, global = true, conflicts_with = "plain")]
    tui: bool,
    /// Print the feed as plain lines, even in a terminal
    #[arg(long, global = true)]
    plain: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload a video (the same as `youtuber <name> <video words...>`)
    Publish {
        /// The YouTuber's name
        name: String,
        /// The video's name: the rest of the words, joined with spaces
        #[arg(required = true)]
        video: Vec<String>,
    },
    /// Show what users do about the YouTuber as it happens (what came while away first):
    /// likes, dislikes, comments, subscribers come and gone, until Ctrl-C
    Watch {
        /// The YouTuber's name
        name: String,
    },
    /// Print the YouTuber's subscribers, and each video's likes, dislikes and comments
    Stats {
        /// The YouTuber's name
        name: String,
        /// Print JSON (full ids, times in milliseconds since the Unix epoch)
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if dashboard_wanted(&cli) && cfg!(feature = "tui") {
        cli::init_tracing_to_file("warn", &log_file());
    } else {
        cli::init_tracing("warn");
    }
    cli::exit("youtuber", run(cli))
}

/// The dashboard is for `watch` when stdout is a terminal, unless `--plain`,
/// and for `--tui`.
fn dashboard_wanted(cli: &Cli) -> bool {
    let watching = matches!(cli.command, Some(Command::Watch { .. }));
    watching && (cli.tui || (!cli.plain && std::io::stdout().is_terminal()))
}

fn log_file() -> std::path::PathBuf {
    #[cfg(feature = "tui")]
    return ytnotify::dashboard::log_file("youtuber");
    #[cfg(not(feature = "tui"))]
    return std::path::PathBuf::new();
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let dashboard = dashboard_wanted(&cli);
    let (name, words) = match cli.command {
        Some(Command::Publish { name, video }) => (name, video),
        Some(Command::Watch { name }) => return watch(&cli.client, &name, dashboard).await,
        Some(Command::Stats { name, json }) => {
            names::check_youtuber(&name)?;
            let config = cli.client.config_for(&Account::youtuber(&name))?;
            let client = Client::connect(&config, &format!("youtuber {name}")).await?;
            let channel = stats(&client, &name).await?;
            client.close().await?;
            if !json {
                println!(
                    "{name}: {} subscriber{}, {} video{}",
                    channel.subscribers,
                    plural(channel.subscribers),
                    channel.total,
                    plural(channel.total)
                );
            }
            return cli::print_videos(&channel, json);
        }
        None => match cli.name {
            Some(name) if !cli.video.is_empty() => (name, cli.video),
            _ => Cli::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "give a name and a video: youtuber <name> <video words...>",
                )
                .exit(),
        },
    };
    let video = words.join(" ");
    ytnotify::names::check_youtuber(&name)?;
    ytnotify::names::check_video(&video)?;
    let config = cli.client.config_for(&Account::youtuber(&name))?;
    let client = Client::connect(&config, &format!("youtuber {name}")).await?;
    publish_video(&client, &name, &video).await?;
    println!("SUCCESS");
    client.close().await?;
    Ok(())
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Shows the creator's feed until Ctrl-C (or `q` in the dashboard): a
/// window at a time, each window's events leaving the inbox once shown.
async fn watch(client: &ClientArgs, name: &str, dashboard: bool) -> anyhow::Result<()> {
    names::check_youtuber(name)?;
    if dashboard && !cfg!(feature = "tui") {
        anyhow::bail!(
            "this youtuber was built without the dashboard (cargo feature `tui`); use --plain"
        );
    }
    let shutdown = cli::shutdown_signal();
    let config = client.config_for(&Account::youtuber(name))?;
    let client = Client::connect(&config, &format!("youtuber {name}")).await?;
    if dashboard {
        #[cfg(feature = "tui")]
        ytnotify::dashboard::creator::run(client, name, shutdown).await?;
        return Ok(());
    }
    let mut feed = CreatorFeed::open(client.link(), name).await?;
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for likes, comments and subscribers of {name} (Ctrl-C to quit)");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let window = tokio::select! {
            () = &mut shutdown => break,
            window = feed.next_window(creator::WINDOW) => window?,
        };
        {
            let mut stdout = std::io::stdout().lock();
            for line in &window.lines {
                writeln!(stdout, "{line}")?;
            }
            stdout.flush()?;
        }
        window.ack().await;
    }
    feed.close().await;
    client.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CommandFactory;

    #[test]
    fn flags_are_well_formed() {
        super::Cli::command().debug_assert();
    }
}
