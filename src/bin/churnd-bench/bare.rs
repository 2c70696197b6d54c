//! The bare consumer: reads the stream with a consumer group and acknowledges what it read
//! (or reads with `NOACK`, keeping no pending entries list), nothing else. What Redis allows
//! on this machine, against which churnd is measured.

use anyhow::Result;
use redis::aio::MultiplexedConnection;

use churnd::source::batch::{parse_reply, Entry};

const GROUP: &str = "bare";

pub struct BareConsumer {
    stream: [String; 1],
    batch: usize,
    /// `BLOCK` of each read; `None`: a read of an empty stream returns at once.
    block_ms: Option<u64>,
    /// IDs read by the last `next`, acknowledged with the following read.
    unacked: Vec<String>,
    /// Reads with `NOACK`: nothing pending, nothing to acknowledge.
    noack: bool,
}

impl BareConsumer {
    /// Creates the group on `stream` (and the stream if missing), starting after `start`
    /// ("0": everything in it, "$": what is added from now on).
    pub async fn create(
        conn: &mut MultiplexedConnection,
        stream: &str,
        start: &str,
        batch: usize,
        block_ms: Option<u64>,
    ) -> Result<Self> {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg(start)
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await?;
        Ok(Self {
            stream: [stream.to_string()],
            batch,
            block_ms,
            unacked: Vec::new(),
            noack: false,
        })
    }

    /// Reads with `XREADGROUP … NOACK` from now on: no pending entries list, no `XACK`.
    pub fn without_acks(mut self) -> Self {
        self.noack = true;
        self
    }

    /// The next batch. One round trip per batch: the acknowledgement of the previous batch
    /// rides with the read, so Redis, not the network, sets the pace.
    pub async fn next(&mut self, conn: &mut MultiplexedConnection) -> Result<Vec<Entry>> {
        let stream = &self.stream[0];
        let mut pipe = redis::pipe();
        if !self.unacked.is_empty() {
            pipe.cmd("XACK")
                .arg(stream)
                .arg(GROUP)
                .arg(&self.unacked)
                .ignore();
        }
        let read = pipe
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(GROUP)
            .arg("COUNT")
            .arg(self.batch);
        if let Some(block_ms) = self.block_ms {
            read.arg("BLOCK").arg(block_ms);
        }
        if self.noack {
            read.arg("NOACK");
        }
        read.arg("STREAMS").arg(stream).arg(">");
        let (reply,): (redis::Value,) = pipe.query_async(conn).await?;
        let entries = parse_reply(reply, &self.stream)?;
        if !self.noack {
            self.unacked = entries.iter().map(|e| e.id.to_string()).collect();
        }
        Ok(entries)
    }

    /// Acknowledges the last batch read.
    pub async fn finish(&mut self, conn: &mut MultiplexedConnection) -> Result<()> {
        if !self.unacked.is_empty() {
            redis::cmd("XACK")
                .arg(&self.stream[0])
                .arg(GROUP)
                .arg(&self.unacked)
                .query_async::<()>(conn)
                .await?;
            self.unacked.clear();
        }
        Ok(())
    }
}
