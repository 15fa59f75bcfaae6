//! What the three binaries share: flags, logging, signals and exit codes.
//! The parsed flags become plain config structs; the rest of the library never
//! sees clap types.

use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    accounts::{self, Account},
    broker::{DEFAULT_AMQP_URL, Endpoint},
    client::ClientConfig,
    error::{Result, Setting},
};

/// How to reach RabbitMQ.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// RabbitMQ to connect to; its vhost selects the ytnotify stack, its user is the account
    /// [default: amqp://guest:guest@127.0.0.1:5672/%2f; user and youtuber first look for the
    /// account saved for the name]
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub amqp_url: Option<String>,
    /// PEM file of the private CA that signed the broker's certificate (for amqps://)
    #[arg(long, env = "AMQP_CA_CERT", global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
}

impl BrokerArgs {
    /// The broker to use: the one given, else the default.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self
                .amqp_url
                .clone()
                .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned()),
            ca_cert: self.ca_cert.clone(),
        }
    }

    /// The broker to use when acting as `account`: the one given, else the
    /// one saved for the account (`youtube_server account add --save`),
    /// else the default. A CA given on the command line wins over a saved one.
    pub fn endpoint_for(&self, account: &Account) -> Result<Endpoint> {
        if self.amqp_url.is_some() {
            return Ok(self.endpoint());
        }
        let Some(saved) = accounts::load_saved(account)? else {
            return Ok(self.endpoint());
        };
        tracing::debug!("logging in with the saved account {account}");
        Ok(Endpoint {
            url: saved.amqp_url,
            ca_cert: self.ca_cert.clone().or(saved.ca_cert),
        })
    }
}

/// How a client reaches the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// How long to wait for youtube_server's answer (10s, 500ms, 1m)
    #[arg(
        long,
        env = "YT_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration,
        global = true,
        value_name = "DURATION"
    )]
    pub timeout: Duration,
}

impl ClientArgs {
    /// The plain configuration the library takes, with the broker's URL as
    /// given (or the default): for what any account may ask.
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            broker: self.broker.endpoint(),
            timeout: self.timeout,
        }
    }

    /// The plain configuration the library takes, to act as `account`.
    pub fn config_for(&self, account: &Account) -> Result<ClientConfig> {
        Ok(ClientConfig {
            broker: self.broker.endpoint_for(account)?,
            timeout: self.timeout,
        })
    }
}

/// Prints a YouTuber's videos (`user videos`, `youtuber stats`) as a table,
/// or as JSON; a listing cut to the newest says so on stderr.
pub fn print_videos(channel: &crate::client::user::Channel, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, channel)?;
        writeln!(stdout)?;
        return Ok(());
    }
    write!(stdout, "{}", channel.table())?;
    if channel.total > channel.videos.len() as u64 {
        eprintln!(
            "note: the newest {} of {}'s {} videos",
            channel.videos.len(),
            channel.youtuber,
            channel.total
        );
    }
    Ok(())
}

/// Parses `10s`, `500ms`, `1m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::from_secs_f64(seconds))
        }
        Ok(_) => Err("it must be a positive number of seconds".to_owned()),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| e.to_string()),
    };
    let parsed = parsed.and_then(|duration| {
        if duration.is_zero() {
            Err("it must be more than zero".to_owned())
        } else {
            Ok(duration)
        }
    });
    parsed.map_err(|reason| format!("{reason} (write it as 10s, 500ms or 1m)"))
}

/// Sends diagnostics to stderr, filtered by `RUST_LOG` (default: `default`).
/// Stdout stays for the program's own output. lapin's own log is off unless
/// `RUST_LOG` asks for it: our errors already say what failed, in one line.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Sends diagnostics to a file instead, for when a dashboard owns the screen:
/// no log line may land on it. Falls back to no logging if the file cannot
/// be opened.
pub fn init_tracing_to_file(default: &str, path: &std::path::Path) {
    let file = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        });
    if let Ok(file) = file {
        tracing_subscriber::fmt()
            .with_env_filter(filter(default))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_target(false)
            .init();
    }
}

fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},lapin=off")))
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM; a second one ends the
/// process at once, for when a clean shutdown takes too long.
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so call it early: a signal that comes in between is not lost
/// and does not kill the process uncleanly. Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut signals = Signals::install();
    async move {
        signals.recv().await;
        tokio::spawn(async move {
            signals.recv().await;
            eprintln!("second interrupt: exiting now");
            std::process::exit(130);
        });
    }
}

#[cfg(unix)]
struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.interrupt) => {}
            () = next(&mut self.terminate) => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Signals {
        Signals
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Turns a program's result into its exit code, printing the error on one line
/// prefixed by the program's name: 0 on success, 3 when the server did not
/// answer (the request waits in its queue), 1 for any other error.
/// An error that asks to change a setting ends with how to change it.
pub fn exit(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let ours = err.downcast_ref::<crate::Error>();
            let how = ours
                .and_then(crate::Error::setting)
                .map(|setting| format!(" ({})", how_to_set(program, setting)))
                .unwrap_or_default();
            eprintln!("{program}: {err:#}{how}");
            ExitCode::from(ours.map_or(1, crate::Error::exit_code))
        }
    }
}

/// The flag and variable of a setting, as the programs take it.
fn how_to_set(program: &str, setting: Setting) -> &'static str {
    match setting {
        Setting::BrokerUrl => "--amqp-url or AMQP_URL",
        Setting::CaCert => "--ca-cert or AMQP_CA_CERT",
        Setting::ManagementUrl => "--management-url or RABBITMQ_MANAGEMENT_URL",
        Setting::Database => "--db or YT_DB",
        Setting::PlainOutput if program == "youtube_server" => "run without --tui",
        Setting::PlainOutput => "--plain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        let err = parse_duration("soon").unwrap_err();
        assert!(err.ends_with("(write it as 10s, 500ms or 1m)"), "{err}");
        assert!(parse_duration("-1").is_err());
        assert!(
            parse_duration("0")
                .unwrap_err()
                .starts_with("it must be more than zero")
        );
    }
}
