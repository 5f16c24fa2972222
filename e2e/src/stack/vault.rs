//! The dev stack's `default` secret store: the real OpenBao of this test binary
//! ([`crate::systems::vault`], one server shared by every stack of the binary) behind a proxy of
//! the stack's own ([`crate::systems::proxy`]), with a KV v2 mount of the stack's own (the
//! profile's `kvMount`; the stock connector's folder `edc` stays below it).
//!
//! The proxy keeps what tests had with the double: its request log ("no mutating request reached
//! Vault" is a fact about the wire) and fault injection (503s, latency, the in-flight count).
//! Tests inspect the store as its administrator would, with the root token straight to OpenBao
//! (never through the proxy, so inspection leaves no trace in the log the tests assert on), and
//! only inside the stack's mount.

use reqwest::Method;
use serde_json::Value;

use crate::doubles::DoubleServer;
use crate::doubles::vault::SecretView;
use crate::systems::proxy;
use crate::systems::vault::Vault;
use crate::tls::TestCa;

/// Prefix of each stack's KV v2 mount (`dev-stack-<random>`).
pub const MOUNT_PREFIX: &str = "dev-stack";

/// The stack's `default` secret store: the real OpenBao behind the stack's proxy.
pub struct StackVault {
    /// The proxy the operator talks to: its request log and fault switches.
    pub server: DoubleServer,
    /// The stack's KV v2 mount (the operator's `kvMount`).
    pub mount: String,
    /// The real server.
    pub vault: &'static Vault,
}

impl StackVault {
    /// The binary's shared OpenBao (started on first use), a fresh KV v2 mount on it, and a new
    /// proxy in front of it.
    pub async fn start(ca: &TestCa) -> StackVault {
        let vault = Vault::shared().await.unwrap_or_else(|e| panic!("{e}"));
        let mount = vault.create_kv2_mount(MOUNT_PREFIX).await.unwrap_or_else(|e| panic!("{e}"));
        let upstream = vault.url().to_string();
        let server = proxy::start(&upstream, ca).await.expect("the Vault proxy");
        StackVault { server, mount, vault }
    }

    /// The Vault address the operator is given: the proxy (`https://127.0.0.1:<port>/`).
    pub fn url(&self) -> url::Url {
        url::Url::parse(&self.server.base_url).expect("the proxy's own URL")
    }

    /// The token the operator is given (OpenBao's root token, registered as a secret).
    pub fn token(&self) -> &str {
        self.vault.root_token()
    }

    /// A call straight to OpenBao (not through the proxy) with the root token, on a path below
    /// the stack's mount (`data/edc/x`, `metadata/edc/`).
    async fn call(&self, method: Method, path: &str) -> (u16, Value) {
        let path = format!("{}/{path}", self.mount);
        self.vault.api(method, &path, None).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A key below the mount (`edc/alias`) as stored: `None` when the key does not exist (no
    /// metadata); `data` is `None` when its latest version is deleted or destroyed.
    pub async fn secret(&self, key: &str) -> Option<SecretView> {
        let metadata = match self.call(Method::GET, &format!("metadata/{key}")).await {
            (200, body) => body["data"].clone(),
            (404, _) => return None,
            (status, body) => panic!("metadata of {key}: {status} {body}"),
        };
        let data = match self.call(Method::GET, &format!("data/{key}")).await {
            (200, body) => body["data"]["data"].as_object().cloned(),
            (404, _) => None,
            (status, body) => panic!("data of {key}: {status} {body}"),
        };
        let custom_metadata = metadata["custom_metadata"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        let current_version = metadata["current_version"].as_u64().unwrap_or_default();
        Some(SecretView { data, custom_metadata, current_version })
    }

    /// Every key below the mount that exists (with or without a live version), sorted: a
    /// recursive KV v2 `LIST` on `metadata/`.
    pub async fn keys(&self) -> Vec<String> {
        let list = Method::from_bytes(b"LIST").expect("a valid method");
        let mut keys = Vec::new();
        let mut folders = vec![String::new()];
        while let Some(folder) = folders.pop() {
            let entries = match self.call(list.clone(), &format!("metadata/{folder}")).await {
                (200, body) => body["data"]["keys"].as_array().cloned().unwrap_or_default(),
                (404, _) => Vec::new(),
                (status, body) => panic!("LIST metadata/{folder}: {status} {body}"),
            };
            for entry in entries.iter().filter_map(Value::as_str) {
                let path = format!("{folder}{entry}");
                if entry.ends_with('/') {
                    folders.push(path);
                } else {
                    keys.push(path);
                }
            }
        }
        keys.sort();
        keys
    }

    /// Whether `key` exists below the mount (as [`StackVault::secret`] is `Some`).
    pub async fn holds(&self, key: &str) -> bool {
        self.secret(key).await.is_some()
    }

    /// Removes `key` with every version and its metadata (`DELETE metadata/<key>`), behind the
    /// operator's back.
    pub async fn delete(&self, key: &str) {
        let (status, body) = self.call(Method::DELETE, &format!("metadata/{key}")).await;
        assert_eq!(status, 204, "deleting {key}: {body}");
    }

    /// Soft-deletes the latest version of `key` (`DELETE data/<key>`), behind the operator's back.
    pub async fn delete_latest_version(&self, key: &str) {
        let (status, body) = self.call(Method::DELETE, &format!("data/{key}")).await;
        assert_eq!(status, 204, "deleting the latest version of {key}: {body}");
    }

    /// Unmounts the stack's KV v2 engine (and everything in it).
    pub async fn delete_mount(&self) -> Result<(), String> {
        let path = format!("sys/mounts/{}", self.mount);
        match self.vault.api(Method::DELETE, &path, None).await {
            Ok((204, _)) => Ok(()),
            Ok((status, body)) => Err(format!("unmounting {}: {status} {body}", self.mount)),
            Err(e) => Err(e.to_string()),
        }
    }
}
