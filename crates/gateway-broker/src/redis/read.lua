-- Reads a stream's history in one step (docs/protocol.md, "History in a cluster", "Redis").
--
-- KEYS[1]  the stream's meta hash, KEYS[2] its log (see publish.lua)
-- ARGV[1]  the offset to read after (0: from the oldest kept)
-- ARGV[2]  the epoch the reader stands in ('' for any): entries only when it is the current one
-- ARGV[3]  the most entries to return
-- ARGV[4]  the time to live of an entry, ms: older ones count as gone
-- Returns {} when the stream has no run, else {epoch, top offset, oldest kept offset (0: none),
-- messages...}, the messages oldest first.

local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local epoch, top = meta[1], tonumber(meta[2])
if not epoch or not top then
  return {}
end
local now = redis.call('TIME')
local oldest = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[4])

-- An entry is {id, {'t', ms, 'm', message}}, as publish.lua writes it.
local function kept(entry)
  return tonumber(entry[2][2]) > oldest
end
local function offset_of(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end
local function at_or_after(offset)
  return redis.call('XRANGE', KEYS[2], string.format('%d', offset), '+', 'COUNT', 1)[1]
end

-- The oldest entry not past its TTL. Entries are in time order, so when the oldest is past it,
-- a binary search over the offsets finds the first one that is not (O(log size) lookups).
local first = 0
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if head then
  if kept(head) then
    first = offset_of(head)
  else
    local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
    if kept(last) then
      -- The entry at or after lo is gone; the one at or after hi is kept.
      local lo, hi = offset_of(head), offset_of(last)
      while hi - lo > 1 do
        local mid = math.floor((lo + hi) / 2)
        if kept(at_or_after(mid)) then
          hi = mid
        else
          lo = mid
        end
      end
      first = offset_of(at_or_after(hi))
    end
  end
end

local result = {epoch, top, first}
local limit = tonumber(ARGV[3])
if first > 0 and limit > 0 and (ARGV[2] == '' or ARGV[2] == epoch) then
  local start = math.max(tonumber(ARGV[1]) + 1, first)
  if start <= top then
    -- ARGV[3] as given: a number passed to redis.call could be written as "1e+18".
    local entries = redis.call('XRANGE', KEYS[2], string.format('%d', start), '+', 'COUNT', ARGV[3])
    for _, entry in ipairs(entries) do
      if kept(entry) then
        result[#result + 1] = entry[2][4]
      end
    end
  end
end
return result
