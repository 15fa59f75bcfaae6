//! The broker's own ceiling for the same shape: the same inbox queues and
//! bindings, the same message size and upload pattern, but plain lapin —
//! publish with confirms straight to the notifications exchange, consume with
//! acks — and, for churn, the same binding changes made directly.

use std::{sync::Arc, time::Duration};

use lapin::{Connection, options::BasicPublishOptions};
use tokio::sync::Semaphore;

use super::{
    SimError,
    receiver::{Tally, title},
    scenario::{Change, Scenario, user_name, youtuber_name},
};
use ytnotify::{
    broker,
    protocol::{self, Notification},
    topology,
};

/// Publishes `uploads` (YouTuber of each) as our run does — the same window
/// and rate — and returns once the broker has confirmed every one.
pub async fn publish(
    connection: &Connection,
    scenario: &Scenario,
    uploads: &[u32],
    tally: &Arc<Tally>,
    bar: &indicatif::ProgressBar,
) -> Result<(), SimError> {
    let channel = broker::confirming_channel(connection).await?;
    let window = Arc::new(Semaphore::new(scenario.upload_window as usize));
    let started = tokio::time::Instant::now();
    let mut confirms = Vec::with_capacity(uploads.len());
    for (seq, &youtuber) in uploads.iter().enumerate() {
        if scenario.upload_rate > 0.0 {
            let due = Duration::from_secs_f64(seq as f64 / scenario.upload_rate);
            tokio::time::sleep_until(started + due).await;
        }
        let permit = Arc::clone(&window)
            .acquire_owned()
            .await
            .map_err(|_| SimError::Harness("the upload window closed".to_owned()))?;
        let youtuber = youtuber_name(youtuber);
        // The same body as the server's notification, so the same size.
        let body = protocol::encode(&Notification::VideoUploaded {
            id: uuid::Uuid::new_v4(),
            youtuber: youtuber.clone(),
            video: title(seq as u32),
            uploaded_at_ms: ytnotify::store::now_ms(),
        });
        tally.mark_sent(seq as u32);
        let confirm = channel
            .basic_publish(
                topology::NOTIFICATIONS.into(),
                youtuber.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                broker::persistent_json(),
            )
            .await?;
        let bar = bar.clone();
        confirms.push(tokio::spawn(async move {
            let confirmed = confirm.await;
            drop(permit);
            bar.inc(1);
            confirmed
        }));
    }
    for confirm in confirms {
        let confirmation = confirm
            .await
            .map_err(|e| SimError::Harness(format!("a publishing task failed: {e}")))??;
        if confirmation.is_nack() {
            return Err(SimError::Harness(
                "the broker refused a ceiling publish".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Makes the same binding changes directly, on as many channels as our run
/// had changes in flight (at most 32), each user's changes on one channel and
/// in order. Returns changes per second.
pub async fn binding_changes(
    connection: &Connection,
    changes: &[Change],
    window: u32,
    bar: &indicatif::ProgressBar,
) -> Result<f64, SimError> {
    let lanes = window.clamp(1, 32) as usize;
    let mut by_lane = vec![Vec::new(); lanes];
    for change in changes {
        by_lane[change.user as usize % lanes].push(*change);
    }
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for lane in by_lane {
        let channel = connection.create_channel().await?;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            for change in lane {
                let (user, youtuber) = (user_name(change.user), youtuber_name(change.youtuber));
                if change.subscribe {
                    topology::bind_subscription(&channel, &user, &youtuber).await?;
                } else {
                    topology::unbind_subscription(&channel, &user, &youtuber).await?;
                }
                bar.inc(1);
            }
            let _ = channel.close(200, "done".into()).await;
            Ok::<(), lapin::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| SimError::Harness(format!("a binding task failed: {e}")))??;
    }
    Ok(changes.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
