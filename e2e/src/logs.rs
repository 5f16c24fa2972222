//! Captures every tracing event of a test binary (TRACE for our crates, DEBUG for the HTTP, TLS
//! and MQTT stacks) so that a whole test run can be checked for leaked secrets.
//!
//! With `MQTT_DSP_TEST_LOG=<file>` set (as `make test` does), events are appended to that file
//! and every secret a test registers with [`register_secret`] to `<file>.secrets`; after the run,
//! `make test` fails if any registered secret appears in the log. Without it, events go to an
//! in-memory buffer that [`captured`] returns.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: OnceLock<()> = OnceLock::new();

/// Everything of ours at TRACE; the HTTP, TLS and MQTT stacks at DEBUG. tungstenite (only the
/// test consumer's websocket transport uses it; the operator does not link it) dumps every frame,
/// CONNECT passwords included, at TRACE, so it is held at DEBUG.
const FILTER: &str = "trace,hyper=debug,hyper_util=debug,h2=debug,reqwest=debug,rustls=debug,rumqttc=debug,tungstenite=debug,tokio=info,runtime=info";

#[derive(Clone, Copy)]
struct Sink;

struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::env::var_os("MQTT_DSP_TEST_LOG") {
            Some(path) => {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                f.write_all(buf)?;
            }
            None => BUFFER.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter
    }
}

/// Installs the capturing subscriber once per process (later calls do nothing).
pub fn init() {
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(FILTER))
            .with_writer(Sink)
            .with_ansi(false)
            .try_init();
    });
}

/// Records a secret value a test handled, for the end-of-run leak check.
pub fn register_secret(secret: &str) {
    if secret.len() < 8 {
        return; // too short to search for without false alarms
    }
    if let Some(path) = std::env::var_os("MQTT_DSP_TEST_LOG") {
        let mut path = path;
        path.push(".secrets");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            // One write per line: concurrent tests append to the same file.
            let _ = f.write_all(format!("{secret}\n").as_bytes());
        }
    }
}

/// What was captured in memory (when `MQTT_DSP_TEST_LOG` is not set).
pub fn captured() -> String {
    String::from_utf8_lossy(&BUFFER.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
