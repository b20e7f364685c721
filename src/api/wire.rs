//! Errors found before a request reaches the router get JSON too. hyper
//! answers a request it cannot parse itself (a URL over 64 KiB: 414; headers
//! too large: 431; not HTTP: 400) with an empty body and closes the
//! connection; it offers no hook for that answer. So each connection is
//! wrapped, and such a bodiless error head on its way out is given our
//! `{"detail", "code"}` body. Nothing else that passes is touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ErrorBody;

/// A listener whose connections get JSON bodies on hyper's own errors.
pub struct JsonParseErrors<L>(pub L);

impl<L: Listener> Listener for JsonParseErrors<L> {
    type Io = JsonErrorsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonErrorsIo::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// One connection; `pending` holds a rewritten answer not yet sent.
pub struct JsonErrorsIo<T> {
    inner: T,
    pending: Vec<u8>,
    /// The last write went out whole, so the next one starts something new
    /// (after a partial write, the next continues the same bytes: they are
    /// never inspected).
    at_boundary: bool,
    /// A `101 Switching Protocols` went out: what follows is WebSocket
    /// frames, never inspected again.
    upgraded: bool,
}

/// The code and detail for the statuses hyper answers on its own.
fn parse_error(status: u16) -> Option<(StatusCode, &'static str, &'static str)> {
    Some(match status {
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the URL is longer than the server accepts (64 KiB); send large data in a request body",
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request's headers are larger than the server accepts",
        ),
        400 => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request is not valid HTTP/1.1 (method, URL, header or version)",
        ),
        _ => return None,
    })
}

/// If `head` is a whole response head with an error status, no content
/// type and an empty body (only hyper's own answers look like that: ours
/// always carry JSON), the same answer with a JSON body.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    // Cheapest tests first: this runs on every response head. A head with
    // its body in the same write does not end with the blank line, and
    // most statuses are not hyper's own errors.
    let text = std::str::from_utf8(head.strip_suffix(b"\r\n\r\n")?).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let (_, code, detail) = parse_error(status)?;
    if text.contains("\r\n\r\n") {
        return None; // a head and more, which merely ends in a blank line
    }
    let headers: Vec<&str> = lines.collect();
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if header("content-type").is_some() || header("content-length") != Some("0") {
        return None;
    }
    let body = serde_json::to_vec(&ErrorBody {
        detail: detail.into(),
        code,
    })
    .ok()?;
    let mut out = format!("{status_line}\r\n");
    for h in headers {
        if !h.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T> JsonErrorsIo<T> {
    /// A new connection: nothing written yet, not upgraded.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            at_boundary: true,
            upgraded: false,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether `buf` may be a response head: it starts a write at a
    /// boundary of an HTTP (not yet upgraded) connection.
    fn inspects(&self, buf: &[u8]) -> bool {
        self.at_boundary && !self.upgraded && buf.starts_with(b"HTTP/1.")
    }
}

impl<T: AsyncWrite + Unpin> JsonErrorsIo<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorsIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorsIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper writes a head it made on its own in one piece, so it is
        // seen whole.
        if self.inspects(buf) {
            if let Some(answer) = with_json_body(buf) {
                self.pending = answer;
                // Sent by poll_flush/poll_shutdown if not now.
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
            self.upgraded = buf.starts_with(b"HTTP/1.1 101");
        }
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.at_boundary = written == buf.len();
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // A head hyper made on its own comes alone, in the first slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (filled.next(), filled.next())
            && self.inspects(head)
        {
            return self.poll_write(cx, head);
        }
        ready!(self.poll_pending(cx))?;
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.at_boundary = written == bufs.iter().map(|b| b.len()).sum::<usize>();
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_error_heads_are_rewritten() {
        let hyper = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_json_body(hyper).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains("connection: close") && head.contains("date: x"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "uri_too_long");
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\nmore",
        ] {
            assert!(with_json_body(ours).is_none());
        }
    }

    /// Accepts at most `limit` bytes per write; records what it got.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn only_heads_at_a_boundary_before_an_upgrade_are_looked_at() {
        use tokio::io::AsyncWriteExt;
        let lookalike = b"HTTP/1.1 400 x\r\ncontent-length: 0\r\n\r\n";
        // The rest of a partly written frame that happens to look like a head.
        let mut frame = vec![0x8a, lookalike.len() as u8];
        frame.extend_from_slice(lookalike);
        let mut io = JsonErrorsIo::new(Trickle {
            got: Vec::new(),
            limit: 2,
        });
        io.write_all(&frame).await.unwrap();
        assert_eq!(io.inner.got, frame, "passed through untouched");
        // After a 101, frames are never looked at, whole or not.
        let mut io = JsonErrorsIo::new(Trickle {
            got: Vec::new(),
            limit: usize::MAX,
        });
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        io.write_all(upgrade).await.unwrap();
        io.write_all(lookalike).await.unwrap();
        assert_eq!(io.inner.got, [&upgrade[..], &lookalike[..]].concat());
        // A bodiless error head at a boundary still gets its JSON body.
        let mut io = JsonErrorsIo::new(Trickle {
            got: Vec::new(),
            limit: usize::MAX,
        });
        io.write_all(lookalike).await.unwrap();
        io.flush().await.unwrap();
        assert!(String::from_utf8_lossy(&io.inner.got).contains("\"code\":\"bad_request\""));
    }
}
