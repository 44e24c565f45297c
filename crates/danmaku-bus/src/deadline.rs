//! The one owner of operation timeouts: every future the bus hands out is
//! wrapped here, so the bound a caller relies on is enforced in one place
//! rather than by each command.

use std::future::Future;
use std::time::Duration;

use crate::BusError;

/// Runs `op`, giving up after `limit` with [`BusError::Unavailable`] naming
/// `what`. Dropping `op` on timeout is safe: a Redis command already sent
/// may still take effect, which is why callers treat such an error as
/// "unknown outcome, not acknowledged".
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: &str,
    op: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, op).await {
        Ok(out) => out,
        Err(_) => Err(BusError::Unavailable(format!(
            "{what}: no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_operation_becomes_unavailable_at_the_limit() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        };
        let started = tokio::time::Instant::now();
        let out = bounded(Duration::from_secs(1), "test", slow).await;
        assert!(matches!(out, Err(BusError::Unavailable(why)) if why.contains("test")));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(
            bounded(Duration::from_secs(1), "fast", async { Ok(7) })
                .await
                .unwrap(),
            7
        );
    }
}
