//! Hearing of other replicas' commits: LISTEN on a dedicated connection, and re-reading the
//! counter after every (re)connect and every safety poll (`PgSettings::safety_poll`, 5 s by
//! default), so a lost notification delays an event but never loses it.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::{errors::db_error, reads, target::Target};

/// Keeps `committed` up to date with commits made by any replica: LISTEN on a dedicated
/// connection, re-read the counter after every (re)connect and every `safety_poll`.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    target: Target,
    safety_poll: Duration,
    mut stop: watch::Receiver<()>,
) {
    let (channel, committed) = (target.channel.clone(), target.committed.clone());
    let cluster = target.cluster;
    let read_counter = || target.run(move |client| async move { reads::newest_rv(&client, cluster).await });
    loop {
        let connected = config.connect(tls.clone()).await;
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %db_error(e), "notification connection failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Ok(rv) = n.payload().parse::<u64>() {
                            let _ = notes_tx.send(rv);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let listening = client.batch_execute(&format!("LISTEN \"{channel}\"")).await;
        if let Err(e) = listening {
            tracing::warn!(error = %db_error(e), "LISTEN failed; retrying");
            driver.abort();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        }
        // Anything committed before LISTEN took effect is covered by reading the counter now.
        if let Ok(rv) = read_counter().await {
            committed.learned(rv);
        }
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(rv) => committed.learned(rv),
                    None => break, // connection lost: reconnect
                },
                _ = tokio::time::sleep(safety_poll) => {
                    if let Ok(rv) = read_counter().await {
                        committed.learned(rv);
                    }
                }
                _ = stop.changed() => {
                    driver.abort();
                    return;
                }
            }
        }
        driver.abort();
        tracing::warn!("notification connection lost; reconnecting");
    }
}
