//! CPU time of a process and the machine's steal time, read from `/proc`.

use std::fs;

/// Linux reports /proc CPU times in USER_HZ ticks, fixed at 100 per second by the ABI.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds used so far by process `pid` (all its threads).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Machine-wide CPU ticks: (total, steal), from the `cpu` line of `/proc/stat`.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total = v.iter().take(8).sum();
    Some((total, *v.get(7)?))
}

/// UDP receive-buffer overflows counted by the kernel (all sockets), from `/proc/net/snmp`.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_cpu_time_is_readable_and_grows() {
        let a = process_cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = process_cpu_seconds(std::process::id()).unwrap();
        assert!(b > a, "{a} -> {b} ({x})");
    }

    #[test]
    fn machine_counters_are_readable() {
        let (total, steal) = cpu_ticks().unwrap();
        assert!(total > 0 && steal <= total);
        assert!(udp_rcvbuf_errors().is_some());
    }
}
