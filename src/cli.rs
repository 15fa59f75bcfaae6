//! What the three binaries share: flags, logging, signals and exit codes.
//! The parsed flags become plain config structs; the rest of the library never
//! sees clap types.

use std::{future::Future, process::ExitCode, time::Duration};

use crate::{broker::DEFAULT_AMQP_URL, client::ClientConfig, error::Setting};

/// How to reach RabbitMQ.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// RabbitMQ to connect to; its vhost selects the ytnotify stack
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub amqp_url: String,
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
    /// The plain configuration the library takes.
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            amqp_url: self.broker.amqp_url.clone(),
            timeout: self.timeout,
        }
    }
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
