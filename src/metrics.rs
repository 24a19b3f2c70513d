//! `--metrics ADDR`: the stats as Prometheus / OpenMetrics text on `http://ADDR/metrics`,
//! for Grafana. Every metric's name, type, unit and help is in `FAMILIES` below, in one
//! place; the values are the same counters as `stats.json` (read at each scrape), plus
//! latency histograms of reads by the tier that served them.
//!
//! It serves dataset-level counters only (no paths, no file names) and listens on
//! loopback unless told otherwise (an ADDR of a bare port means 127.0.0.1).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use crate::stats::{Snapshot, Stats};

/// One metric family: name (without the `bicache_` prefix), type, unit, help, and how to
/// read its values (label value, number) from a snapshot.
struct Family {
    name: &'static str,
    kind: MetricType,
    unit: Option<Unit>,
    help: &'static str,
    label: Option<&'static str>,
    values: fn(&Snapshot) -> Vec<(&'static str, u64)>,
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

/// The metrics, in one place. Names are stable: dashboards depend on them.
const FAMILIES: &[Family] = &[
    Family {
        name: "cache_hits",
        kind: COUNTER,
        unit: None,
        help: "Chunk look-ups served by a tier",
        label: Some("tier"),
        values: |s| vec![("ram", s.ram.hits), ("disk", s.disk.tier.hits)],
    },
    Family {
        name: "cache_misses",
        kind: COUNTER,
        unit: None,
        help: "Chunk look-ups a tier could not serve",
        label: Some("tier"),
        values: |s| vec![("ram", s.ram.misses), ("disk", s.disk.tier.misses)],
    },
    Family {
        name: "cache_held",
        kind: GAUGE,
        unit: Some(Unit::Bytes),
        help: "Bytes a tier holds now",
        label: Some("tier"),
        values: |s| vec![("ram", s.ram.bytes), ("disk", s.disk.tier.bytes)],
    },
    Family {
        name: "cache_capacity",
        kind: GAUGE,
        unit: Some(Unit::Bytes),
        help: "A tier's budget",
        label: Some("tier"),
        values: |s| vec![("ram", s.ram.capacity), ("disk", s.disk.tier.capacity)],
    },
    Family {
        name: "cache_pinned",
        kind: GAUGE,
        unit: Some(Unit::Bytes),
        help: "Bytes of the SSD tier kept for good (this shard's files)",
        label: None,
        values: |s| vec![("", s.disk.pinned_bytes)],
    },
    Family {
        name: "disk_corrupt_chunks",
        kind: COUNTER,
        unit: None,
        help: "Cache files found damaged, dropped and fetched again",
        label: None,
        values: |s| vec![("", s.disk.corrupt)],
    },
    Family {
        name: "disk_evictions",
        kind: COUNTER,
        unit: None,
        help: "Cache files evicted to make room",
        label: None,
        values: |s| vec![("", s.disk.evictions)],
    },
    Family {
        name: "disk_write_errors",
        kind: COUNTER,
        unit: None,
        help: "Failed writes to the SSD tier (a full disk, an I/O error)",
        label: None,
        values: |s| vec![("", s.disk.write_errors)],
    },
    Family {
        name: "disk_queued_writes",
        kind: GAUGE,
        unit: None,
        help: "Pieces waiting to be written to the SSD tier",
        label: None,
        values: |s| vec![("", s.disk.queued)],
    },
    Family {
        name: "source_reads",
        kind: COUNTER,
        unit: None,
        help: "Read requests sent to the source",
        label: None,
        values: |s| vec![("", s.source.reads)],
    },
    Family {
        name: "source_read",
        kind: COUNTER,
        unit: Some(Unit::Bytes),
        help: "Bytes read from the source",
        label: None,
        values: |s| vec![("", s.source.bytes)],
    },
    Family {
        name: "source_metadata_operations",
        kind: COUNTER,
        unit: None,
        help: "Metadata operations (stat, readdir, open, readlink) sent to the source, by \
               whether a request waited for them",
        label: Some("when"),
        values: |s| {
            let bg = s.source.meta_ops_background;
            vec![
                ("foreground", s.source.meta_ops.saturating_sub(bg)),
                ("background", bg),
            ]
        },
    },
    Family {
        name: "source_errors",
        kind: COUNTER,
        unit: None,
        help: "Source reads that failed (passed on to the reader as their errno)",
        label: None,
        values: |s| vec![("", s.source.errors)],
    },
    Family {
        name: "readahead_chunks",
        kind: COUNTER,
        unit: None,
        help: "Chunks queued to be fetched ahead of readers (streams, random passes)",
        label: None,
        values: |s| vec![("", s.readahead.chunks)],
    },
    Family {
        name: "prefetch_files",
        kind: GAUGE,
        unit: None,
        help: "Files of this shard prefetched so far, and in all",
        label: Some("of"),
        values: |s| {
            vec![
                ("done", s.prefetch.files_done),
                ("total", s.prefetch.files_total),
            ]
        },
    },
    Family {
        name: "prefetch",
        kind: GAUGE,
        unit: Some(Unit::Bytes),
        help: "Bytes of this shard prefetched so far, and in all",
        label: Some("of"),
        values: |s| {
            vec![
                ("done", s.prefetch.bytes),
                ("total", s.prefetch.bytes_total),
            ]
        },
    },
    Family {
        name: "prefetch_errors",
        kind: COUNTER,
        unit: None,
        help: "Files the prefetch could not fetch",
        label: None,
        values: |s| vec![("", s.prefetch.errors)],
    },
    Family {
        name: "passthrough_opens",
        kind: COUNTER,
        unit: None,
        help: "Opens the kernel reads straight from a cache file (FUSE passthrough)",
        label: None,
        values: |s| vec![("", s.passthrough.opens)],
    },
    Family {
        name: "passthrough_checks",
        kind: COUNTER,
        unit: None,
        help: "Cache files hashed whole at a passthrough open (new to this check, or changed)",
        label: None,
        values: |s| vec![("", s.passthrough.checks)],
    },
    Family {
        name: "out_of_shard_opens",
        kind: COUNTER,
        unit: None,
        help: "Opens of files of other shards",
        label: None,
        values: |s| vec![("", s.shard.out_of_shard_opens)],
    },
    Family {
        name: "metadata",
        kind: GAUGE,
        unit: Some(Unit::Bytes),
        help: "Memory of the namespace (inodes, names, listings)",
        label: None,
        values: |s| vec![("", s.meta.bytes)],
    },
    Family {
        name: "metadata_entries",
        kind: GAUGE,
        unit: None,
        help: "Entries (inodes) the namespace holds",
        label: None,
        values: |s| vec![("", s.meta.entries)],
    },
];

/// Histograms of read latency by tier: observed by the cache, encoded here.
const LATENCY: &str = "read_duration";

struct StatsCollector {
    stats: Arc<Stats>,
    chunk_size: u64,
}

// `Collector` asks for Debug; the counters themselves are not worth printing.
impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.stats.snapshot(std::process::id(), self.chunk_size);
        for f in FAMILIES {
            let mut m = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
            for (label, v) in (f.values)(&snap) {
                let encode = |e: &mut prometheus_client::encoding::MetricEncoder| match f.kind {
                    MetricType::Counter => e
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &v, None,
                        ),
                    _ => e.encode_gauge(&v),
                };
                match f.label {
                    Some(key) => encode(&mut m.encode_family(&[(key, label)])?)?,
                    None => encode(&mut m)?,
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            LATENCY,
            "Time to serve a read request of the daemon, by the tier that served it \
             (passthrough reads never reach the daemon)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (tier, h) in self.stats.read_latency.by_tier() {
            h.encode(m.encode_family(&[("tier", tier)])?)?;
        }
        Ok(())
    }
}

/// Where to listen: `HOST:PORT`, or a bare port (`9464`, `:9464`) meaning loopback.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    let bare = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = bare.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    t.to_socket_addrs()
        .map_err(|e| format!("--metrics: invalid address '{text}': {e}"))?
        .next()
        .ok_or_else(|| format!("--metrics: invalid address '{text}': no such host"))
}

/// Starts serving `/metrics` on `addr`; the server thread lives as long as the process.
pub fn serve(addr: SocketAddr, stats: Arc<Stats>, chunk_size: u64) -> Result<(), String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
    if !addr.ip().is_loopback() {
        warn!(
            "metrics served on {addr}, beyond this node's loopback: anyone who reaches it sees \
             the mount's dataset-level counters (no paths or names)"
        );
    }
    let mut registry = Registry::with_prefix("bicache");
    registry.register_collector(Box::new(StatsCollector { stats, chunk_size }));
    std::thread::Builder::new()
        .name("bicache-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (status, body, ctype) =
                    if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                        let mut text = String::new();
                        match prometheus_client::encoding::text::encode(&mut text, &registry) {
                            Ok(()) => (
                                200,
                                text,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                            Err(_) => (500, "encoding failed\n".to_string(), "text/plain"),
                        }
                    } else {
                        (404, "bicache serves /metrics\n".to_string(), "text/plain")
                    };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    .expect("a valid header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        })
        .map_err(|e| format!("--metrics: cannot start the server thread: {e}"))?;
    info!(%addr, "metrics served on /metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr(":9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:1").unwrap(),
            "0.0.0.0:1".parse().unwrap()
        );
        assert!(
            parse_addr("nonsense:port")
                .unwrap_err()
                .contains("nonsense:port")
        );
    }

    #[test]
    fn every_family_encodes_with_help_and_type() {
        let stats = Arc::new(Stats::default());
        stats
            .ram_hits
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        stats.read_latency.observe(
            crate::stats::Served::Ram,
            std::time::Duration::from_micros(30),
        );
        let mut registry = Registry::with_prefix("bicache");
        registry.register_collector(Box::new(StatsCollector {
            stats,
            chunk_size: 1,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE bicache_cache_hits counter"), "{text}");
        assert!(
            text.contains("bicache_cache_hits_total{tier=\"ram\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("bicache_cache_held_bytes{tier=\"disk\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("bicache_read_duration_seconds_count{tier=\"ram\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
        for f in FAMILIES {
            assert!(
                text.contains(&format!("# HELP bicache_{}", f.name)),
                "{}",
                f.name
            );
        }
    }
}
