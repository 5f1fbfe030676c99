//! The Lua the cluster runs in Redis, each call atomic. On a Redis Cluster every call's keys
//! share one slot (see [`super::keys`]), and run on the primary serving it.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// A script, called by its hash, and by its text on a Redis that does not know it yet. Redis
/// keeps scripts per server and does not replicate them, so a replica promoted by a failover
/// knows none: the text goes to the one server that runs the call, where the client's own
/// fallback would load it on every node of a Redis Cluster (and fail while any is down).
pub struct Lua {
    code: &'static str,
    hashed: Script,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hashed: Script::new(code),
        }
    }

    /// A call with its first key.
    pub fn key<K: ToRedisArgs>(&self, key: K) -> Call<'_> {
        let mut call = self.prepare();
        call.key(key);
        call
    }

    /// A call with no key or argument yet.
    pub fn prepare(&self) -> Call<'_> {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

pub struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    pub fn key<K: ToRedisArgs>(&mut self, key: K) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    pub async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        let mut by_hash = redis::cmd("EVALSHA");
        by_hash
            .arg(self.lua.hashed.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        match by_hash.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // EVAL also keeps the script on that server, for the next EVALSHA.
                let mut by_text = redis::cmd("EVAL");
                by_text
                    .arg(self.lua.code)
                    .arg(self.keys.len())
                    .arg(&self.keys)
                    .arg(&self.args);
                by_text.query_async(conn).await
            }
            answered => answered,
        }
    }
}

/// Orders batches of rooms whose numbers one epoch key guards: checks the epoch once, then for
/// each batch takes the room's next numbers from its counter, appends the batch to the room's
/// capped stream under its first number, and publishes it.
/// KEYS: the epoch (the bucket's on a Redis Cluster), then each room's counter and stream.
/// ARGV: expected epoch, the primary's expected replication id (empty with one Redis), stream
/// length, then each batch's number of changes, body and channel. Returns the batches' first
/// numbers, in order, or an `EPOCH …` error.
///
/// The replication id is checked here, in the same atomic call that numbers, because a node
/// may reach a newly promoted primary before it has noticed the failover; that primary kept the
/// epoch key (it is replicated) but may lack the last numbers the old one gave out. On a Redis
/// Cluster the channel is no key: `PUBLISH` reaches the subscribers of every node.
pub fn order() -> Lua {
    Lua::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('EPOCH ' .. tostring(epoch))
end
if ARGV[2] ~= '' then
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  if replid ~= ARGV[2] then
    return redis.error_reply('EPOCH the primary changed to ' .. tostring(replid))
  end
end
local firsts = {}
for i = 1, (#KEYS - 1) / 2 do
  local n = tonumber(ARGV[3 * i + 1])
  local body = ARGV[3 * i + 2]
  local last = redis.call('INCRBY', KEYS[2 * i], n)
  local first = last - n + 1
  redis.call('XADD', KEYS[2 * i + 1], 'MAXLEN', '~', ARGV[3], first .. '-0', 'e', body)
  redis.call('PUBLISH', ARGV[3 * i + 3], first .. ' ' .. body)
  firsts[i] = first
end
return firsts
"#,
    )
}

/// Settles the epoch the nodes order under and answers it. With one Redis: the one there, or
/// the candidate when there is none (Redis lost its data). Behind Sentinel, and for each bucket
/// of a Redis Cluster (ARGV[2] = `1`), an epoch ends with `/<replication id>` of the primary it
/// was made on; one made on another primary (the primary failed over and may have lost writes)
/// is replaced too, by the first node to get here, so every node then restores into the same
/// new epoch.
/// KEYS: epoch. ARGV: candidate, `1` when bound to the replication id.
pub fn settle_epoch() -> Lua {
    Lua::new(
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

/// A bucket's epoch (empty when there is none) and the replication id of the primary serving
/// its slot, read together: what a node checks every bucket of a Redis Cluster against at
/// every beat. KEYS: the bucket's epoch.
pub fn bucket_epoch() -> Lua {
    Lua::new(
        r#"
local epoch = redis.call('GET', KEYS[1]) or ''
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
return {epoch, replid}
"#,
    )
}

/// Raises counters to at least the given numbers, never lowering one: what the nodes run after
/// a Redis that lost its data comes back, so that no number is given out twice. On a Redis
/// Cluster one call takes the counters of one bucket only.
/// KEYS: counters. ARGV: the number for each.
pub fn restore_counters() -> Lua {
    Lua::new(
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
