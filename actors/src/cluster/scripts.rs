//! The Lua the cluster runs in Redis, each call atomic.

use redis::Script;

/// Orders one batch of a room: checks the epoch, takes the next numbers from the room's counter,
/// appends the batch to the room's capped stream under its first number, and publishes it.
/// KEYS: epoch, counter, stream. ARGV: expected epoch, number of changes, batch body, stream
/// length, channel. Returns the first number, or an `EPOCH <current>` error.
pub fn order() -> Script {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('EPOCH ' .. tostring(epoch))
end
local n = tonumber(ARGV[2])
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], first .. '-0', 'e', ARGV[3])
redis.call('PUBLISH', ARGV[5], first .. ' ' .. ARGV[3])
return first
"#,
    )
}

/// Raises counters to at least the given numbers, never lowering one: what the nodes run after
/// a Redis that lost its data comes back, so that no number is given out twice.
/// KEYS: counters. ARGV: the number for each.
pub fn restore_counters() -> Script {
    Script::new(
        r#"
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[i])
  local have = tonumber(redis.call('GET', key) or '0')
  if have < want then
    redis.call('SET', key, want)
  end
end
return #KEYS
"#,
    )
}
