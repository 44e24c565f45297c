//! Fleet-wide limits on Redis (`Limiter`): every check of one call in one
//! Lua script ([`LIMIT_SOURCE`]), so the whole call is atomic and every
//! instance shares one budget per key.
//!
//! The script reads Redis's clock (`TIME`, in µs), so instances whose
//! clocks differ agree; Redis ≥ 5 replicates a script's effects, not the
//! script, so reading the clock before writing is safe. It first decides
//! every check, in order, against the stored state overlaid with the
//! charges of the checks before it (so two checks of one key in one call
//! see each other), and writes only if all pass: a refusal charges nothing.
//!
//! Stored state, under `{p}limit:{key}`: a GCRA key holds its theoretical
//! arrival time (µs since the epoch, Redis's clock) and expires when that
//! time comes, which is when it stops holding information (a missing key
//! and a TAT in the past mean the same: the whole burst is available). A
//! `Once` key holds `1` and expires after its ttl; while it exists the
//! check fails, and its remaining `PTTL` is the `retry_after`.
//!
//! Like a publish (`broker.rs`), the script first compares `TIME` with the
//! call's deadline and does nothing once it has passed, so a check the
//! caller saw time out never charges anything later.

use std::time::Duration;

use tokio::time::Instant;

use super::RedisBus;
use crate::deadline::bounded;
use crate::{BoxFuture, BusError, LimitCheck, LimitExceeded, LimitKind, Limiter};

/// The limit script, run by its SHA (`command.rs`). `KEYS[i]`: check `i`'s key. `ARGV[1]`: the deadline
/// (µs since the epoch, Redis's clock); then three arguments per check:
/// `g`, the period in µs and the burst for GCRA; `o`, the ttl in µs and
/// `0` for `Once`. Answers `{-1, 0}` if every check passed (and charges
/// them), `{index, retry_after_us}` for the first that failed (charging
/// nothing), `{-2, 0}` if the deadline had passed (doing nothing). Numbers
/// are integral µs well below 2^53, so Lua's doubles hold them exactly.
pub(crate) const LIMIT_SOURCE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > tonumber(ARGV[1]) then return {-2, 0} end
local writes = {}
local order = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = ARGV[3 * i - 1]
  local a = tonumber(ARGV[3 * i])
  local b = tonumber(ARGV[3 * i + 1])
  local w = writes[key]
  local value, px
  if kind == 'g' then
    local stored
    if w then stored = tonumber(w[1]) else stored = tonumber(redis.call('GET', key)) end
    local tat = now
    if stored and stored > now then tat = stored end
    local backlog = tat - now + a
    local allowance = a * b
    if backlog > allowance then return {i - 1, backlog - allowance} end
    value = string.format('%.0f', now + backlog)
    px = math.max(1, math.ceil(backlog / 1000))
  else
    local left
    if w then left = w[2] else left = redis.call('PTTL', key) end
    if left == -1 then return {i - 1, a} end
    if left > 0 then return {i - 1, left * 1000} end
    value = '1'
    px = math.max(1, math.ceil(a / 1000))
  end
  if w == nil then order[#order + 1] = key end
  writes[key] = {value, px}
end
for _, key in ipairs(order) do
  redis.call('SET', key, writes[key][1], 'PX', writes[key][2])
end
return {-1, 0}
"#;

/// The longest period or ttl the script is given: a century, so its sums
/// stay exact in Lua's doubles.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn micros(d: Duration) -> u64 {
    d.min(LONGEST).as_micros().try_into().unwrap_or(u64::MAX)
}

impl Limiter for RedisBus {
    /// Does not need the pub/sub link: only the command connection (a
    /// missing one fails at once). One round trip within `op_timeout`.
    fn check_limits(
        &self,
        checks: Vec<LimitCheck>,
    ) -> BoxFuture<'_, Result<Option<LimitExceeded>, BusError>> {
        let inner = &self.inner;
        let started = Instant::now();
        Box::pin(bounded(inner.op_timeout(), "checking limits", async move {
            if checks.is_empty() {
                return Ok(None);
            }
            let op_timeout = inner.op_timeout();
            let allowance = (op_timeout / 10).min(Duration::from_millis(100));
            let deadline_us = inner
                .commands
                .redis_time_us(started + op_timeout - allowance)
                .ok_or_else(|| BusError::Unavailable("redis clock not read yet".into()))?;
            let keys: Vec<String> = checks.iter().map(|c| inner.keys.limit(&c.key)).collect();
            let mut args: Vec<String> = Vec::with_capacity(1 + 3 * checks.len());
            args.push(deadline_us.to_string());
            for check in &checks {
                let (kind, a, b) = match check.kind {
                    LimitKind::Gcra { period, burst } => ("g", micros(period), burst.max(1)),
                    LimitKind::Once { ttl } => ("o", micros(ttl), 0),
                };
                args.extend([kind.to_owned(), a.to_string(), b.to_string()]);
            }
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            let (index, retry_us): (i64, i64) = inner
                .commands
                .eval("checking limits", LIMIT_SOURCE, &keys, &args)
                .await?;
            match index {
                -1 => {
                    inner.commands.wrote();
                    Ok(None)
                }
                -2 => Err(BusError::Unavailable(
                    "checking limits: redis got to it only after its deadline; nothing was charged"
                        .into(),
                )),
                i => {
                    let index = usize::try_from(i).map_err(|_| {
                        BusError::Unavailable(format!("checking limits: unexpected answer {i}"))
                    })?;
                    let retry_after = Duration::from_micros(u64::try_from(retry_us).unwrap_or(0));
                    Ok(Some(LimitExceeded { index, retry_after }))
                }
            }
        }))
    }
}
