//! The Lua the cluster runs in Redis, each call atomic.

use redis::Script;

/// Orders one batch of a room: checks the epoch, takes the next numbers from the room's counter,
/// appends the batch to the room's capped stream under its first number, and publishes it.
/// KEYS: epoch, counter, stream. ARGV: expected epoch, number of changes, batch body, stream
/// length, channel, and the primary's expected replication id (empty with one Redis). Returns
/// the first number, or an `EPOCH …` error.
///
/// The replication id is checked here, in the same atomic call that numbers, because a node
/// may reach a newly promoted primary before it has noticed the failover; that primary kept the
/// epoch key (it is replicated) but may lack the last numbers the old one gave out.
pub fn order() -> Script {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('EPOCH ' .. tostring(epoch))
end
if ARGV[6] ~= '' then
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  if replid ~= ARGV[6] then
    return redis.error_reply('EPOCH the primary changed to ' .. tostring(replid))
  end
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

/// Settles the epoch the nodes order under and answers it. With one Redis: the one there, or
/// the candidate when there is none (Redis lost its data). Behind Sentinel (ARGV[2] = `1`) an
/// epoch ends with `/<replication id>` of the primary it was made on; one made on another
/// primary (the primary failed over and may have lost writes) is replaced too, by the first
/// node to get here, so every node then restores into the same new epoch.
/// KEYS: epoch. ARGV: candidate, `1` when bound to the replication id.
pub fn settle_epoch() -> Script {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  local suffix = '/' .. replid
  if not epoch or string.sub(epoch, -#suffix) ~= suffix then
    epoch = ARGV[1] .. suffix
    redis.call('SET', KEYS[1], epoch)
  end
elseif not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
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
