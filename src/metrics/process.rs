//! The process's own CPU, memory and file descriptors under the standard `process_*` names
//! that Prometheus client libraries export and dashboards expect, read from `/proc/self` at
//! each scrape (Linux only).
//!
//! The `prometheus` crate's own process collector counts CPU time in whole seconds (an
//! integer counter), so a CPU panel read 0 or jumped in steps of a core; this one reports the
//! kernel's clock ticks (1/100 s) as fractional seconds, as the Go client does.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// What `/proc/self/stat` says about the process, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stat {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    pub threads: i64,
    /// Clock ticks since boot at which the process started.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

impl Stat {
    /// Parses the one line of `/proc/<pid>/stat`. The command name (field 2) is in
    /// parentheses and may itself hold spaces and parentheses: fields are counted after the
    /// last `)`.
    pub fn parse(line: &str, ticks_per_second: f64) -> Option<Self> {
        let rest = &line[line.rfind(')')? + 1..];
        // Field 3 (state) is the first after the name; proc(5) numbers from 1.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        let number = |n: usize| field(n)?.parse::<u64>().ok();
        let (utime, stime) = (number(14)?, number(15)?);
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second,
            threads: field(20)?.parse().ok()?,
            start_ticks: number(22)?,
            virtual_bytes: number(23)?,
            resident_pages: number(24)?,
        })
    }
}

/// The boot time (`btime`, Unix seconds) from the contents of `/proc/stat`.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|t| t.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

/// The soft limit on open file descriptors (`ulimit -n`).
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur as f64)
}

/// Open file descriptors: the entries of `/proc/self/fd` (the one reading it included, as
/// every client library counts).
fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

/// The collector: registered once per registry, it reads `/proc/self` when gathered.
pub(crate) struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    /// Serialises scrapes, so that two at once do not both add the same CPU time.
    cpu_lock: Mutex<()>,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_bytes: Gauge,
    resident_bytes: Gauge,
    start_time: Gauge,
    threads: Gauge,
    ticks_per_second: f64,
    page_size: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).unwrap();
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .unwrap();
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let virtual_bytes = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let resident_bytes = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let descs = [
            cpu.desc(),
            open_fds.desc(),
            max_fds.desc(),
            virtual_bytes.desc(),
            resident_bytes.desc(),
            start_time.desc(),
            threads.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let ticks_per_second = sysconf(libc::_SC_CLK_TCK).unwrap_or(100.0);
        let collector = Self {
            descs,
            cpu,
            cpu_lock: Mutex::new(()),
            open_fds,
            max_fds,
            virtual_bytes,
            resident_bytes,
            start_time,
            threads,
            ticks_per_second,
            page_size: sysconf(libc::_SC_PAGESIZE).unwrap_or(4096.0),
        };
        // The start time never changes: read once.
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|line| Stat::parse(&line, ticks_per_second));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        if let (Some(stat), Some(boot)) = (stat, boot) {
            collector
                .start_time
                .set(boot as f64 + stat.start_ticks as f64 / ticks_per_second);
        }
        collector
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::with_capacity(self.descs.len());
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|line| Stat::parse(&line, self.ticks_per_second));
        if let Some(stat) = stat {
            {
                let _one_at_a_time = self.cpu_lock.lock().unwrap_or_else(|e| e.into_inner());
                let more = stat.cpu_seconds - self.cpu.get();
                if more > 0.0 {
                    self.cpu.inc_by(more);
                }
            }
            families.extend(self.cpu.collect());
            self.virtual_bytes.set(stat.virtual_bytes as f64);
            self.resident_bytes
                .set(stat.resident_pages as f64 * self.page_size);
            self.threads.set(stat.threads as f64);
            families.extend(self.virtual_bytes.collect());
            families.extend(self.resident_bytes.collect());
            families.extend(self.threads.collect());
        }
        if let Some(n) = open_fds() {
            self.open_fds.set(n);
            families.extend(self.open_fds.collect());
        }
        if let Some(n) = max_fds() {
            self.max_fds.set(n);
            families.extend(self.max_fds.collect());
        }
        if self.start_time.get() > 0.0 {
            families.extend(self.start_time.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_fractional_seconds_of_clock_ticks() {
        // A command name with a space and a parenthesis; utime 1234 and stime 56 ticks.
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 1234 56 0 0 20 0 \
                    9 0 98765 1073741824 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 \
                    17 1 0 0 0 0 0";
        let stat = Stat::parse(line, 100.0).expect("a stat line");
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 12.9,
                threads: 9,
                start_ticks: 98765,
                virtual_bytes: 1_073_741_824,
                resident_pages: 2500,
            }
        );
        assert_eq!(Stat::parse("4242 (truncated) S 1 2", 100.0), None);
    }

    #[test]
    fn reads_the_boot_time() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1765000000\nprocesses 9\n";
        assert_eq!(boot_time(text), Some(1_765_000_000));
        assert_eq!(boot_time("cpu 1\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn exports_the_standard_names_with_the_process_s_own_values() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessCollector::new()))
            .unwrap();
        let value = |families: &[MetricFamily], name: &str| {
            let family = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let metric = &family.get_metric()[0];
            match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                _ => metric.get_gauge().get_value(),
            }
        };
        // Burn CPU until the kernel has counted a tick of it (10 ms).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        let families = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let families = registry.gather();
            if value(&families, "process_cpu_seconds_total") > 0.0 {
                break families;
            }
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
        };
        let value = |name: &str| value(&families, name);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started}"
        );
        assert_eq!(
            families
                .iter()
                .find(|f| f.name() == "process_cpu_seconds_total")
                .unwrap()
                .get_field_type(),
            prometheus::proto::MetricType::COUNTER
        );
    }
}
