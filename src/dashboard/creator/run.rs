//! The event loop: keys from the terminal, windows of the feed from the feed
//! task, the server's counts and changes of the broker link, each handed to
//! `update`; the commands it returns run as tasks.

use std::{future::Future, sync::Arc};

use tokio::sync::mpsc;

use super::{Command, CreatorDashboard, Msg};
use crate::{
    client::{
        Client,
        creator::{CreatorFeed, WINDOW, Window},
        youtuber,
    },
    dashboard::{
        shown::AckWhenDrawn,
        terminal::{Input, Screen},
        widgets,
    },
    error::{Error, Result},
    link::LinkState,
    store::now_ms,
};

/// Runs the dashboard for `youtuber` until `q`, Ctrl-C or `shutdown`. Each
/// window of the feed leaves the inbox once a frame showing it is drawn.
pub async fn run(client: Client, name: &str, shutdown: impl Future<Output = ()>) -> Result<()> {
    // Open the feed before taking the screen, so that an error (no creator
    // inbox yet, an account that may not read it) prints as a plain line.
    let mut feed = CreatorFeed::open(client.link(), name).await?;
    let client = Arc::new(client);
    let mut app = CreatorDashboard::new(name, widgets::local_offset());

    let (windows, mut delivered) = mpsc::channel::<std::result::Result<Window, String>>(16);
    let reader = tokio::spawn(async move {
        loop {
            match feed.next_window(WINDOW).await {
                Ok(window) => {
                    if windows.send(Ok(window)).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let _ = windows.send(Err(err.to_string())).await;
                    break;
                }
            }
        }
        feed.close().await;
    });

    let (replies, mut answers) = mpsc::unbounded_channel::<Msg>();
    for command in app.refresh() {
        execute(&client, name, command, &replies);
    }

    let mut screen = Screen::enter().map_err(|e| Error::Terminal(e.to_string()))?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut link = client.state();
    let mut shown = AckWhenDrawn::new();
    loop {
        screen
            .terminal
            .draw(|frame| app.render(frame))
            .map_err(|e| Error::Terminal(e.to_string()))?;
        // Drawn, so shown: now they may leave the inbox.
        shown.drawn();
        let mut commands = Vec::new();
        tokio::select! {
            input = screen.next() => match input {
                Input::Key(key) => commands = app.update(Msg::Key(key)),
                Input::Resize => {}
                Input::Closed => break,
            },
            Some(window) = delivered.recv() => match window {
                Ok(window) => {
                    commands = app.update(Msg::Window { at_ms: now_ms(), lines: window.lines.clone() });
                    shown.received(window);
                }
                Err(why) => {
                    app.update(Msg::Link(LinkState::Reconnecting(why)));
                }
            },
            Some(msg) = answers.recv() => commands = app.update(msg),
            Ok(()) = link.changed() => {
                let state = link.borrow_and_update().clone();
                app.update(Msg::Link(state));
            },
            () = &mut shutdown => break,
        }
        for command in commands {
            execute(&client, name, command, &replies);
        }
        if app.should_quit() {
            break;
        }
    }
    drop(screen);
    shown.close().await;
    reader.abort();
    Ok(())
}

fn execute(
    client: &Arc<Client>,
    name: &str,
    command: Command,
    replies: &mpsc::UnboundedSender<Msg>,
) {
    match command {
        Command::Quit => {}
        Command::RefreshStats => {
            let (client, name, replies) = (Arc::clone(client), name.to_owned(), replies.clone());
            tokio::spawn(async move {
                let msg = match youtuber::stats(&client, &name).await {
                    Ok(channel) => Msg::Stats(channel),
                    Err(err) => Msg::StatsFailed(format!("no counts: {err}")),
                };
                let _ = replies.send(msg);
            });
        }
    }
}
