//! Fires a no-op job every second with tokio-cron-scheduler and prints, per fire, how many
//! microseconds after its whole second it ran. Runs for the seconds given as the first argument.

use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let sched = JobScheduler::new().await?;
    sched
        .add(Job::new_async("* * * * * *", |_id, _sched| {
            Box::pin(async move {
                let now = chrono::Utc::now();
                let late_us = now.timestamp_subsec_micros();
                println!("{late_us}");
            })
        })?)
        .await?;
    sched.start().await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(())
}
