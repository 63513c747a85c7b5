"""The queue's Lua scripts (``services.queue``): each checks and changes in one atomic step."""

ENQUEUE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st and not (ARGV[4] == '1' and st == 'dead') then return {0, st} end
local id = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[1], 'lab', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'lab', ARGV[2], 'enqueued_at', ARGV[3],
           'msg_id', id, 'attempts', 0, 'failures', 0, 'losses', 0, 'faults', 0, 'error', '',
           'retry_at', '')
return {1, id}
"""

# Refresh the idle time of a pending entry only if this consumer still owns it.
HEARTBEAT = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# Settle a claimed entry only while this consumer owns it: drop it from the stream, then
# 'ack' (nothing more), 'retry' (ZADD KEYS[3] score member) or 'dead' (XADD KEYS[3] fields),
# and write the status fields. ARGV: group, consumer, msg id, mode, n, n target args, status pairs.
SETTLE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local n = tonumber(ARGV[5])
local target = {}
for i = 6, 5 + n do target[#target + 1] = ARGV[i] end
if ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[3], target[1], target[2])
elseif ARGV[4] == 'dead' then
  redis.call('XADD', KEYS[3], '*', unpack(target))
end
local fields = {}
for i = 6 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
return 1
"""

# Put one due retry back on the stream (once: the ZREM decides between racing workers).
PROMOTE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local id = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[2], 'lab', ARGV[3])
redis.call('HSET', KEYS[3], 'msg_id', id, 'retry_at', '')
return 1
"""


# Remove consumers that own no pending entry and were idle (no read, no claim) for at least
# ARGV[2] ms; checked and done in one step, so a consumer that just claimed an entry is kept.
# ARGV: group, min idle ms, the names to consider. Returns the names removed.
DELETE_IDLE_CONSUMERS = """
local removed = {}
local info = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(info) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = tonumber(c[i + 1])
    elseif c[i] == 'idle' then idle = tonumber(c[i + 1]) end
  end
  if pending == 0 and idle >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
  end
end
return removed
"""
