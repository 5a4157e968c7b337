//! A stand-in for Patroni's REST API (`GET /cluster`) serving whatever body the test sets;
//! dropping it closes the port (every Patroni URL unreachable). Used with the shared test
//! cluster, where a real Patroni is not needed.

use std::sync::Arc;

/// The fake API.
pub struct FakePatroni {
    pub url: String,
    body: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePatroni {
    /// Listens on a free loopback port and answers every request with `body`.
    pub async fn start(body: String) -> FakePatroni {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = Arc::new(std::sync::Mutex::new(body));
        let shared = body.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let body = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        FakePatroni { url, body, task }
    }

    /// The body of every later answer.
    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for FakePatroni {
    fn drop(&mut self) {
        self.task.abort();
    }
}
