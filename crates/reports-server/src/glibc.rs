//! glibc's `memcpy` on AMD Zen: the server re-executes itself once to avoid `rep movsb`.
//!
//! glibc before 2.39 copies blocks above a few KiB with `rep movsb` on CPUs that advertise fast
//! string moves. On AMD Zen 3 and 4 that instruction runs an order of magnitude slower when the
//! destination sits less than 64 bytes past the source modulo 4 KiB (glibc bug 30994, fixed in
//! 2.39). That is exactly the copy at the heart of serving: rustls copies every outgoing
//! plaintext into a fresh record buffer five bytes past its start, often from page-aligned body
//! buffers. Measured here (AMD EPYC, glibc 2.36): 16 KiB copies at 2.8 GB/s aliased against
//! 52 GB/s otherwise. In the watch fan-out benchmark (100 watchers) that copy was the largest
//! item of the server's profile (17 %); with vector copies, alternating runs of the same build
//! went from 11.3-11.9 s to 10.6-10.8 s of server CPU and from 192-307 ms to 77-112 ms of p99 lag.
//!
//! glibc reads its tunables only at process start, so the fix is to start again: on x86-64
//! glibc Linux with an AMD CPU and a glibc older than 2.39 (or one whose version cannot be read),
//! unless `GLIBC_TUNABLES` already sets the threshold, the binary `exec`s itself (same PID,
//! arguments and environment) with the `rep movsb` threshold raised out of reach, which makes
//! glibc use its vector loops. A marker variable makes a second re-execution impossible, and
//! `REPORTS_SERVER_KEEP_MEMCPY=1` turns the whole thing off. Tests set
//! `REPORTS_SERVER_MEMCPY_ASSUME_AMD=1` to take the AMD branch on any CPU (harmless elsewhere:
//! vector copies are never slower than `rep movsb` for these sizes), so the re-execution is
//! exercised on Intel test hosts too.
//!
//! The version is read without calling into glibc (this crate has no unsafe code): from the
//! file name of the mapped C library where it carries one (`libc-2.31.so`), else from the
//! banner every glibc embeds (`... release version 2.36.`).

use std::path::Path;

/// Set on the re-executed process so it never re-executes again (glibc may drop tunables, for
/// example in secure-execution mode, and the check below would then loop). Its value is the
/// glibc version found, for the log line.
const REEXECUTED: &str = "REPORTS_SERVER_MEMCPY_REEXECUTED";
/// Operators' opt-out.
const OPT_OUT: &str = "REPORTS_SERVER_KEEP_MEMCPY";
/// Takes the AMD branch on any CPU (for tests on Intel hosts).
const ASSUME_AMD: &str = "REPORTS_SERVER_MEMCPY_ASSUME_AMD";
/// The glibc tunable that decides from which size `memcpy` uses `rep movsb`.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Larger than any single copy the server makes, so `rep movsb` is never chosen.
const THRESHOLD: u64 = 1 << 30;
/// The first glibc whose `memcpy` no longer takes `rep movsb` for these copies.
const FIXED_IN: (u32, u32) = (2, 39);

/// What [`avoid_aliased_rep_movsb`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memcpy {
    /// This process runs as it was started.
    AsStarted,
    /// This process is the re-executed one, with the threshold raised; carries the glibc
    /// version the first execution found (`unknown` when it could not read one).
    Reexecuted {
        /// The glibc version, e.g. `2.36`.
        glibc: String,
    },
}

impl Memcpy {
    /// Logs, once, that the process was re-executed (call it after logging is set up).
    pub fn log(&self) {
        if let Memcpy::Reexecuted { glibc } = self {
            tracing::info!(
                glibc = %glibc,
                "restarted with GLIBC_TUNABLES={TUNABLE}={THRESHOLD}: glibc before 2.39 copies slowly on this AMD CPU \
                 (bug 30994); set {OPT_OUT}=1 to keep the default"
            );
        }
    }
}

/// Re-executes the running binary with `rep movsb` disabled when that helps (see the module
/// notes); returns when it does not apply or the re-execution failed (then with a warning on
/// stderr, as logging is not set up yet). Call it first thing in `main`, before any threads.
pub fn avoid_aliased_rep_movsb() -> Memcpy {
    if !cfg!(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")) {
        return Memcpy::AsStarted;
    }
    if let Some(glibc) = std::env::var_os(REEXECUTED) {
        // Not passed on to children: they find the tunable set and leave it, and must not claim
        // a re-execution of their own. No threads run yet, so changing the environment is safe.
        std::env::remove_var(REEXECUTED);
        return Memcpy::Reexecuted { glibc: glibc.to_string_lossy().into_owned() };
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains(TUNABLE) || std::env::var_os(OPT_OUT).is_some_and(|v| v == "1") || !cpu_is_amd() {
        return Memcpy::AsStarted;
    }
    let version = running_glibc_version();
    if version.is_some_and(|v| v >= FIXED_IN) {
        return Memcpy::AsStarted;
    }
    let tunables = if tunables.is_empty() {
        format!("{TUNABLE}={THRESHOLD}")
    } else {
        format!("{tunables}:{TUNABLE}={THRESHOLD}")
    };
    let version = version.map_or_else(|| "unknown".to_string(), |(major, minor)| format!("{major}.{minor}"));
    reexec(&tunables, &version);
    Memcpy::AsStarted
}

fn cpu_is_amd() -> bool {
    if std::env::var_os(ASSUME_AMD).is_some_and(|v| v == "1") {
        return true;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.lines().any(|l| l.starts_with("vendor_id") && l.ends_with("AuthenticAMD")))
}

/// The version of the C library mapped into this process, if it can be read.
fn running_glibc_version() -> Option<(u32, u32)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = mapped_libc(&maps)?;
    let name = Path::new(path).file_name()?.to_str()?;
    version_in_file_name(name).or_else(|| version_in_banner(&std::fs::read(path).ok()?))
}

/// The path of the C library in a `/proc/self/maps` listing (`libc.so.6` or `libc-2.31.so`).
fn mapped_libc(maps: &str) -> Option<&str> {
    maps.lines().filter_map(|line| line.split_whitespace().nth(5)).find(|path| {
        let name = path.rsplit('/').next().unwrap_or_default();
        name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so"))
    })
}

/// `libc-2.31.so` names its version; `libc.so.6` does not.
fn version_in_file_name(name: &str) -> Option<(u32, u32)> {
    parse_version(name.strip_prefix("libc-")?.strip_suffix(".so")?)
}

/// The version in glibc's banner: `GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.`
fn version_in_banner(library: &[u8]) -> Option<(u32, u32)> {
    const MARK: &[u8] = b"release version ";
    let at = library.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let rest = &library[at..library.len().min(at + 16)];
    let end = rest.iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).unwrap_or(rest.len());
    parse_version(std::str::from_utf8(&rest[..end]).ok()?.trim_end_matches('.'))
}

/// `2.36` (or `2.36.1`) as (major, minor).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(unix)]
fn reexec(tunables: &str, version: &str) {
    use std::os::unix::process::CommandExt as _;

    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXECUTED, version)
        .exec();
    eprintln!("warning: could not re-execute {} with vector memcpy ({error}); continuing", exe.display());
}

#[cfg(not(unix))]
fn reexec(_tunables: &str, _version: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glibc_version_is_read_from_the_file_name_or_the_banner() {
        let maps = "7f00-7f01 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
                    7f02-7f03 r-xp 00028000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        assert_eq!(mapped_libc(maps), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(mapped_libc("7f02-7f03 r-xp 0 08:01 9 /lib/libc-2.31.so\n"), Some("/lib/libc-2.31.so"));
        assert_eq!(mapped_libc("7f02-7f03 r-xp 0 08:01 9 /lib/libcap.so.2\n"), None);
        assert_eq!(version_in_file_name("libc-2.31.so"), Some((2, 31)));
        assert_eq!(version_in_file_name("libc.so.6"), None);
        let banner =
            b"\0\0GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.\nCopyright";
        assert_eq!(version_in_banner(banner), Some((2, 36)));
        assert_eq!(
            version_in_banner(b"GNU C Library (GNU libc) release release version 2.39.9000."),
            Some((2, 39))
        );
        assert_eq!(version_in_banner(b"no banner here"), None);
        assert!(Some((2, 36)) < Some(FIXED_IN) && (2, 40) >= FIXED_IN && (3, 0) >= FIXED_IN);
    }

    #[test]
    fn this_process_reads_its_own_glibc() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(running_glibc_version().is_some_and(|(major, _)| major == 2));
        }
    }
}
