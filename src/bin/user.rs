//! `user`: logs in, changes a subscription and shows notifications.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum, error::ErrorKind};
use ytnotify::{
    accounts::Account,
    cli::{self, ClientArgs},
    client::{
        Client, notifications,
        user::{self, SubscriptionChange},
    },
    names,
    protocol::Reaction,
};

/// A user of the YouTube simulation.
///
/// `user <name>` logs in; `user <name> s <youtuber>` subscribes and
/// `user <name> u <youtuber>` unsubscribes. Each prints SUCCESS once the server
/// has applied the request, then every notification that arrived while the
/// user was away, then live ones, until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "user", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The user's name (letters, digits, '_', '-', '.')
    name: Option<String>,
    /// `s` to subscribe to a YouTuber, `u` to unsubscribe
    #[arg(requires = "youtuber")]
    action: Option<Action>,
    /// The YouTuber to subscribe to or unsubscribe from
    youtuber: Option<String>,
    /// Show notifications in the full-screen dashboard (the default for `watch` in a terminal)
    #[arg(long, global = true, conflicts_with = "plain")]
    tui: bool,
    /// Print notifications as plain lines, even in a terminal
    #[arg(long, global = true)]
    plain: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    /// Subscribe
    #[value(name = "s", alias = "subscribe")]
    Subscribe,
    /// Unsubscribe
    #[value(name = "u", alias = "unsubscribe")]
    Unsubscribe,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in (adding the user the first time), print SUCCESS and exit
    Login { name: String },
    /// Subscribe to a YouTuber, print SUCCESS and exit
    Subscribe { name: String, youtuber: String },
    /// Unsubscribe from a YouTuber, print SUCCESS and exit
    Unsubscribe { name: String, youtuber: String },
    /// Print the YouTubers the user follows, one a line
    Subscriptions { name: String },
    /// Show notifications as they arrive (waiting ones first), until Ctrl-C: a dashboard
    /// in a terminal, plain lines otherwise
    Watch { name: String },
    /// List a YouTuber's videos, newest first: id, upload time, counts, title
    Videos {
        youtuber: String,
        /// Print JSON (full ids, times in milliseconds since the Unix epoch)
        #[arg(long)]
        json: bool,
        /// Ask as this user, with the account saved for the name (secure mode)
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// Like a video (taking back a dislike), print SUCCESS and exit
    Like {
        name: String,
        /// The video's id, or its first characters (`user videos <youtuber>` lists them)
        video: String,
    },
    /// Dislike a video (taking back a like), print SUCCESS and exit
    Dislike {
        name: String,
        /// The video's id, or its first characters
        video: String,
    },
    /// Take back a like or a dislike, print SUCCESS and exit
    Unlike {
        name: String,
        /// The video's id, or its first characters
        video: String,
    },
    /// Comment on a video (1-500 characters, one line), print SUCCESS and exit
    Comment {
        name: String,
        /// The video's id, or its first characters
        video: String,
        /// The comment: the rest of the words, joined with spaces
        #[arg(required = true)]
        text: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if dashboard_wanted(&cli) && cfg!(feature = "tui") {
        cli::init_tracing_to_file("warn", &log_file());
    } else {
        cli::init_tracing("warn");
    }
    cli::exit("user", run(cli))
}

/// The dashboard is for `--tui`, and for `watch` when stdout is a terminal,
/// unless `--plain`. The exercise's forms print plain lines by default.
fn dashboard_wanted(cli: &Cli) -> bool {
    let watching = matches!(cli.command, Some(Command::Watch { .. }));
    cli.tui || (watching && !cli.plain && std::io::stdout().is_terminal())
}

fn log_file() -> std::path::PathBuf {
    #[cfg(feature = "tui")]
    return ytnotify::dashboard::log_file("user");
    #[cfg(not(feature = "tui"))]
    return std::path::PathBuf::new();
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    // Each user logs in with the account saved for it, unless a URL is given.
    let client_args = cli.client.clone();
    let config = |name: &str| client_args.config_for(&Account::user(name));
    let shutdown = cli::shutdown_signal();
    let dashboard = dashboard_wanted(&cli);
    if dashboard && !cfg!(feature = "tui") {
        anyhow::bail!(
            "this user was built without the dashboard (cargo feature `tui`); use --plain"
        );
    }
    match cli.command {
        None => {
            let Some(name) = cli.name else {
                Cli::command()
                    .error(
                        ErrorKind::MissingRequiredArgument,
                        "give a user name: user <name> [s|u <youtuber>]",
                    )
                    .exit();
            };
            let change =
                cli.action
                    .zip(cli.youtuber)
                    .map(|(action, youtuber)| SubscriptionChange {
                        youtuber,
                        subscribe: matches!(action, Action::Subscribe),
                    });
            check(&name, change.as_ref())?;
            let client = Client::connect(&config(&name)?, &format!("user {name}")).await?;
            for notice in user::login_and_update(&client, &name, change.as_ref()).await? {
                eprintln!("note: {notice}");
            }
            println!("SUCCESS");
            watch(client, &name, dashboard, shutdown).await
        }
        Some(Command::Login { name }) => {
            check(&name, None)?;
            let client = Client::connect(&config(&name)?, &format!("user {name}")).await?;
            if let Some(notice) = user::login(&client, &name).await? {
                eprintln!("note: {notice}");
            }
            println!("SUCCESS");
            Ok(client.close().await?)
        }
        Some(Command::Subscribe { name, youtuber }) => {
            change(&config(&name)?, name, youtuber, true).await
        }
        Some(Command::Unsubscribe { name, youtuber }) => {
            change(&config(&name)?, name, youtuber, false).await
        }
        Some(Command::Subscriptions { name }) => {
            check(&name, None)?;
            let client = Client::connect(&config(&name)?, &format!("user {name}")).await?;
            let mut stdout = std::io::stdout().lock();
            for youtuber in user::subscriptions(&client, &name).await? {
                writeln!(stdout, "{youtuber}")?;
            }
            Ok(client.close().await?)
        }
        Some(Command::Watch { name }) => {
            check(&name, None)?;
            let client = Client::connect(&config(&name)?, &format!("user {name}")).await?;
            watch(client, &name, dashboard, shutdown).await
        }
        Some(Command::Videos {
            youtuber,
            json,
            as_user,
        }) => {
            names::check_youtuber(&youtuber)?;
            let config = match &as_user {
                Some(name) => {
                    names::check_user(name)?;
                    config(name)?
                }
                None => client_args.config(),
            };
            let client = Client::connect(&config, "user videos").await?;
            let channel = user::videos(&client, &youtuber).await?;
            client.close().await?;
            cli::print_videos(&channel, json)
        }
        Some(Command::Like { name, video }) => {
            react(&config(&name)?, &name, &video, Some(Reaction::Like)).await
        }
        Some(Command::Dislike { name, video }) => {
            react(&config(&name)?, &name, &video, Some(Reaction::Dislike)).await
        }
        Some(Command::Unlike { name, video }) => react(&config(&name)?, &name, &video, None).await,
        Some(Command::Comment { name, video, text }) => {
            let text = text.join(" ");
            names::check_user(&name)?;
            names::check_video_ref(&video)?;
            names::check_comment(&text)?;
            let client = Client::connect(&config(&name)?, &format!("user {name}")).await?;
            user::comment(&client, &name, &video, &text).await?;
            println!("SUCCESS");
            Ok(client.close().await?)
        }
    }
}

/// Likes, dislikes or takes back either, and prints SUCCESS.
async fn react(
    config: &ytnotify::client::ClientConfig,
    name: &str,
    video: &str,
    reaction: Option<Reaction>,
) -> anyhow::Result<()> {
    names::check_user(name)?;
    names::check_video_ref(video)?;
    let client = Client::connect(config, &format!("user {name}")).await?;
    if let Some(notice) = user::react(&client, name, video, reaction).await? {
        eprintln!("note: {notice}");
    }
    println!("SUCCESS");
    Ok(client.close().await?)
}

fn check(name: &str, change: Option<&SubscriptionChange>) -> anyhow::Result<()> {
    names::check_user(name)?;
    if let Some(change) = change {
        names::check_youtuber(&change.youtuber)?;
    }
    Ok(())
}

async fn change(
    config: &ytnotify::client::ClientConfig,
    name: String,
    youtuber: String,
    subscribe: bool,
) -> anyhow::Result<()> {
    let change = SubscriptionChange {
        youtuber,
        subscribe,
    };
    check(&name, Some(&change))?;
    let client = Client::connect(config, &format!("user {name}")).await?;
    let notices = user::login_and_update(&client, &name, Some(&change)).await?;
    for notice in notices {
        eprintln!("note: {notice}");
    }
    println!("SUCCESS");
    Ok(client.close().await?)
}

/// Shows notifications until Ctrl-C (or `q` in the dashboard); waiting ones come first.
async fn watch(
    client: Client,
    name: &str,
    dashboard: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if dashboard {
        #[cfg(feature = "tui")]
        ytnotify::dashboard::user::run(client, name, None, shutdown).await?;
        return Ok(());
    }
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for notifications for {name} (Ctrl-C to quit)");
    }
    let show = |notification: &ytnotify::protocol::Notification| {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{notification}")?;
        stdout.flush()
    };
    notifications::receive_notifications(&client, name, show, shutdown).await?;
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
