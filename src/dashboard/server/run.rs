//! The event loop: keys from the terminal, events from the server, snapshots
//! from the refresh task, a tick each second and changes of the broker link,
//! each handed to `update`; the server itself runs as a task beside it.

use std::{future::Future, time::Duration};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{Msg, ServerDashboard, Snapshot, UserRow};
use crate::{
    broker,
    dashboard::{
        terminal::{Input, Screen},
        widgets,
    },
    error::{Error, Result},
    link::{Link, SessionChannel},
    server::YoutubeServer,
    store::{Store, now_ms},
    topology,
};

/// Users whose inbox is probed for a consumer at each refresh.
const MAX_PROBED_USERS: usize = 500;

/// Reads users, YouTubers and inbox consumers, for one refresh.
async fn snapshot(store: &Store, probe: &SessionChannel) -> Result<Snapshot> {
    let mut users = Vec::new();
    for (at, user) in store.users_overview().await?.into_iter().enumerate() {
        let (waiting, consumers) = if at < MAX_PROBED_USERS {
            let (_, channel) = probe.get().await?;
            // An inbox deleted on the broker shows as empty and offline
            // (the failed look closes the channel; the next one reopens it).
            topology::inspect(&channel, &topology::inbox(&user.name))
                .await
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        users.push(UserRow {
            name: user.name,
            subscriptions: user.subscriptions,
            online: consumers > 0,
            waiting,
        });
    }
    Ok(Snapshot {
        users,
        youtubers: store.youtubers_overview().await?,
    })
}

/// Runs the server under its dashboard until `q`, Ctrl-C or `shutdown`, then
/// stops the server cleanly.
pub async fn run(
    server: YoutubeServer,
    broker: &broker::Endpoint,
    log: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let store = server.store().clone();
    let secure = server.config().secure;
    let mut events = server.events();
    let mut link = server.link();
    let mut app = ServerDashboard::new(
        &broker.redacted(),
        &store.database().shown(),
        log,
        widgets::local_offset(),
    )
    .in_secure_mode(secure);
    let probe_link = Link::connect(broker, "youtube_server dashboard").await?;
    let probe = SessionChannel::new(&probe_link, false);
    let (stop, stopped) = oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let (snapshots, mut snapshot_rx) = mpsc::channel::<Result<Snapshot>>(1);
    let refresher = tokio::spawn(async move {
        loop {
            let taken = match snapshot(&store, &probe).await {
                // The broker is away: the next snapshot waits for the
                // reconnection.
                Err(Error::Broker(err)) => {
                    tracing::debug!(%err, "could not take a snapshot; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                taken => taken,
            };
            let failed = taken.is_err();
            if snapshots.send(taken).await.is_err() || failed {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut screen = Screen::enter().map_err(|e| Error::Terminal(e.to_string()))?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut outcome = Ok(());
    let mut server_done = false;
    loop {
        screen
            .terminal
            .draw(|frame| app.render(frame))
            .map_err(|e| Error::Terminal(e.to_string()))?;
        tokio::select! {
            input = screen.next() => match input {
                Input::Key(key) => app.update(Msg::Key(key)),
                Input::Resize => {}
                Input::Closed => break,
            },
            event = events.recv() => match event {
                Ok(event) => {
                    app.update(Msg::Event { at_ms: now_ms(), event });
                    // Take the rest of a burst before drawing.
                    while let Ok(event) = events.try_recv() {
                        app.update(Msg::Event { at_ms: now_ms(), event });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => app.update(Msg::Missed(missed)),
                Err(broadcast::error::RecvError::Closed) => {}
            },
            Some(taken) = snapshot_rx.recv() => match taken {
                Ok(taken) => app.update(Msg::Snapshot(taken)),
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            },
            _ = second.tick() => app.update(Msg::Second),
            Ok(()) = link.changed() => {
                let state = link.borrow_and_update().clone();
                app.update(Msg::Link(state));
            },
            result = &mut serving => {
                server_done = true;
                outcome = result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                break;
            }
            () = &mut shutdown => break,
        }
        if app.should_quit() {
            break;
        }
    }
    drop(screen);
    refresher.abort();
    probe_link.close().await;
    if !server_done {
        let _ = stop.send(());
        outcome = serving
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
    }
    outcome
}
