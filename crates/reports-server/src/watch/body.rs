//! The body of a watch response: queued event lines, joined into frames when the client is
//! behind.

use bytes::Bytes;
use tokio::sync::mpsc;

/// Most bytes one body frame gathers from queued items: one HTTP/2 DATA frame of the default
/// size and one TLS record. Beyond it joining saves no frame or write; it would only copy.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The watch response body. When a client falls behind, several small items wait in its queue;
/// handing them to hyper as one frame costs one TLS record and one write instead of one each.
/// An item that is alone in the queue, or large, is passed on as it is (no copy).
pub(super) struct CoalescingBody {
    pub(super) events: mpsc::Receiver<Bytes>,
    /// An item taken from the queue that did not fit in the previous frame.
    pub(super) held: Option<Bytes>,
}

impl futures::Stream for CoalescingBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let first = match self.held.take() {
            Some(held) => held,
            None => match std::task::ready!(self.events.poll_recv(cx)) {
                Some(first) => first,
                None => return std::task::Poll::Ready(None),
            },
        };
        let mut joined: Option<bytes::BytesMut> = None;
        while first.len() < COALESCE_LIMIT {
            let gathered = joined.as_ref().map_or(first.len(), |j| j.len());
            match self.events.try_recv() {
                Ok(next) if gathered + next.len() <= COALESCE_LIMIT => joined
                    .get_or_insert_with(|| {
                        let mut buffer = bytes::BytesMut::with_capacity(COALESCE_LIMIT);
                        buffer.extend_from_slice(&first);
                        buffer
                    })
                    .extend_from_slice(&next),
                Ok(next) => {
                    self.held = Some(next);
                    break;
                }
                // Empty or closed: deliver what is gathered; the next poll sees the end.
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some(Ok(joined.map_or(first, bytes::BytesMut::freeze))))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt as _;
    use tokio::sync::mpsc;

    use super::{CoalescingBody, COALESCE_LIMIT};

    #[tokio::test]
    async fn queued_items_leave_as_one_frame_up_to_the_limit_and_a_lone_item_is_not_copied() {
        let (tx, rx) = mpsc::channel(8);
        let mut body = CoalescingBody { events: rx, held: None };
        let lone = Bytes::from_static(b"{\"type\":\"ADDED\"}\n");
        tx.send(lone.clone()).await.unwrap();
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.as_ptr(), lone.as_ptr(), "a lone item is passed on as it is");
        for line in ["a\n", "b\n", "c\n"] {
            tx.send(Bytes::from_static(line.as_bytes())).await.unwrap();
        }
        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from_static(b"a\nb\nc\n"));
        let big = Bytes::from(vec![b'x'; COALESCE_LIMIT - 1]);
        tx.send(Bytes::from_static(b"d\n")).await.unwrap();
        tx.send(big.clone()).await.unwrap();
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            Bytes::from_static(b"d\n"),
            "what does not fit waits"
        );
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.as_ptr(), big.as_ptr(), "and then leaves uncopied");
        drop(tx);
        assert!(body.next().await.is_none(), "the body ends when the watcher does");
    }
}
