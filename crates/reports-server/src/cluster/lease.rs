//! Leader election with a `coordination.k8s.io/v1` Lease, so that one replica at a time does the
//! cluster-wide chores (APIService reconciliation).
//!
//! The usual protocol of client-go's leader election: the holder renews `renewTime` every retry
//! period; a candidate takes the Lease over only when it is unheld or its holder has not renewed
//! for `leaseDurationSeconds`. Every write carries the Lease's resourceVersion, so two candidates
//! racing for an expired Lease cannot both win: the loser gets 409 and reads again. A replica that
//! stops releases the Lease (empty holder) so that another takes over at its next attempt instead
//! of waiting out the duration. Leadership is reported through a `watch` channel; a holder that
//! fails to renew within the duration reports that it lost it before anyone else can take over.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{api::PostParams, Api, Client};
use tokio::sync::watch;

/// Timings of the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a holder's renewal counts.
    pub lease_duration: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

/// Runs the election until `shutdown` turns true, then releases the Lease if held. The returned
/// receiver is true while this replica leads; the task ends once the Lease is released.
pub fn elect(
    client: Client,
    settings: LeaseSettings,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (leading, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api = Api::<Lease>::namespaced(client, &settings.namespace);
        let mut renewed_at: Option<tokio::time::Instant> = None;
        loop {
            match try_acquire_or_renew(&api, &settings).await {
                Ok(true) => renewed_at = Some(tokio::time::Instant::now()),
                Ok(false) => renewed_at = None,
                Err(e) => tracing::warn!(lease = %settings.name, error = %e, "lease attempt failed"),
            }
            let leads = renewed_at.is_some_and(|at| at.elapsed() < settings.lease_duration);
            leading.send_if_modified(|current| {
                let changed = *current != leads;
                if changed {
                    tracing::info!(lease = %settings.name, identity = %settings.identity, leading = leads, "leadership changed");
                }
                *current = leads;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(settings.retry_period) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        let held = *leading.borrow();
        leading.send_replace(false);
        if held {
            if let Err(e) = release(&api, &settings).await {
                tracing::warn!(lease = %settings.name, error = %e, "releasing the lease failed; another replica takes over when it expires");
            }
        }
    });
    (receiver, task)
}

/// One attempt: true when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, settings: &LeaseSettings) -> kube::Result<bool> {
    let now = Timestamp::now();
    let duration_seconds = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(settings.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == settings.identity;
    if !ours && !holder.is_empty() {
        let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
        let lasts =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_seconds).max(0) as u64);
        let expired = renewed.is_none_or(|renewed| {
            now.duration_since(renewed).unsigned_abs() >= lasts || renewed > now + lasts
        });
        if !expired {
            return Ok(false);
        }
    }
    if !ours {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(MicroTime(now));
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else wrote it first (took it over, or renewed): not ours this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up so another replica can take over at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&settings.name, &PostParams::default(), &lease).await.map(|_| ())
}
