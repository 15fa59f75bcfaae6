//! The event loop: keys from the terminal, notifications from the session task,
//! answers from the server and changes of the broker link, each handed to
//! `update`; the commands it returns run as tasks.

use std::{future::Future, sync::Arc, time::Instant};

use tokio::sync::mpsc;

use super::{Command, Interaction, Msg, Outcome, UserDashboard};
use crate::{
    client::{
        Client,
        notifications::{Notifications, Received},
        user,
    },
    dashboard::{
        shown::AckWhenDrawn,
        terminal::{Input, Screen},
        widgets,
    },
    error::{Error, Result},
    link::LinkState,
};

/// From the broker task to the event loop.
enum Delivered {
    Received(Received),
    Ended(String),
}

/// Runs the dashboard for `user` until `q`, Ctrl-C or `shutdown`. Each
/// notification is acknowledged once a frame showing it has been drawn.
pub async fn run(
    client: Client,
    user: &str,
    greeting: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Open the session before taking the screen, so that an error (an
    // account that may not read the inbox) prints as a plain line.
    let mut notifications =
        Notifications::open(client.link(), &client.requests(), user, None).await?;
    let client = Arc::new(client);
    let mut app = UserDashboard::new(user, widgets::local_offset());
    if let Some(greeting) = greeting {
        app.say(greeting);
    }

    let (delivered, mut deliveries) = mpsc::channel::<Delivered>(4096);
    let reader = tokio::spawn(async move {
        loop {
            // The session rides out every loss by itself; it fails only once
            // the connection is closed.
            match notifications.next().await {
                Ok(received) => {
                    if delivered.send(Delivered::Received(received)).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let _ = delivered.send(Delivered::Ended(err.to_string())).await;
                    break;
                }
            }
        }
        notifications.close().await;
    });

    let (replies, mut answers) = mpsc::unbounded_channel::<Msg>();
    execute(&client, user, Command::RefreshSubscriptions, &replies);

    let mut screen = Screen::enter().map_err(|e| Error::Terminal(e.to_string()))?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut link = client.state();
    let mut shown = AckWhenDrawn::new();
    loop {
        // One frame per event (a burst counts as one): nothing is drawn while idle.
        {
            screen
                .terminal
                .draw(|frame| app.render(frame))
                .map_err(|e| Error::Terminal(e.to_string()))?;
            // Drawn, so shown: now they may leave the inbox.
            shown.drawn();
        }
        let mut commands = Vec::new();
        tokio::select! {
            input = screen.next() => match input {
                Input::Key(key) => commands = app.update(Msg::Key(key)),
                Input::Resize => {}
                Input::Closed => break,
            },
            Some(first) = deliveries.recv() => {
                // Take the whole burst before drawing once.
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(delivery) = next {
                    match delivery {
                        Delivered::Received(received) => {
                            let away = received.away;
                            app.update(Msg::Notification { notification: received.notification.clone(), away });
                            shown.received(received);
                        }
                        Delivered::Ended(why) => {
                            app.update(Msg::Link(LinkState::Reconnecting(why)));
                        }
                    }
                    taken += 1;
                    next = if taken < 5000 { deliveries.try_recv().ok() } else { None };
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
            execute(&client, user, command, &replies);
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
    user: &str,
    command: Command,
    replies: &mpsc::UnboundedSender<Msg>,
) {
    let (client, user, replies) = (Arc::clone(client), user.to_owned(), replies.clone());
    match command {
        Command::Quit => {}
        Command::RefreshSubscriptions => {
            tokio::spawn(async move {
                let msg = match user::subscriptions(&client, &user).await {
                    Ok(list) => Msg::Subscriptions(list),
                    Err(err) => Msg::SubscriptionsFailed(Outcome::from_result(Err(err))),
                };
                let _ = replies.send(msg);
            });
        }
        Command::Interact {
            video_id,
            video,
            interaction,
        } => {
            tokio::spawn(async move {
                let started = Instant::now();
                let id = video_id.to_string();
                let result = match &interaction {
                    Interaction::React(reaction) => {
                        user::react(&client, &user, &id, *reaction).await
                    }
                    Interaction::Comment(text) => user::comment(&client, &user, &id, text)
                        .await
                        .map(|()| None),
                };
                let _ = replies.send(Msg::Interacted {
                    video_id,
                    video,
                    interaction,
                    outcome: Outcome::from_result(result),
                    elapsed: started.elapsed(),
                });
            });
        }
        Command::Change(change) => {
            tokio::spawn(async move {
                let started = Instant::now();
                let result = user::update_subscription(&client, &user, &change).await;
                let _ = replies.send(Msg::Changed {
                    change,
                    outcome: Outcome::from_result(result),
                    elapsed: started.elapsed(),
                });
            });
        }
    }
}
