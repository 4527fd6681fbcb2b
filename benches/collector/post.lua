-- wrk script: POST events from $EVENTS_FILE (NDJSON), $PER_REQUEST per
-- request, rotating through the file so requests carry different events
-- and partition keys, as real traffic does. Reports latency percentiles
-- and the count of answers other than 202.
--
-- As a browser's beacon: BEACON_KEY=<write key> sends text/plain with the
-- key in the query and ORIGIN (default https://shop.example.com) as Origin.
-- UNIQUE_IDS=1 gives every event an event_id of its own, as the tracker
-- does (the collector's dedup window then sees each once).
local per_request = tonumber(os.getenv("PER_REQUEST") or "100")
local beacon_key = os.getenv("BEACON_KEY")
local origin = os.getenv("ORIGIN") or "https://shop.example.com"
local unique_ids = os.getenv("UNIQUE_IDS") == "1"
local lines = {}
for line in io.lines(os.getenv("EVENTS_FILE")) do
  lines[#lines + 1] = line
end

local bodies = {}
local content_type = per_request == 1 and "application/json" or "application/x-ndjson"
local path = "/v1/events"
local headers = {}
if beacon_key then
  content_type = "text/plain;charset=UTF-8"
  path = "/v1/events?key=" .. beacon_key
  headers["Origin"] = origin
end
headers["Content-Type"] = content_type
-- With unique ids a body is kept as its events' texts after the id, so a
-- request only joins them with fresh ids (string patterns run in LuaJIT's
-- interpreter, and the load generator shares the machine it measures).
for start = 1, #lines - per_request + 1, per_request do
  if unique_ids then
    local tails = {}
    for i = start, start + per_request - 1 do
      tails[#tails + 1] = lines[i]:sub(2)
    end
    bodies[#bodies + 1] = tails
  else
    bodies[#bodies + 1] = table.concat(lines, "\n", start, start + per_request - 1)
  end
end

local counter = 0
function setup(thread)
  thread:set("offset", counter * 9973)
  thread:set("prefix", string.format("w%d-%d-", counter, os.time()))
  counter = counter + 1
end

id = 0

-- Without unique ids every request is formatted once, here, where wrk
-- has set the Host header; with them, the head up to the body's length.
local head
function init(args)
  if not unique_ids then
    for i, body in ipairs(bodies) do
      bodies[i] = wrk.format("POST", path, headers, body)
    end
  else
    local head_lines = { "POST " .. path .. " HTTP/1.1", "Host: " .. wrk.headers["Host"] }
    for name, value in pairs(headers) do
      head_lines[#head_lines + 1] = name .. ": " .. value
    end
    head = table.concat(head_lines, "\r\n") .. "\r\nContent-Length: "
  end
end

local next_body = 0
local parts = {}
function request()
  next_body = next_body + 1
  local body = bodies[((next_body + (offset or 0)) % #bodies) + 1]
  if not unique_ids then
    return body
  end
  -- One join per request: the events' ids are pieces of the same list.
  local n = 0
  for i, tail in ipairs(body) do
    id = id + 1
    parts[n + 1] = i == 1 and '{"event_id":"' or '\n{"event_id":"'
    parts[n + 2] = prefix
    parts[n + 3] = id
    parts[n + 4] = '",'
    parts[n + 5] = tail
    n = n + 5
  end
  local text = table.concat(parts, "", 1, n)
  return head .. #text .. "\r\n\r\n" .. text
end

function done(summary, latency, requests)
  io.write(string.format("requests %d, socket errors %d, non-202 %d, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
