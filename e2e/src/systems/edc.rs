//! A real Eclipse EDC control plane: `controlplane-base-bom` + `iam-mock` from Maven Central
//! (`e2e/systems/edc/install.sh` puts the class path under `target/systems/edc-<version>/lib`),
//! started as `java -cp 'lib/*' org.eclipse.edc.boot.system.runtime.BaseRuntime` with the
//! properties of `e2e/systems/edc/controlplane.properties`.
//!
//! `ext/` holds one extension of ours, `e2e/systems/edc/participant-policy`: the function for the
//! `BusinessPartnerDID` / `BusinessPartnerNumber` constraints the operator writes, which a
//! Factory-X or Tractus-X connector brings and stock EDC lacks (without it EDC drops those
//! constraints, and every consumer sees every asset in its catalog). An instance loads it when
//! [`EdcOptions::participant_policies`] says so.
//!
//! Each instance has a name (its participant id), its own free ports, its own random API key and
//! keystore, in-memory stores and vault. Management, protocol (DSP), control and default web
//! contexts are all HTTPS with a certificate from [`TestCa::shared`]; outgoing calls (one
//! connector asking another for its catalog over DSP) trust that CA through a trust store, so TLS
//! is verified both ways. iam-mock makes identity trivial: every connector trusts every other.
//!
//! Version: [`DEFAULT_VERSION`] unless `MQTT_DSP_EDC_VERSION` names another installed one.
//! 0.15.1 because it is the newest release on Maven Central here (0.16–0.18 answer 404), it is
//! what factoryx-edc 0.3.0 (the reference connector, domain.md §2) is built on, it serves the
//! Management API v3 the operator speaks (0.17 and 0.18 still register the /v3 controllers next
//! to /v4, read in their sources), and its data-plane signaling is the legacy one that 0.15–0.17
//! share.
//!
//! Instances of one test binary are started once ([`shared`]) and live until the binary ends
//! (the watchdog of [`spawn_watched`] stops them); tests isolate themselves by unique ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{SystemError, log_tail, systems_dir};
use crate::brokers::{free_ports, spawn_watched, stop_watched, wait_for_port};
use crate::tls::TestCa;

/// The release the contract tests run against (see the module documentation for why).
pub const DEFAULT_VERSION: &str = "0.15.1";
/// EDC's runtime entry point.
pub const MAIN_CLASS: &str = "org.eclipse.edc.boot.system.runtime.BaseRuntime";
/// DSP 2025-1, the protocol id a catalog request names.
pub const DSP_PROTOCOL: &str = "dataspace-protocol-http:2025-1";
/// The path EDC serves DSP 2025-1 under, below the protocol context.
pub const DSP_VERSION_PATH: &str = "/2025-1";
/// Heap cap: the in-memory stores of a test run stay small.
const HEAP: &str = "-Xmx256m";
const TEMPLATE: &str = include_str!("../../systems/edc/controlplane.properties");
/// Starting takes 5–10 s on two idle cores; a concurrent build can triple that.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start one control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdcOptions {
    /// Names the instance (log file, runtime id); also its participant id unless set.
    pub name: String,
    /// `edc.participant.id`.
    pub participant_id: String,
    /// The EDC release, installed under `target/systems/edc-<version>`.
    pub version: String,
    /// `edc.policy.validation.enabled`. Off by default: stock EDC binds no left operand to a
    /// scope but `inForceDate`, so it would refuse the constraints Factory-X's connectors bind
    /// in their own extensions (e.g. `BusinessPartnerDID`); on shows that refusal.
    pub policy_validation: bool,
    /// Put `ext/` on the class path: this connector evaluates the `BusinessPartnerDID` /
    /// `BusinessPartnerNumber` constraints of its offers against the requesting participant, as a
    /// Factory-X connector does (e2e/systems/edc/participant-policy). Off by default: most suites
    /// ask a connector for its own catalog, which such a policy hides from it.
    pub participant_policies: bool,
}

impl EdcOptions {
    /// An instance called `name` (participant id `name`), [`configured_version`], policy
    /// validation off.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            participant_id: name.to_owned(),
            version: configured_version(),
            policy_validation: false,
            participant_policies: false,
        }
    }

    /// With `edc.policy.validation.enabled` as given.
    pub fn policy_validation(mut self, enabled: bool) -> Self {
        self.policy_validation = enabled;
        self
    }
}

/// `MQTT_DSP_EDC_VERSION`, else [`DEFAULT_VERSION`].
pub fn configured_version() -> String {
    std::env::var("MQTT_DSP_EDC_VERSION").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_VERSION.to_owned())
}

/// `target/systems/edc-<version>`, if the install script completed its `lib/` and built its
/// `ext/`.
pub fn installed(version: &str) -> Result<PathBuf, SystemError> {
    let home = systems_dir().join(format!("edc-{version}"));
    for complete in [home.join("lib/.complete"), home.join("ext/participant-policy.jar")] {
        if !complete.is_file() {
            return Err(SystemError::NotInstalled { what: "EDC", path: complete.display().to_string() });
        }
    }
    Ok(home)
}

/// A running EDC control plane.
pub struct Edc {
    /// Its name.
    pub name: String,
    /// The EDC release.
    pub version: String,
    /// `edc.participant.id` (also what iam-mock presents as the token).
    pub participant_id: String,
    /// Management API base without version: `https://127.0.0.1:<port>/management`.
    pub management_url: String,
    /// Protocol context: `https://127.0.0.1:<port>/protocol` (DSP 2025-1 below [`Self::dsp_url`]).
    pub protocol_url: String,
    /// Control API: `https://127.0.0.1:<port>/control` (data plane registration, callbacks).
    pub control_url: String,
    /// The `X-Api-Key` the Management API wants (random; registered as a secret).
    pub api_key: String,
    /// The JVM's output.
    pub log: PathBuf,
    /// From spawning the JVM until the Management API answered.
    pub start_time: Duration,
    dir: PathBuf,
    child: Mutex<Child>,
}

impl std::fmt::Debug for Edc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edc")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("management_url", &self.management_url)
            .field("protocol_url", &self.protocol_url)
            .field("control_url", &self.control_url)
            .finish_non_exhaustive()
    }
}

impl Edc {
    /// Starts one control plane and waits until its Management API answers. Blocking.
    pub fn start(ca: &TestCa, options: &EdcOptions) -> Result<Edc, SystemError> {
        // A free port can be taken between choosing and binding it: retry with fresh ports.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(ca, options) {
                Ok(edc) => return Ok(edc),
                Err(e @ SystemError::Start { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// Starts several control planes side by side (in parallel: each JVM spends most of its
    /// start on one core).
    pub fn start_all(ca: &TestCa, options: &[EdcOptions]) -> Result<Vec<Edc>, SystemError> {
        start_each(ca, options).into_iter().collect()
    }

    fn start_once(ca: &TestCa, options: &EdcOptions) -> Result<Edc, SystemError> {
        let home = installed(&options.version)?;
        let io = |what: &'static str| move |source| SystemError::Io { what, source };
        let dir = tempfile::Builder::new()
            .prefix(&format!("dev-stack-edc-{}-", options.name))
            .tempdir()
            .map_err(io("EDC run directory"))?
            // Removed by the watchdog once the JVM is gone (a static instance is never dropped).
            .keep();
        let [default_port, management_port, protocol_port, control_port] = free_ports::<4>();
        let secret = || format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let api_key = format!("edc-{}-{}", options.name, secret());
        let store_password = secret();
        crate::logs::register_secret(&api_key);
        crate::logs::register_secret(&store_password);

        let cert = ca.server_cert(&[]);
        std::fs::write(dir.join("server.crt"), &cert.cert_pem).map_err(io("EDC certificate"))?;
        std::fs::write(dir.join("server.key"), &cert.key_pem).map_err(io("EDC key"))?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).map_err(io("EDC CA"))?;
        let keystore = dir.join("keystore.p12");
        let truststore = dir.join("truststore.p12");
        make_stores(&dir, &keystore, &truststore, &store_password)?;

        let management_url = format!("https://127.0.0.1:{management_port}/management");
        let protocol_url = format!("https://127.0.0.1:{protocol_port}/protocol");
        let control_url = format!("https://127.0.0.1:{control_port}/control");
        let values = BTreeMap::from([
            ("name", options.name.clone()),
            ("participant_id", options.participant_id.clone()),
            ("default_port", default_port.to_string()),
            ("management_port", management_port.to_string()),
            ("protocol_port", protocol_port.to_string()),
            ("control_port", control_port.to_string()),
            ("keystore_path", keystore.display().to_string()),
            ("keystore_password", store_password.clone()),
            ("api_key", api_key.clone()),
            ("protocol_url", protocol_url.clone()),
            ("control_url", control_url.clone()),
            ("policy_validation", options.policy_validation.to_string()),
        ]);
        let properties = dir.join("edc.properties");
        std::fs::write(&properties, fill(TEMPLATE, &values)).map_err(io("EDC properties"))?;

        let class_path = if options.participant_policies {
            format!("{0}/lib/*:{0}/ext/*", home.display())
        } else {
            format!("{}/lib/*", home.display())
        };
        let args = [
            HEAP.to_owned(),
            // Serial GC and C1 only: smaller and quicker to start on two cores; a test connector
            // never runs long enough for C2 to pay off.
            "-XX:+UseSerialGC".to_owned(),
            "-XX:TieredStopAtLevel=1".to_owned(),
            format!("-Dedc.fs.config={}", properties.display()),
            format!("-Djavax.net.ssl.trustStore={}", truststore.display()),
            "-Djavax.net.ssl.trustStoreType=PKCS12".to_owned(),
            format!("-Djavax.net.ssl.trustStorePassword={store_password}"),
            "-cp".to_owned(),
            class_path,
            MAIN_CLASS.to_owned(),
            // No ANSI colour codes in the log.
            "--no-color".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join("edc.log");
        let started = Instant::now();
        let cleanup = format!("rm -rf '{}'", dir.display());
        let child = spawn_watched("java", &args, &[], &log, &cleanup).map_err(io("starting java"))?;
        let mut edc = Edc {
            name: options.name.clone(),
            version: options.version.clone(),
            participant_id: options.participant_id.clone(),
            management_url,
            protocol_url,
            control_url,
            api_key,
            log,
            start_time: Duration::ZERO,
            dir,
            child: Mutex::new(child),
        };
        match edc.wait_until_ready(management_port, &ca.cert_pem(), started) {
            Ok(()) => {
                edc.start_time = started.elapsed();
                tracing::info!(name = %edc.name, version = %edc.version, seconds = edc.start_time.as_secs_f32(), "EDC ready");
                Ok(edc)
            }
            Err(detail) => {
                let log = log_tail(&edc.log, 40);
                drop(edc);
                Err(SystemError::Start { what: "EDC", detail, log })
            }
        }
    }

    /// Ready = the Management API answers a read of an absent asset with EDC's own 404 (an
    /// error array), which also proves the listener is this instance: another would refuse the
    /// key with 401.
    fn wait_until_ready(&self, management_port: u16, ca_pem: &str, started: Instant) -> Result<(), String> {
        let deadline = started + START_TIMEOUT;
        let path = format!("/management/v3/assets/readiness-{}", uuid::Uuid::new_v4());
        let mut last = "nothing listens yet".to_owned();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
                return Err(format!("the launcher exited ({status}) before the Management API answered"));
            }
            if wait_for_port(management_port, Duration::from_millis(500)) {
                match get(management_port, &path, &self.api_key, ca_pem) {
                    Ok((404, body)) if body.trim_start().starts_with('[') => return Ok(()),
                    Ok((status, body)) => last = format!("{status}: {}", body.chars().take(200).collect::<String>()),
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("the Management API did not answer within {} s (last: {last})", START_TIMEOUT.as_secs()))
    }

    /// The DSP 2025-1 endpoint, what a consumer names as `counterPartyAddress`.
    pub fn dsp_url(&self) -> String {
        format!("{}{DSP_VERSION_PATH}", self.protocol_url)
    }

    /// The JVM's resident set size in KiB (the watchdog shell's child), if it can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        let watchdog = self.child.lock().unwrap_or_else(|e| e.into_inner()).id();
        let children = std::fs::read_to_string(format!("/proc/{watchdog}/task/{watchdog}/children")).ok()?;
        children.split_whitespace().filter_map(|pid| rss_of(pid.parse().ok()?)).max()
    }

    /// Stops the JVM (also done on drop, and by the watchdog when the test binary ends).
    pub fn stop(&self) {
        stop_watched(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The run directory (properties, keystores, log); removed when the JVM stops.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Edc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_each(ca: &TestCa, options: &[EdcOptions]) -> Vec<Result<Edc, SystemError>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = options.iter().map(|o| scope.spawn(move || Edc::start(ca, o))).collect();
        handles.into_iter().map(|h| h.join().expect("launcher thread")).collect()
    })
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The template with every `{{key}}` replaced.
fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    text
}

/// The PKCS12 key store Jetty serves from (openssl), and a trust store with the CA for the
/// JVM's outgoing TLS (keytool: OpenSSL 3.0 cannot mark a certificate as trusted for Java).
fn make_stores(dir: &Path, keystore: &Path, truststore: &Path, password: &str) -> Result<(), SystemError> {
    let pass = format!("pass:{password}");
    let key = dir.join("server.key");
    let cert = dir.join("server.crt");
    let ca = dir.join("ca.crt");
    let steps: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        (
            "openssl",
            vec![
                "pkcs12".as_ref(),
                "-export".as_ref(),
                "-inkey".as_ref(),
                key.as_os_str(),
                "-in".as_ref(),
                cert.as_os_str(),
                "-name".as_ref(),
                "edc".as_ref(),
                "-out".as_ref(),
                keystore.as_os_str(),
                "-passout".as_ref(),
                pass.as_ref(),
            ],
        ),
        (
            "keytool",
            vec![
                "-importcert".as_ref(),
                "-noprompt".as_ref(),
                "-alias".as_ref(),
                "dev-stack-ca".as_ref(),
                "-file".as_ref(),
                ca.as_os_str(),
                "-keystore".as_ref(),
                truststore.as_os_str(),
                "-storetype".as_ref(),
                "PKCS12".as_ref(),
                "-storepass:env".as_ref(),
                "EDC_STORE_PASSWORD".as_ref(),
            ],
        ),
    ];
    for (program, args) in steps {
        let output = std::process::Command::new(program)
            .args(args)
            .env("EDC_STORE_PASSWORD", password)
            .output()
            .map_err(|source| SystemError::Io { what: "making the EDC key stores", source })?;
        if !output.status.success() {
            return Err(SystemError::Start {
                what: "EDC",
                detail: format!("{program} failed making the key stores ({})", output.status),
                log: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

/// `GET path` with the API key over TLS that trusts only the run's CA. Returns status and body.
fn get(port: u16, path: &str, api_key: &str, ca_pem: &str) -> Result<(u16, String), String> {
    crate::brokers::https_get(port, path, &format!("X-Api-Key: {api_key}"), ca_pem, Duration::from_secs(10))
}

/// Instances of this test binary by name, started on first use. Only plain data and processes
/// live here: tests run on different tokio runtimes, so no client or runtime-bound handle may.
static SHARED: Mutex<BTreeMap<String, Result<&'static Edc, String>>> = Mutex::new(BTreeMap::new());

/// The instances named in `options` of this test binary, started (in parallel) on first use and
/// kept until the binary ends; certificates from [`TestCa::shared`]. A name asked for again gets
/// the running instance whatever the options; one that failed to start fails again at once.
pub fn shared(options: &[EdcOptions]) -> Result<Vec<&'static Edc>, SystemError> {
    // Held while starting: a test asking meanwhile waits for the same instances.
    let mut started = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<EdcOptions> = options.iter().filter(|o| !started.contains_key(&o.name)).cloned().collect();
    if !missing.is_empty() {
        for (o, result) in missing.iter().zip(start_each(&TestCa::shared(), &missing)) {
            let entry = result.map(|edc| &*Box::leak(Box::new(edc))).map_err(|e| e.to_string());
            started.insert(o.name.clone(), entry);
        }
    }
    options
        .iter()
        .map(|o| match &started[&o.name] {
            Ok(edc) => Ok(*edc),
            Err(e) => {
                Err(SystemError::Start { what: "EDC", detail: format!("{} (first attempt)", o.name), log: e.clone() })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_filled_completely() {
        let values = BTreeMap::from([
            ("name", "n".to_owned()),
            ("participant_id", "p".to_owned()),
            ("default_port", "1".to_owned()),
            ("management_port", "2".to_owned()),
            ("protocol_port", "3".to_owned()),
            ("control_port", "4".to_owned()),
            ("keystore_path", "/k".to_owned()),
            ("keystore_password", "pw".to_owned()),
            ("api_key", "key".to_owned()),
            ("protocol_url", "https://127.0.0.1:3/protocol".to_owned()),
            ("control_url", "https://127.0.0.1:4/control".to_owned()),
            ("policy_validation", "false".to_owned()),
        ]);
        let text = fill(TEMPLATE, &values);
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("web.http.management.auth.key=key\n"));
        assert!(text.contains("edc.dsp.callback.address=https://127.0.0.1:3/protocol\n"));
    }
}
