-- Publishes one push of a stream with history (docs/protocol.md, "History in a cluster",
-- "Redis"): gives it the stream's next offset, keeps it in the stream's log and publishes it
-- as wire format version 2, all in one step, so every node sees the same offsets in one order.
--
-- KEYS[1]  the stream's meta hash: epoch, offset (the newest push's), server (the run that wrote it)
-- KEYS[2]  the stream's log: a Redis stream, entry ID `<offset>-0`, fields t (ms), m (message)
-- ARGV[1]  an epoch for a new run, used only when the stream has none
-- ARGV[2]  MAXLEN: pushes kept
-- ARGV[3]  the log's time to live, ms (refreshed by each push)
-- ARGV[4]  the meta hash's time to live, ms (refreshed by each push)
-- ARGV[5]  the channel
-- ARGV[6]  the message's head (version 2, member id, app), ARGV[7] the frame
-- ARGV[8]  the run of this server (INFO's run_id, new at each start of the process), or ''
-- Returns {offset, epoch}.

-- Redis before 5 replicates scripts verbatim, and refuses a write after TIME unless told to
-- replicate effects; later versions always do.
if redis.replicate_commands then
  redis.replicate_commands()
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'server')
local epoch, offset, server = meta[1], tonumber(meta[2]), meta[3]
local here = ARGV[8]
-- A stream last written by another run of the server (Redis restarted, failed over to a
-- replica or was restored from a snapshot since) may have lost its newest pushes: going on
-- would give new pushes the offsets of lost ones, which clients may hold already. A new run.
local moved = here ~= '' and server and server ~= here
if not epoch or not offset or moved then
  -- A new run: whatever log is left belongs to a forgotten run.
  epoch, offset = ARGV[1], 0
  redis.call('DEL', KEYS[2])
end
offset = offset + 1
-- '%d': Lua's default number format turns 10^14 into "1e+14".
local id = string.format('%d', offset)
local now = redis.call('TIME')
local ms = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000))
local message = ARGV[6] .. id .. ' ' .. epoch .. '\n' .. ARGV[7]
-- The append first: if it fails, the script stops before the offset moved.
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 't', ms, 'm', message)
if here ~= '' then
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', id, 'server', here)
else
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', id)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], message)
return {offset, epoch}
