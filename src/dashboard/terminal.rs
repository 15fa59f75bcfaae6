//! Owning the terminal: raw mode and the alternate screen, restored on exit,
//! on panic, and on SIGTERM; and the stream of key and resize events.

use std::path::PathBuf;

use crossterm::event::{Event, EventStream, KeyEvent, KeyEventKind};
use futures_lite::StreamExt;
use ratatui::DefaultTerminal;

/// The terminal in dashboard mode; restored when dropped.
pub(crate) struct Screen {
    pub terminal: DefaultTerminal,
    events: EventStream,
}

/// What the terminal said.
pub(crate) enum Input {
    Key(KeyEvent),
    Resize,
    Closed,
}

impl Screen {
    /// Enters raw mode and the alternate screen. `ratatui::init` also installs
    /// a panic hook that restores the terminal before the panic message prints.
    pub fn enter() -> std::io::Result<Screen> {
        let terminal = ratatui::try_init()?;
        Ok(Screen {
            terminal,
            events: EventStream::new(),
        })
    }

    /// The next key press or resize; key releases and repeats of other kinds
    /// are skipped.
    pub async fn next(&mut self) -> Input {
        loop {
            match self.events.next().await {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    return Input::Key(key);
                }
                Some(Ok(Event::Resize(..))) => return Input::Resize,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Input::Closed,
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Where a dashboard program writes its log, since the screen is taken:
/// `<data dir>/ytnotify/<program>.log`.
pub fn log_file(program: &str) -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ytnotify")
        .join(format!("{program}.log"))
}
