//! `youtuber`: uploads a video and prints SUCCESS once the server has it.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use ytnotify::{
    accounts::Account,
    cli::{self, ClientArgs},
    client::{Client, youtuber::publish_video},
};

/// Upload a video as a YouTuber: `youtuber <name> <video words...>`.
/// Prints SUCCESS once the server has stored the video and notified every subscriber.
#[derive(Debug, Parser)]
#[command(name = "youtuber", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The YouTuber's name (letters, digits, '_', '-', '.')
    name: Option<String>,
    /// The video's name: the rest of the words, joined with spaces
    video: Vec<String>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing("warn");
    cli::exit("youtuber", run(cli))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let (name, words) = match cli.command {
        Some(Command::Publish { name, video }) => (name, video),
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

#[cfg(test)]
mod tests {
    use super::CommandFactory;

    #[test]
    fn flags_are_well_formed() {
        super::Cli::command().debug_assert();
    }
}
