//! glibc's `memcpy` on AMD Zen: the server re-executes itself once to avoid `rep movsb`.
//!
//! glibc before 2.39 copies blocks above a few KiB with `rep movsb` on CPUs that advertise fast
//! string moves. On AMD Zen 3 and 4 that instruction runs an order of magnitude slower when the
//! destination sits less than 64 bytes past the source modulo 4 KiB (glibc bug 30994). That is
//! exactly the copy at the heart of serving: rustls copies every outgoing plaintext into a fresh
//! record buffer five bytes past its start, often from page-aligned body buffers. Measured here
//! (AMD EPYC, glibc 2.36): 16 KiB copies at 2.8 GB/s aliased against 52 GB/s otherwise. In the
//! watch fan-out benchmark (100 watchers) that copy was the largest item of the server's profile
//! (17 %); with vector copies, alternating runs of the same build went from 11.3-11.9 s to
//! 10.6-10.8 s of server CPU and from 192-307 ms to 77-112 ms of p99 lag.
//!
//! glibc reads its tunables only at process start, so the fix is to start again: on x86-64
//! glibc Linux with an AMD CPU, unless `GLIBC_TUNABLES` already sets the threshold, the binary
//! `exec`s itself (same PID, arguments and environment) with the `rep movsb` threshold raised
//! out of reach, which makes glibc use its vector loops. A marker variable makes a second
//! re-execution impossible, and `REPORTS_SERVER_KEEP_MEMCPY=1` turns the whole thing off.

/// Set on the re-executed process so it never re-executes again (glibc may drop tunables, for
/// example in secure-execution mode, and the check below would then loop).
const REEXECUTED: &str = "REPORTS_SERVER_MEMCPY_REEXECUTED";
/// Operators' opt-out.
const OPT_OUT: &str = "REPORTS_SERVER_KEEP_MEMCPY";
/// The glibc tunable that decides from which size `memcpy` uses `rep movsb`.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Larger than any single copy the server makes, so `rep movsb` is never chosen.
const THRESHOLD: u64 = 1 << 30;

/// Re-executes the running binary with `rep movsb` disabled when that helps (see the module
/// notes); returns when it does not apply or the re-execution failed (then with a warning on
/// stderr, as logging is not set up yet). Call it first thing in `main`, before any threads.
pub fn avoid_aliased_rep_movsb() {
    if !cfg!(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")) {
        return;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains(TUNABLE)
        || std::env::var_os(REEXECUTED).is_some()
        || std::env::var_os(OPT_OUT).is_some_and(|v| v == "1")
        || !cpu_is_amd()
    {
        return;
    }
    let tunables = if tunables.is_empty() {
        format!("{TUNABLE}={THRESHOLD}")
    } else {
        format!("{tunables}:{TUNABLE}={THRESHOLD}")
    };
    reexec(&tunables);
}

fn cpu_is_amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.lines().any(|l| l.starts_with("vendor_id") && l.ends_with("AuthenticAMD")))
}

#[cfg(unix)]
fn reexec(tunables: &str) {
    use std::os::unix::process::CommandExt as _;

    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXECUTED, "1")
        .exec();
    eprintln!("warning: could not re-execute {} with vector memcpy ({error}); continuing", exe.display());
}

#[cfg(not(unix))]
fn reexec(_tunables: &str) {}
