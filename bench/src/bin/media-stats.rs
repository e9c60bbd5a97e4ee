//! `media-stats`: one JSON line of a media plane's counters (GetStats totals summed over its
//! cores), for scripts: legs, bridges, packets in and forwarded, drops by reason, free ports.
//!
//! ```text
//! media-stats --grpc http://127.0.0.1:9090
//! {"cores":1,"legs":0,"bridges":0,"packets_in":120400,"packets_forwarded":120400,"drops":{"malformed":0,…},"free_ports":5000}
//! ```
//!
//! Exit code 1 when the media plane cannot be reached or answers with an error (the message names
//! the address).

use std::process::ExitCode;

use clap::Parser;
use proto::v1;
use proto::v1::media_plane_client::MediaPlaneClient;

#[derive(Debug, Parser)]
#[command(version, about = "Prints a media plane's counters (summed over cores) as one JSON line")]
struct Args {
    /// The media plane's gRPC API.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    grpc: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("media-stats: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut client = MediaPlaneClient::connect(args.grpc.clone()).await.map_err(|e| e.to_string())?;
        client
            .get_stats(v1::GetStatsRequest { leg_ids: vec![], totals_only: true })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_owned())
    });
    match result {
        Ok(stats) => {
            println!("{}", totals(&stats.cores));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("media-stats: {}: {e}", args.grpc);
            ExitCode::FAILURE
        }
    }
}

/// The cores' counters summed, as JSON.
fn totals(cores: &[v1::CoreStats]) -> serde_json::Value {
    let sum = |f: fn(&v1::CoreStats) -> u64| cores.iter().map(f).sum::<u64>();
    let drop = |f: fn(&v1::Drops) -> u64| cores.iter().filter_map(|c| c.drops.as_ref()).map(f).sum::<u64>();
    serde_json::json!({
        "cores": cores.len(),
        "legs": sum(|c| u64::from(c.legs)),
        "bridges": sum(|c| u64::from(c.bridges)),
        "packets_in": sum(|c| c.packets_in),
        "packets_forwarded": sum(|c| c.packets_forwarded),
        "drops": {
            "malformed": drop(|d| d.malformed),
            "wrong_source": drop(|d| d.wrong_source),
            "no_route": drop(|d| d.no_route),
            "muted": drop(|d| d.muted),
            "send_failed": drop(|d| d.send_failed),
        },
        "command_queue_full": sum(|c| c.command_queue_full),
        "free_ports": sum(|c| u64::from(c.free_ports)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_core() {
        let core = |legs, forwarded, no_route| v1::CoreStats {
            legs,
            packets_forwarded: forwarded,
            drops: Some(v1::Drops { no_route, ..Default::default() }),
            ..Default::default()
        };
        let t = totals(&[core(2, 100, 1), core(4, 50, 2)]);
        assert_eq!((t["cores"].as_u64(), t["legs"].as_u64(), t["packets_forwarded"].as_u64()), (Some(2), Some(6), Some(150)));
        assert_eq!(t["drops"]["no_route"].as_u64(), Some(3));
    }
}
