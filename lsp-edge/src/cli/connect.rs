//! `lsp-edge connect HOST:PORT`: bridges stdin/stdout to an lsp-edge over TCP, for
//! editors that only spawn stdio language servers (Helix). Bytes pass through
//! unchanged; LSP framing is the two ends' business.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The I/O error is in the message only (not also a `source`, said twice).
    #[error("cannot connect to lsp-edge at {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("connection to lsp-edge broke: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ConnectError {
    fn from(err: std::io::Error) -> Self {
        ConnectError::Io(err)
    }
}

/// Connects to `addr` and bridges it with stdin/stdout until the server closes the
/// connection or stdin ends (after which the server's remaining output is drained).
pub async fn run(addr: &str) -> Result<(), ConnectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| ConnectError::Connect {
            addr: addr.to_owned(),
            error,
        })?;
    stream.set_nodelay(true)?;
    bridge(stream, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Copies `input` → `stream` and `stream` → `output`. Ends when the stream's
/// reading side ends; the end of `input` half-closes the stream's writing side.
pub async fn bridge<I, O>(
    stream: TcpStream,
    mut input: I,
    mut output: O,
) -> Result<(), ConnectError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let (mut from_server, mut to_server) = stream.into_split();
    let upstream = async {
        tokio::io::copy(&mut input, &mut to_server).await?;
        to_server.shutdown().await
    };
    let downstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut from_server, &mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            output.write_all(&buffer[..n]).await?;
            // Each message must reach the editor now, not when a buffer fills.
            output.flush().await?;
        }
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        result = &mut downstream => result?,
        result = &mut upstream => {
            result?;
            downstream.await?;
        }
    }
    Ok(())
}
