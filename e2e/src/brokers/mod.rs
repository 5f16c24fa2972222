//! Launchers for the real brokers the tests run against: Mosquitto and RabbitMQ from Debian's
//! packages (`.ci/run` installs them). Each listens on free loopback ports with TLS from the
//! run's [`TestCa`](crate::tls::TestCa), is started once per test binary, and is stopped by PID:
//! on drop, and by a watchdog when the test process ends without dropping it.

pub mod mosquitto;
pub mod rabbitmq;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the broker binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `N` distinct free ports: all are held until all are chosen (single `free_port` calls in a
/// row may return the same port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound").port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts `program args…` with output to `log`, under a watchdog shell that kills it when this
/// process is gone (so a test binary that exits never leaves a broker behind). `cleanup` is a
/// shell command run after the program has stopped (may be empty).
pub fn spawn_watched(
    program: &str,
    args: &[&str],
    envs: &[(&str, String)],
    log: &Path,
    cleanup: &str,
) -> std::io::Result<Child> {
    let quoted: Vec<String> = std::iter::once(program).chain(args.iter().copied()).map(shell_quote).collect();
    let script = format!(
        "stop() {{ kill $child 2>/dev/null; i=0; while kill -0 $child 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -9 $child 2>/dev/null; wait $child 2>/dev/null; {cleanup} true; }}; \
         {} & child=$!; trap 'stop; exit 0' TERM INT; \
         while kill -0 {} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; stop",
        quoted.join(" "),
        std::process::id(),
        cleanup = if cleanup.is_empty() { String::new() } else { format!("{cleanup};") }
    );
    let log_file = std::fs::File::create(log)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stops a watched process: TERM to the watchdog, which stops its child.
pub fn stop_watched(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET path` on 127.0.0.1:`port` with one extra header line (credentials), over TLS trusting
/// only `ca_pem`. Blocking, like the launchers that use it before any runtime exists; HTTP/1.0
/// so that the answer is neither chunked nor kept alive. Returns the status and the body.
pub fn https_get(
    port: u16,
    path: &str,
    header: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
    let tls = rustls::ClientConnection::new(crate::consumer::client_config(ca_pem), name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(tls, socket);
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // A peer that closes without close_notify still sent a whole HTTP/1.0 response.
    if let Err(e) = stream.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(e.to_string());
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    Ok((status, body.to_owned()))
}
