//! `youtube_server`: applies requests from users and YouTubers and notifies subscribers.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ytnotify::{
    accounts::{self, Account, Management, ManagementConfig, Role, SavedAccount},
    broker_url::BrokerUrl,
    cli::{self, BrokerArgs},
    server::{self, ServerConfig, YoutubeServer},
    store::Database,
    topology::QueueType,
};

/// The YouTube server: stores users, subscriptions, YouTubers and videos, and
/// notifies every subscriber of each upload. Prints one line per event.
#[derive(Debug, Parser)]
#[command(name = "youtube_server", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Apply a request only if it comes from the account of the user or YouTuber it names
    /// (see `youtube_server account`); without it, any client can act as anyone
    #[arg(long, env = "YT_SECURE", value_parser = clap::builder::BoolishValueParser::new())]
    secure: bool,
    /// Where the state lives: a SQLite file, or a PostgreSQL database
    /// (postgres://user:password@host:5432/database), which several servers can share
    /// [default: a SQLite file per vhost in the user's data directory]
    #[arg(long, env = "YT_DB", value_name = "PATH|URL", value_parser = parse_database)]
    db: Option<Database>,
    /// The most notifications a new user's inbox keeps while the user is away; past it the
    /// oldest is dropped and the user told at the next login (0: no bound). Existing inboxes
    /// keep the bound they were created with
    #[arg(long, env = "YT_INBOX_BOUND", value_name = "N", default_value_t = ytnotify::store::DEFAULT_INBOX_BOUND)]
    inbox_bound: u32,
    /// Subscribers that make a YouTuber a celebrity: from its first upload with that many, its
    /// uploads are appended once to its stream, which subscribers' sessions read, instead of
    /// copied into every inbox (0: never)
    #[arg(
        long,
        env = "YT_CELEBRITIES_FROM",
        value_name = "N",
        default_value_t = 0
    )]
    celebrities_from: u64,
    /// The type of the vhost's queues: classic (one node holds each), or quorum (replicated
    /// over a RabbitMQ cluster's nodes). Chosen once per vhost; `migrate-queues` changes it
    /// [default: the type the vhost's queues have, classic on a new vhost]
    #[arg(long, env = "YT_QUEUE_TYPE", value_name = "TYPE", global = true)]
    queue_type: Option<QueueType>,
    /// Show a live dashboard (users online, YouTubers, events, rates) instead of event lines
    #[arg(long)]
    tui: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the accounts of secure mode: one RabbitMQ user per user and per YouTuber
    Account {
        #[command(subcommand)]
        action: AccountAction,
        /// RabbitMQ's management API [default: http://<broker host>:15672]
        #[arg(
            long,
            env = "RABBITMQ_MANAGEMENT_URL",
            global = true,
            value_name = "URL"
        )]
        management_url: Option<String>,
    },
    /// Copy the whole state (the database that --db names) into a new, empty database, for
    /// example from the SQLite file to PostgreSQL; stop the servers that use it first
    CopyDb {
        /// The database to copy into: a SQLite file or a postgres:// URL; it must be empty
        #[arg(long, value_name = "PATH|URL", value_parser = parse_database)]
        to: Database,
    },
    /// Move every queue of the vhost (inboxes, request queues, …) to another type, keeping
    /// their messages; stop the servers and the users' live sessions first. Running it again
    /// finishes a move that stopped half-way
    MigrateQueues {
        /// The type to move to
        #[arg(long, value_name = "TYPE")]
        to: QueueType,
    },
}

#[derive(Debug, Subcommand)]
enum AccountAction {
    /// Add an account and print the AMQP URL its client logs in with (it holds the password)
    Add {
        /// user or youtuber
        role: Role,
        /// The user's or YouTuber's name
        name: String,
        /// Write the URL to the client's account file (mode 0600) instead of printing it;
        /// `user <name>` or `youtuber <name>` on this machine then uses it
        #[arg(long)]
        save: bool,
    },
    /// Remove an account and close its connections
    Remove {
        /// user or youtuber
        role: Role,
        /// The user's or YouTuber's name
        name: String,
    },
    /// List the accounts of this vhost
    List,
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

/// `youtube_server copy-db`: one line on success, with what was copied.
async fn copy_db(from: &Database, to: &Database) -> anyhow::Result<()> {
    let source = ytnotify::store::Store::connect(from).await?;
    // Its errors name --to, not the --db they would otherwise point at.
    let target = ytnotify::store::Store::connect(to)
        .await
        .map_err(|err| anyhow::anyhow!("{err} (--to)"))?;
    let copied = source.copy_to(&target).await?;
    println!("copied {} to {}: {copied}", from.shown(), to.shown());
    Ok(())
}

fn parse_database(text: &str) -> Result<Database, std::convert::Infallible> {
    Ok(Database::parse(text))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let broker = cli.broker.endpoint();
    let database = cli
        .db
        .unwrap_or_else(|| Database::Sqlite(server::default_db_path(&broker.url)));
    match cli.command {
        Some(Command::Account {
            action,
            management_url,
        }) => return account(&cli.broker, cli.queue_type, management_url, action).await,
        Some(Command::CopyDb { to }) => return copy_db(&database, &to).await,
        Some(Command::MigrateQueues { to }) => {
            let config = ServerConfig::new(broker.clone(), database);
            let migrated = server::migrate_queues(&config, to).await?;
            println!(
                "moved the queues of {} to {to}: {migrated}",
                broker.redacted()
            );
            return Ok(());
        }
        None => {}
    }
    let shutdown = cli::shutdown_signal();
    let mut config = ServerConfig::new(broker.clone(), database);
    config.inbox_bound = (cli.inbox_bound > 0).then_some(cli.inbox_bound);
    config.celebrities_from = (cli.celebrities_from > 0).then_some(cli.celebrities_from);
    config.secure = cli.secure;
    config.queue_type = cli.queue_type;
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
    ytnotify::dashboard::server::run(server, &broker, &log_file().display().to_string(), shutdown)
        .await
        .context("youtube_server stopped")?;
    #[cfg(not(feature = "tui"))]
    drop((server, shutdown));
    Ok(())
}

/// `youtube_server account …`: stdout carries only what a script takes (the
/// new account's URL, the list); what is done is said on stderr.
async fn account(
    broker: &BrokerArgs,
    queue_type: Option<QueueType>,
    management_url: Option<String>,
    action: AccountAction,
) -> anyhow::Result<()> {
    let endpoint = broker.endpoint();
    // Accounts are the cluster's: any node's management API adds them.
    let url: BrokerUrl = endpoint.first_url()?;
    let management = Management::new(&ManagementConfig {
        url: management_url.unwrap_or_else(|| accounts::default_management_url(&url)),
        broker: url.clone(),
        ca_cert: endpoint.ca_cert.clone(),
    })?;
    let vhost = management.vhost().to_owned();
    match action {
        AccountAction::Add { role, name, save } => {
            let account = Account::new(role, &name)?;
            // The exchanges the account may publish to exist before its
            // client first connects, whether or not a server runs yet; the
            // queues are of the type the servers will use.
            ytnotify::link::Link::connect_server(&endpoint, "youtube_server account", queue_type)
                .await?
                .close()
                .await;
            let password = management.add(&account).await?;
            let client_url = endpoint.with_login(&account.login(), &password)?.url;
            eprintln!("added the account {account} on vhost {vhost}");
            if save {
                let saved = SavedAccount {
                    amqp_url: client_url,
                    ca_cert: endpoint.ca_cert.clone(),
                };
                let path = accounts::save(&account, &saved)?;
                eprintln!(
                    "saved to {}: `{role} {name}` logs in with it on this machine",
                    path.display()
                );
            } else {
                println!("{client_url}");
            }
        }
        AccountAction::Remove { role, name } => {
            let account = Account::new(role, &name)?;
            let closed = management.remove(&account).await?;
            eprintln!(
                "removed the account {account} from vhost {vhost} ({closed} connection{} closed)",
                if closed == 1 { "" } else { "s" }
            );
        }
        AccountAction::List => {
            for account in management.list().await? {
                println!("{:<9}{}", account.role, account.name);
            }
        }
    }
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
