//! A TCP proxy that can cut what passes through it: put in front of the Kubernetes API server,
//! it interrupts the operator's watches the way a load balancer, an API server restart or a
//! network blip does. TLS passes through untouched (the client still verifies the API server's
//! certificate, which names 127.0.0.1), so the proxy sees no content and needs no secret.
//!
//! Two faults: [`TcpProxy::reset_all`] resets every open connection (RST, the client sees
//! "connection reset" mid-watch or mid-request), and [`TcpProxy::refuse_for`] resets every new
//! connection for a while (the API server looks down).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    cut: watch::Sender<u64>,
    refuse_until: Arc<std::sync::Mutex<Option<Instant>>>,
    resets: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on a free 127.0.0.1 port that forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0u64);
        let refuse_until: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let resets = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let task = {
            let (cut, refuse_until, resets) = (cut.clone(), refuse_until.clone(), resets.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    let refusing = refuse_until.lock().unwrap().is_some_and(|until| Instant::now() < until);
                    if refusing {
                        reset(client);
                        resets.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut cut = cut.subscribe();
                    let (upstream, resets) = (upstream.clone(), resets.clone());
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            reset(client);
                            return;
                        };
                        let mut client = client;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {
                                resets.fetch_add(1, Ordering::Relaxed);
                                reset(client);
                                reset(server);
                            }
                        }
                    });
                }
            })
        };
        Ok(TcpProxy { port, cut, refuse_until, resets, task })
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Resets every open connection and every new one for `duration`.
    pub fn refuse_for(&self, duration: Duration) {
        *self.refuse_until.lock().unwrap() = Some(Instant::now() + duration);
        self.reset_all();
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset by peer".
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server and a proxy in front of it.
    async fn echo_behind_proxy() -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        TcpProxy::start(&addr.to_string()).await.unwrap()
    }

    async fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn forwards_and_resets_open_connections() {
        let proxy = echo_behind_proxy().await;
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        echo(&mut stream).await.unwrap();
        proxy.reset_all();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(echo(&mut stream).await.is_err(), "the open connection is cut");
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        echo(&mut again).await.unwrap();
        assert_eq!(proxy.resets(), 1);
    }

    #[tokio::test]
    async fn refuses_new_connections_for_a_while() {
        let proxy = echo_behind_proxy().await;
        proxy.refuse_for(Duration::from_millis(300));
        let mut refused = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(echo(&mut refused).await.is_err());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut accepted = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        echo(&mut accepted).await.unwrap();
    }
}
