//! `liteorm-soak`: a soak test with faults (`cargo xtask soak`).
//!
//! Several writers record through the change log of a file primary; a publisher sends the log
//! to a real `nats-server -js`; a local replica follows the log table and two follower processes
//! follow the stream. Meanwhile, one at a time: a follower is SIGKILLed and restarted,
//! nats-server is SIGKILLed and restarted on its store, the local replica's disk is capped
//! (`PRAGMA max_page_count`) and freed, and a row planted in a follower's replica makes it stop
//! at exactly the conflicting entry (then it is resolved). At the end every replica must equal
//! the primary, the log must be gapless and every unit of work applied once. Prints JSON figures
//! (transactions, faults with recovery times, peak RSS per tenth of the run, lag percentiles)
//! and exits 1 if any check failed.
//!
//! ```text
//! liteorm-soak [--seconds N] [--writers W] [--cache-kib K]
//! liteorm-soak follow NATS_URL DB REPLICA_DB CONSUMER [CACHE_KIB]   (the follower process)
//! ```

use std::process::ExitCode;
use std::time::Duration;

mod figures;
mod follower;
mod server;
mod soak;

const USAGE: &str = "usage: liteorm-soak [--seconds N] [--writers W] [--cache-kib K]\n       \
                     liteorm-soak follow NATS_URL DB REPLICA_DB CONSUMER [CACHE_KIB]";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, url, db, replica_db, consumer, cache @ ..] = args.as_slice()
        && mode == "follow"
        && cache.len() <= 1
    {
        let cache_kib = match cache.first().map(|kib| kib.parse::<u64>()) {
            None => None,
            Some(Ok(kib)) => Some(kib),
            Some(Err(_)) => {
                eprintln!("liteorm-soak: follow: CACHE_KIB must be a number\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        return follower::follow(url, db, replica_db, consumer, cache_kib).await;
    }
    let config = match parse(&args) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("liteorm-soak: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match soak::run(config).await {
        Ok(figures) => {
            let ok = figures["ok"] == true;
            match serde_json::to_string_pretty(&figures) {
                Ok(text) => println!("{text}"),
                Err(err) => eprintln!("liteorm-soak: {err}"),
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("liteorm-soak: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<soak::Config, String> {
    let mut config = soak::Config {
        duration: Duration::from_secs(60),
        writers: 3,
        pace: Duration::from_millis(50),
        cache_kib: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let value = args.next().ok_or(format!("`{name}` needs a number"))?;
            value
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("`{name} {value}`: expected a number > 0"))
        };
        match arg.as_str() {
            "--seconds" => config.duration = Duration::from_secs(number("--seconds")?),
            "--writers" => {
                config.writers =
                    usize::try_from(number("--writers")?).map_err(|e| e.to_string())?;
            }
            "--cache-kib" => config.cache_kib = Some(number("--cache-kib")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(config)
}
